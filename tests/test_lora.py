"""LoRA layers, QLoRA gradients, packing isolation, and adapters against peft + transformers.

References: transformers' MistralForCausalLM / LlamaForCausalLM with peft's LoRA on the same base
weights (a NeMo-shaped random model and the embedded SmolLM2), loaded from our PEFT export.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from mistral_nemo.entrypoints.cli import main as cli
from mistral_nemo.finetune.data.packing import Batch, Window
from mistral_nemo.finetune.forward import loss_sum, packed_logits
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.loading import load
from mistral_nemo.model.lora import LoraError, LoRALinear, add_lora, lora_parameters, lora_state_dict
from mistral_nemo.model.lora_files import read_adapter
from mistral_nemo.model.quant.linear import Int4Linear
from tests.gguf_fixture import smollm2_gguf_path
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def reference():
    return random_reference_model(seed=7)


@pytest.fixture(scope="module")
def mistral_folder(reference, tmp_path_factory) -> Path:
    return write_mistral_folder(reference, tmp_path_factory.mktemp("nemo"))


def random_adapter(
    args: ModelArgs, rank: int, seed: int, layers: int | None = None
) -> dict[str, torch.Tensor]:
    """A trained-looking adapter (B nonzero) in mistral-finetune's names and layout."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "attention.wq": (args.q_dim, args.dim),
        "attention.wk": (args.kv_dim, args.dim),
        "attention.wv": (args.kv_dim, args.dim),
        "attention.wo": (args.dim, args.q_dim),
        "feed_forward.w1": (args.hidden_dim, args.dim),
        "feed_forward.w2": (args.dim, args.hidden_dim),
        "feed_forward.w3": (args.hidden_dim, args.dim),
    }
    out = {}
    for i in range(args.n_layers if layers is None else layers):
        for name, (rows, cols) in shapes.items():
            out[f"layers.{i}.{name}.lora_A.weight"] = torch.randn(rank, cols, generator=gen) * 0.05
            out[f"layers.{i}.{name}.lora_B.weight"] = torch.randn(rows, rank, generator=gen) * 0.05
    return out


def write_adapter(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(folder / "lora.safetensors"))
    return folder


def assert_close_to_range(ours: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    span = (expected.max() - expected.min()).item()
    assert (ours - expected).abs().max().item() <= rel * span


def test_lora_layer_is_w_x_plus_two_b_a_x():
    torch.manual_seed(0)
    base = nn.Linear(64, 32, bias=False)
    layer = LoRALinear(base, rank=4)
    x = torch.randn(5, 64)
    assert torch.equal(layer(x), base(x))  # B starts at zero
    assert layer.lora_A.weight.abs().sum() > 0
    nn.init.normal_(layer.lora_B.weight)
    expected = x @ base.weight.T + 2.0 * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [8, 64])  # the small-batch kernel and the dequantizing GEMM path
def test_qlora_gradients_through_int4_match_the_float_layer(tokens: int):
    torch.manual_seed(0)
    weight = torch.randn(96, 128) * 0.1
    compact = Int4Linear.from_float(weight, group_size=32)
    floating = nn.Linear(128, 96, bias=False)
    floating.weight.data = compact.dequantize()
    layers = [LoRALinear(base, rank=4) for base in (compact, floating)]
    layers[1].load_state_dict({k: v for k, v in layers[0].state_dict().items() if "lora" in k}, strict=False)
    grads = []
    for layer in layers:
        with torch.no_grad():
            layer.lora_B.weight.copy_(torch.linspace(-0.1, 0.1, 96 * 4).reshape(96, 4))
        x = torch.randn(tokens, 128, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (layer(x) ** 2).sum().backward()
        grads.append((x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad))
    for got, want in zip(grads[0], grads[1], strict=True):
        # the compact forward rounds activations to int16 per block of 32: agreement to ~1e-3
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * want.abs().max().item())
    assert compact.packed.grad is None and not any(p.requires_grad for p in compact.parameters())


def test_packed_window_never_attends_across_samples(mistral_folder):
    model = load(mistral_folder, device="cpu").model
    add_lora(model, rank=4)
    samples = [list(range(1000 + 7 * k, 1000 + 7 * k + n)) for k, n in enumerate((5, 9, 3, 7))]
    window = Window(
        x=[t for s in samples for t in s], y=[0] * 24, mask=[True] * 24, sizes=[len(s) for s in samples]
    )
    packed = packed_logits(model, Batch.of([window]))
    start = 0
    for sample in samples:
        alone = model.logits(torch.tensor(sample))
        assert_close_to_range(packed[start : start + len(sample)], alone, rel=1e-5)
        start += len(sample)
    plain = Window(x=window.x, y=window.y, mask=window.mask, sizes=[24])  # one block: it does leak
    assert not torch.allclose(packed_logits(model, Batch.of([plain]))[5:14], packed[5:14], atol=1e-3)


def test_adapter_round_trips_through_model_layout(mistral_folder):
    loaded = load(mistral_folder, device="cpu")
    adapter = random_adapter(loaded.args, rank=3, seed=1)
    add_lora(loaded.model, rank=3)
    from mistral_nemo.model.lora import load_lora_state_dict

    load_lora_state_dict(loaded.model, adapter)
    saved = lora_state_dict(loaded.model)
    assert saved.keys() == adapter.keys()
    for key in adapter:
        assert torch.equal(saved[key], adapter[key]), key
    assert len(lora_parameters(loaded.model)) == 2 * 7 * loaded.args.n_layers


def test_mistral_layout_adapter_equals_merging_into_the_mistral_weights(mistral_folder, tmp_path):
    """The adapter file's q / k rows are in the Mistral checkpoint's layout: merging there by hand
    (W + 2 B A in consolidated.safetensors) and loading gives the same model."""
    args = load(mistral_folder, device="cpu").args
    adapter = random_adapter(args, rank=4, seed=2)
    write_adapter(tmp_path / "adapter", adapter)
    weights = safetensors.torch.load_file(str(mistral_folder / "consolidated.safetensors"))
    for key in list(weights):
        a = adapter.get(key.replace(".weight", ".lora_A.weight"))
        if a is not None:
            weights[key] = weights[key] + 2.0 * adapter[key.replace(".weight", ".lora_B.weight")] @ a
    by_hand = tmp_path / "by_hand"
    by_hand.mkdir()
    for name in ("params.json", "tekken.json"):
        (by_hand / name).write_bytes((mistral_folder / name).read_bytes())
    safetensors.torch.save_file(weights, str(by_hand / "consolidated.safetensors"))
    ids = torch.tensor([1, 1050, 1300, 2000, 1777, 1100])
    expected = load(by_hand, device="cpu").model.logits(ids)
    merged = load(mistral_folder, device="cpu", lora=tmp_path / "adapter").model.logits(ids)
    unmerged = load(mistral_folder, device="cpu", lora=tmp_path / "adapter", merge_lora=False).model.logits(
        ids
    )
    assert_close_to_range(merged, expected, rel=1e-5)
    assert_close_to_range(unmerged, expected, rel=1e-5)
    cli(["lora", "merge", str(mistral_folder), str(tmp_path / "adapter"), str(tmp_path / "merged")])
    assert_close_to_range(load(tmp_path / "merged", device="cpu").model.logits(ids), expected, rel=1e-5)


def test_peft_export_on_transformers_gives_our_logits_nemo_shape(reference, mistral_folder, tmp_path):
    from peft import PeftModel

    args = load(mistral_folder, device="cpu").args
    write_adapter(tmp_path / "adapter", random_adapter(args, rank=4, seed=3))
    assert cli(["lora", "export", str(tmp_path / "adapter"), "--to", "peft", str(tmp_path / "peft"),
                "--base", str(mistral_folder)]) == 0  # fmt: skip
    ids = [1, 1050, 1300, 2000, 1777, 1100, 3000, 1005]
    ours = load(mistral_folder, device="cpu", lora=tmp_path / "adapter").model.logits(torch.tensor(ids))
    peft_model = PeftModel.from_pretrained(random_reference_model(seed=7), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([ids])).logits[0]
    assert_close_to_range(ours, expected)
    with torch.no_grad():
        base = reference(input_ids=torch.tensor([ids])).logits[0]
    assert not torch.allclose(base, expected, atol=1e-2)  # the adapter does change the model
    # and back: the PEFT folder read as an adapter gives the same tensors as the original
    assert cli(["lora", "export", str(tmp_path / "peft"), "--to", "mistral", str(tmp_path / "back"),
                "--base", str(mistral_folder)]) == 0  # fmt: skip
    again, scaling = read_adapter(tmp_path / "back", args)
    original, _ = read_adapter(tmp_path / "adapter", args)
    assert scaling == 2.0 and all(torch.equal(again[k], original[k]) for k in original)


def test_peft_export_on_transformers_gives_our_logits_embedded(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    loaded = load(gguf, device="cpu", quantization="none", dtype=torch.float32)
    write_adapter(tmp_path / "adapter", random_adapter(loaded.args, rank=2, seed=4))
    assert cli(["lora", "export", str(tmp_path / "adapter"), "--to", "peft", str(tmp_path / "peft"),
                "--base", str(gguf)]) == 0  # fmt: skip
    ids = loaded.tokenizer.encode_chat([{"role": "user", "content": "Name a colour."}])
    from mistral_nemo.model.lora import apply_adapter

    apply_adapter(loaded.model, read_adapter(tmp_path / "adapter", loaded.args)[0])
    ours = loaded.model.logits(torch.tensor(ids))
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor([ids])).logits[0]
    assert_close_to_range(ours, expected)


def test_qlora_adapter_on_the_quantized_embedded_model_stays_unmerged(tmp_path):
    gguf = smollm2_gguf_path()
    args = load(gguf, device="cpu").args
    write_adapter(tmp_path / "adapter", random_adapter(args, rank=2, seed=5, layers=2))
    loaded = load(gguf, device="cpu", lora=tmp_path / "adapter")
    layer = loaded.model.layers[0].attention.wq
    assert isinstance(layer, LoRALinear) and isinstance(layer.base, Int4Linear)
    assert loaded.model.fused_decoder is None  # the fused decode kernels would skip the adapter
    assert isinstance(loaded.model.layers[2].attention.wq, Int4Linear)  # layers the adapter lacks


def test_qlora_training_step_reaches_every_lora_weight(tmp_path):
    loaded = load(smollm2_gguf_path(), device="cpu")
    add_lora(loaded.model, rank=2)
    params = lora_parameters(loaded.model)
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        for p in params[1::2]:  # B: nonzero so that A gets a gradient too
            p.normal_(0, 0.01)
    ids = loaded.tokenizer.encode("A short sentence to learn from, with enough tokens for a test.")
    n = len(ids) - 1
    batch = Batch.of([Window(ids[:-1], ids[1:], [True] * n, [n])])
    loss, count = loss_sum(loaded.model, batch, checkpoint=True)
    (loss / count).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_bad_adapters_are_refused_by_name(mistral_folder, tmp_path):
    args = load(mistral_folder, device="cpu").args
    wrong = random_adapter(args, rank=2, seed=6)
    wrong["layers.0.attention.wq.lora_B.weight"] = torch.zeros(7, 2)
    write_adapter(tmp_path / "bad", wrong)
    with pytest.raises(LoraError, match="an adapter for another model"):
        load(mistral_folder, device="cpu", lora=tmp_path / "bad")
    with pytest.raises(LoraError, match="no adapter at"):
        load(mistral_folder, device="cpu", lora=tmp_path)


def test_llm_and_mistral_chat_take_the_adapter(mistral_folder, tmp_path):
    from mistral_nemo import LLM, SamplingParams
    from tests.conftest import console_script

    args = load(mistral_folder, device="cpu").args
    write_adapter(tmp_path / "adapter", random_adapter(args, rank=4, seed=8))
    cli(["lora", "merge", str(mistral_folder), str(tmp_path / "adapter"), str(tmp_path / "merged")])
    params = SamplingParams(temperature=0, max_tokens=6)
    prompt = [1, 1050, 1300, 2000]
    want = (
        LLM(tmp_path / "merged", device="cpu")
        .generate([prompt], params, use_tqdm=False)[0]
        .outputs[0]
        .token_ids
    )
    by_path = LLM(mistral_folder, device="cpu", lora=tmp_path / "adapter")
    on_loaded = LLM(load(mistral_folder, device="cpu"), lora=tmp_path / "adapter")
    for llm in (by_path, on_loaded):
        assert llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids == want
    base = (
        LLM(mistral_folder, device="cpu").generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    )
    assert base != want
    import subprocess

    done = subprocess.run(
        [console_script("mistral-demo"), str(mistral_folder), "--lora_path", str(tmp_path / "adapter"),
         "--max_tokens", "4"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
