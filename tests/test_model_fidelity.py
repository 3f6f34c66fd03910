"""NeMo geometry, three layouts, one model: logits equal transformers' MistralForCausalLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mistral_nemo.engine.dense_cache import DenseKVCache
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.loading import LoadedModel, detect_format, load
from tests.nemo_checkpoints import SMALL_NEMO, random_reference_model, write_hf_folder, write_mistral_folder

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return random_reference_model(seed=1234)


@pytest.fixture(scope="module")
def hf_loaded(reference, tmp_path_factory) -> LoadedModel:
    folder = write_hf_folder(reference, tmp_path_factory.mktemp("hf"))
    return load(folder, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def mistral_loaded(reference, tmp_path_factory) -> LoadedModel:
    folder = write_mistral_folder(reference, tmp_path_factory.mktemp("mistral"))
    return load(folder, dtype=torch.float32, device="cpu")


def prompt_ids(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, SMALL_NEMO["vocab_size"], (n,), generator=generator)


def reference_logits(reference, ids: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
    positions = torch.arange(start_pos, start_pos + ids.shape[0])[None]
    with torch.no_grad():
        return reference(input_ids=ids[None], position_ids=positions).logits[0].float()


def test_formats_are_recognised_by_contents(reference, tmp_path: Path) -> None:
    hf = write_hf_folder(reference, tmp_path / "looks-like-mistral-name")
    mistral = write_mistral_folder(reference, tmp_path / "model-hf")
    assert detect_format(hf)[0] == "hf"
    assert detect_format(mistral)[0] == "mistral"


def test_args_read_from_both_layouts(hf_loaded: LoadedModel, mistral_loaded: LoadedModel) -> None:
    expected = ModelArgs.from_params_json(SMALL_NEMO)
    assert mistral_loaded.args == expected
    assert hf_loaded.args.with_changes(max_seq_len=expected.max_seq_len) == expected
    assert expected.head_dim * expected.n_heads != expected.dim
    assert mistral_loaded.model.layers[0].attention.wq.weight.shape == (512, 320)


def test_hf_folder_logits_equal_transformers(reference, hf_loaded: LoadedModel) -> None:
    ids = prompt_ids(48)
    ours = hf_loaded.model.logits(ids)
    assert ours.dtype == torch.float32 and ours.shape == (48, SMALL_NEMO["vocab_size"])
    assert (ours - reference_logits(reference, ids)).abs().max().item() <= TOLERANCE


def test_mistral_folder_equals_hf_folder(hf_loaded: LoadedModel, mistral_loaded: LoadedModel) -> None:
    # Same weights, interleaved RoPE layout converted at load: only the permutation can differ.
    ids = prompt_ids(40, seed=1)
    diff = (mistral_loaded.model.logits(ids) - hf_loaded.model.logits(ids)).abs().max().item()
    assert diff <= TOLERANCE


@pytest.mark.parametrize("start_pos", [100_000, 131_000])
def test_long_positions_equal_transformers(reference, hf_loaded, mistral_loaded, start_pos: int) -> None:
    ids = prompt_ids(24, seed=2)
    expected = reference_logits(reference, ids, start_pos)
    assert (hf_loaded.model.logits(ids, start_pos=start_pos) - expected).abs().max().item() <= TOLERANCE
    assert (mistral_loaded.model.logits(ids, start_pos=start_pos) - expected).abs().max().item() <= TOLERANCE
    # Positions matter: the same ids at 0 give different logits.
    assert (hf_loaded.model.logits(ids) - expected).abs().max().item() > 1e-2


def test_cached_decode_equals_full_forward(mistral_loaded: LoadedModel) -> None:
    model = mistral_loaded.model
    ids = prompt_ids(30, seed=3)
    full = model.logits(ids)
    cache = DenseKVCache(mistral_loaded.args, capacity=64, dtype=torch.float32)
    rows = []
    with torch.inference_mode():
        # A prefill chunk of 10, then a chunk of 5, then one token at a time.
        for chunk in (ids[:10], ids[10:15], *ids[15:].split(1)):
            positions = torch.arange(cache.length, cache.length + chunk.shape[0])
            rows.append(model(chunk, positions, cache).float())
            cache.advance(chunk.shape[0])
    assert (torch.cat(rows) - full).abs().max().item() <= TOLERANCE


def test_tokenizer_comes_with_the_model(mistral_loaded: LoadedModel) -> None:
    tok = mistral_loaded.tokenizer
    assert tok.vocab_size == SMALL_NEMO["vocab_size"]
    assert tok.encode_chat([{"role": "user", "content": "Hi"}])[:2] == [1, 3]


def test_nemo_12b_preset_builds_on_meta() -> None:
    args = ModelArgs.preset("nemo-12b")
    with torch.device("meta"):
        from mistral_nemo.model.transformer import Transformer

        model = Transformer(args)
    count = sum(p.numel() for p in model.parameters())
    assert count == args.num_parameters()
    assert 12.2e9 < count < 12.3e9
    assert model.layers[0].attention.wq.weight.shape == (4096, 5120)
    assert model.layers[0].attention.wo.weight.shape == (5120, 4096)
    assert args.kv_cache_bytes_per_token() == 160 * 1024
