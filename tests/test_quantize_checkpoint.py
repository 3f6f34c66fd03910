"""`mistral-nemo quantize` and quantized folders: written by the real console script, read back as the
same compact layers with logits bit-identical to quantizing on load, and the quantization modes."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import LoadedModel, detect_format, load
from mistral_nemo.model.quant import Int4Linear, Int8Linear
from mistral_nemo.model.quant.checkpoint import FORMAT, VERSION
from mistral_nemo.model.quant.convert import quantize_checkpoint
from mistral_nemo.model.weights import CheckpointError
from tests.conftest import console_script
from tests.gguf_fixture import smollm2_gguf_path
from tests.nemo_checkpoints import SMALL_NEMO, random_reference_model, write_hf_folder, write_mistral_folder

IDS = torch.arange(3, 40)


def quantize(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [console_script("mistral-nemo"), "quantize", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def layer_types(loaded: LoadedModel) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in loaded.model.named_modules() if hasattr(m, "in_features")}


@pytest.fixture(scope="module")
def reference():
    return random_reference_model(seed=7)


@pytest.fixture(scope="module")
def mistral_folder(reference, tmp_path_factory) -> Path:
    return write_mistral_folder(reference, tmp_path_factory.mktemp("nemo-mistral"))


@pytest.fixture(scope="module")
def hf_folder(reference, tmp_path_factory) -> Path:
    return write_hf_folder(reference, tmp_path_factory.mktemp("nemo-hf"))


@pytest.fixture(scope="module")
def int8_folder(mistral_folder: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("written") / "nemo-int8"
    result = quantize(mistral_folder, out, "--to", "int8")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize(("layout", "mode"), [("mistral", "int8"), ("mistral", "int4"), ("hf", "int4")])
def test_quantized_folder_equals_quantizing_on_load(
    layout: str, mode: str, mistral_folder: Path, hf_folder: Path, tmp_path: Path
) -> None:
    source = mistral_folder if layout == "mistral" else hf_folder
    out = tmp_path / "out"
    result = quantize(source, out, "--to", mode)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert str(out) in line and "GB" in line
    direct = load(source, dtype=torch.float32, device="cpu", quantization=mode)
    written = load(out, dtype=torch.float32, device="cpu")
    assert written.format == "quantized" and detect_format(out) == ("quantized", out)
    assert written.args == direct.args
    types = layer_types(written)
    assert types == layer_types(direct)
    body = 7 * SMALL_NEMO["n_layers"]  # + the output projection, int8 in both modes
    if mode == "int8":
        assert Counter(types.values()) == {"Int8Linear": body + 1}
    else:
        assert Counter(types.values()) == {"Int4Linear": body, "Int8Linear": 1}
        assert written.model.layers[0].feed_forward.w1.group_size == 32
    assert isinstance(written.model.tok_embeddings, nn.Embedding)
    assert torch.equal(written.model.logits(IDS), direct.model.logits(IDS))


def test_stored_layout(int8_folder: Path, mistral_folder: Path) -> None:
    with safe_open(str(int8_folder / "model.safetensors"), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == FORMAT and meta["version"] == VERSION and meta["quantization"] == "int8"
    layers = json.loads(meta["layers"])
    assert layers["layers.0.attention.wq"] == {"class": "Int8Linear", "group_size": SMALL_NEMO["dim"]}
    assert {"layers.0.attention.wq.qweight", "layers.0.attention.wq.scale", "tok_embeddings.weight"} <= keys
    assert not any(k.endswith(("wq.weight", "w1.weight")) or k == "output.weight" for k in keys)
    assert json.loads((int8_folder / "params.json").read_text())["head_dim"] == SMALL_NEMO["head_dim"]
    assert (int8_folder / "tekken.json").read_bytes() == (mistral_folder / "tekken.json").read_bytes()
    assert not list(int8_folder.parent.glob(".*"))  # no partial or old folder left behind


def test_rope_rows_are_permuted_exactly_once(int8_folder: Path, reference) -> None:
    # The Mistral source stores q/k rows interleaved; the quantized folder stores them in our order.
    # Permuting them again would scramble attention: logits would be far from the float reference.
    with torch.no_grad():
        expected = reference(input_ids=IDS[None]).logits[0]
    got = load(int8_folder, dtype=torch.float32, device="cpu").model.logits(IDS)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


def test_modes_on_a_quantized_folder(int8_folder: Path, mistral_folder: Path) -> None:
    compact = load(int8_folder, dtype=torch.float32, device="cpu")
    floats = load(int8_folder, dtype=torch.float32, device="cpu", quantization="none")
    assert not any(isinstance(m, (Int8Linear, Int4Linear)) for m in floats.model.modules())
    assert torch.equal(
        floats.model.layers[1].attention.wk.weight, compact.model.layers[1].attention.wk.dequantize()
    )
    # int8 asked of an int8 file keeps its layers (no second rounding); int4 asked turns the body into
    # int4 and keeps the int8 output projection
    kept = load(int8_folder, dtype=torch.float32, device="cpu", quantization="int8")
    assert set(layer_types(kept).values()) == {"Int8Linear"}
    wk = kept.model.layers[1].attention.wk
    assert torch.equal(wk.qweight, compact.model.layers[1].attention.wk.qweight)
    smaller = load(int8_folder, dtype=torch.float32, device="cpu", quantization="int4")
    types = layer_types(smaller)
    assert types.pop("output") == "Int8Linear" and set(types.values()) == {"Int4Linear"}
    assert set(layer_types(load(mistral_folder, device="cpu")).values()) == {"Linear"}  # auto: float stays
    with pytest.raises(ValueError, match="CPU kernels only"):
        load(int8_folder, device="meta")
    with pytest.raises(ValueError, match="CPU kernels only"):
        load(mistral_folder, device="meta", quantization="int8")
    with pytest.raises(ValueError, match="quantization must be one of auto, none, int8, int4, fp8"):
        load(mistral_folder, quantization="int2")


def test_damaged_metadata_is_refused(int8_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("params.json", "tekken.json"):
        (copy / name).write_bytes((int8_folder / name).read_bytes())
    tensors = load_file(str(int8_folder / "model.safetensors"))
    with safe_open(str(int8_folder / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(copy / "model.safetensors"), metadata={**meta, "version": "9"})
    with pytest.raises(CheckpointError, match="version '9'"):
        load(copy, device="cpu")
    layers = json.loads(meta["layers"])
    layers["layers.0.attention.wq"]["class"] = "Int3Linear"
    save_file(tensors, str(copy / "model.safetensors"), metadata={**meta, "layers": json.dumps(layers)})
    with pytest.raises(CheckpointError, match="Int3Linear"):
        load(copy, device="cpu")
    del tensors["layers.0.attention.wq.scale"]
    save_file(tensors, str(copy / "model.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"layers\.0\.attention\.wq "):
        load(copy, device="cpu")


def test_output_folder_rules(mistral_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused = quantize(mistral_folder, out, "--to", "int4")
    assert refused.returncode == 2 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    forced = quantize(mistral_folder, out, "--to", "int4", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old folder went, nothing partial


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing", "{tmp}/out", "--to", "int8"], "model not found"),
        (["{src}", "{tmp}/out", "--to", "int2"], "invalid choice: 'int2'"),
        (["{src}", "{tmp}/file/out", "--to", "int8"], "cannot write"),
    ],
)
def test_errors_are_one_line(mistral_folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("")
    result = quantize(*[a.format(tmp=tmp_path, src=mistral_folder) for a in args])
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written, nothing partial


def test_refused_inputs_and_outputs(mistral_folder: Path, int8_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("params.json", "consolidated.safetensors"):
        (no_tokenizer / name).symlink_to(mistral_folder / name)
    cases = [
        (mistral_folder, tmp_path / "file", "int8", "is not a folder"),
        (mistral_folder, mistral_folder, "int8", "outside IN"),
        (mistral_folder, mistral_folder / "sub", "int8", "outside IN"),
        (no_tokenizer, tmp_path / "out", "int8", "no tokenizer"),
        (int8_folder, tmp_path / "out", "int4", "already quantized"),
        (mistral_folder, tmp_path / "out", "int3", "--to must be one of"),
    ]
    for source, output, to, message in cases:
        with pytest.raises(ValueError, match=message):
            quantize_checkpoint(source, output, to)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "no-tokenizer"]
    assert not (mistral_folder / "sub").exists()


def test_fp8_target(mistral_folder: Path, tmp_path: Path) -> None:
    try:
        from mistral_nemo.model.quant.fp8 import Fp8Linear
    except ImportError:
        result = quantize(mistral_folder, tmp_path / "out", "--to", "fp8")
        assert result.returncode == 2 and "fp8 quantization is not available" in result.stderr
        return
    result = quantize(mistral_folder, tmp_path / "out", "--to", "fp8")
    assert result.returncode == 0, result.stderr
    written = load(tmp_path / "out", dtype=torch.float32, device="cpu")
    direct = load(mistral_folder, dtype=torch.float32, device="cpu", quantization="fp8")
    assert isinstance(written.model.layers[0].attention.wq, Fp8Linear)
    assert layer_types(written) == layer_types(direct)
    for (name, a), (_, b) in zip(written.model.named_buffers(), direct.model.named_buffers(), strict=True):
        assert torch.equal(a, b), name


def test_mistral_fp8_checkpoint_modes(reference, tmp_path: Path) -> None:
    from mistral_nemo.model.quant.fp8 import Fp8Linear
    from tests.fp8_checkpoint import write_mistral_fp8_folder

    folder = write_mistral_fp8_folder(reference, tmp_path / "fp8")  # Mistral's: per tensor, static act scales
    kept = load(
        folder, dtype=torch.float32, device="cpu"
    )  # auto: FP8 stays FP8, the float output stays float
    assert isinstance(kept.model.layers[0].attention.wq, Fp8Linear) and isinstance(
        kept.model.output, nn.Linear
    )
    assert set(layer_types(load(folder, device="cpu", quantization="none")).values()) == {"Linear"}
    assert set(layer_types(load(folder, device="cpu", quantization="int8")).values()) == {"Int8Linear"}
    summary = quantize_checkpoint(folder, tmp_path / "out", "fp8")
    written = load(summary.output, dtype=torch.float32, device="cpu")
    direct = load(folder, dtype=torch.float32, device="cpu", quantization="fp8")
    assert set(layer_types(written).values()) == {"Fp8Linear"} and layer_types(written) == layer_types(direct)
    for (name, a), (_, b) in zip(written.model.named_buffers(), direct.model.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    wq, original = written.model.layers[1].attention.wq, kept.model.layers[1].attention.wq
    assert torch.equal(wq.weight.view(torch.uint8), original.weight.view(torch.uint8))  # the file's bytes
    assert wq.act_scale is not None and torch.equal(wq.act_scale, original.act_scale)
    assert torch.equal(written.model.logits(IDS), direct.model.logits(IDS))


# ---- a real model: SmolLM2 (tied embeddings) through an HF folder, quantized, still answers ----------

_HF_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


def write_hf_from_gguf(gguf: Path, folder: Path) -> None:
    """The GGUF's float weights as an HF folder (both in rotate-half order), tokenizer via transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    loaded = load(gguf, dtype=torch.float32, device="cpu", quantization="none")
    tensors = {}
    for name, tensor in loaded.model.state_dict().items():
        if name == "output.weight" or name.startswith("rotary."):
            continue  # tied: the embedding
        layer, _, rest = name.partition(".") if name.startswith("layers.") else ("", "", name)
        if layer:
            index, _, rest = rest.partition(".")
            tensors[f"model.layers.{index}.{_HF_NAMES[rest]}"] = tensor.contiguous()
        else:
            tensors[_HF_NAMES[name]] = tensor.contiguous()
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    a = loaded.args
    config = {
        "model_type": "llama",
        "hidden_size": a.dim,
        "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads,
        "num_key_value_heads": a.n_kv_heads,
        "head_dim": a.head_dim,
        "intermediate_size": a.hidden_dim,
        "vocab_size": a.vocab_size,
        "rms_norm_eps": a.norm_eps,
        "rope_theta": a.rope_theta,
        "max_position_embeddings": a.max_seq_len,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)


def test_smollm2_quantized_folder_answers(tmp_path: Path) -> None:
    gguf = smollm2_gguf_path()
    refused = quantize(gguf, tmp_path / "nope", "--to", "int8")
    assert refused.returncode == 2 and "GGUF files already load quantized" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "nope").exists()

    source = tmp_path / "smollm2-hf"
    write_hf_from_gguf(gguf, source)
    summary = quantize_checkpoint(source, tmp_path / "smollm2-int4", "int4")  # the CLI's code, in process
    assert summary.bytes_after < 0.45 * summary.bytes_before  # float32 embedding kept; the rest 4-5 bits
    loaded = load(summary.output, dtype=torch.float32, device="cpu")
    assert isinstance(loaded.model.output, Int8Linear) and isinstance(
        loaded.model.layers[0].feed_forward.w1, Int4Linear
    )
    assert isinstance(loaded.model.tok_embeddings, nn.Embedding)  # the lookup table stays float
    ids = loaded.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    answer = generate(loaded.model, loaded.tokenizer, ids, SamplingParams(max_tokens=30, temperature=0))
    assert "Paris" in answer.text, answer.text
