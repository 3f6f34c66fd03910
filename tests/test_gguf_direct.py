"""GGUF blocks loaded straight into compact linears: exact per type, RoPE rows, tied output, a whole model.

Exact means dequantize() of the compact layer is bit-equal to gguf_quants.dequantize of the same bytes
(itself bit-equal to gguf's numpy reference, see test_gguf_quants.py).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT
from torch import nn

from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.formats.gguf import GgufTensorInfo, block_size, read_gguf_header
from mistral_nemo.model import load_gguf
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.gguf_quants import dequantize
from mistral_nemo.model.load_gguf import gguf_name, iter_gguf_tensors, read_gguf_args
from mistral_nemo.model.quant import Int4Linear, Int8Linear, gguf_blocks, rope_row_perm
from mistral_nemo.model.quant.gguf_blocks import compact_linear
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.model.weights import CheckpointError, build_model, interleaved_to_half
from mistral_nemo.tokenizer import load_tokenizer
from tests.activation_reference import act_quantized, assert_logits_agree_to_quantization_noise
from tests.gguf_fixture import smollm2_gguf_path

# Byte offsets of the fp16 fields (scales, mins) of the types gguf cannot quantize: set to modest values.
K_F16_FIELDS = {QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,), QT.Q2_K: (80, 82), QT.Q3_K: (108,)}
EXACT = {QT.Q8_0: (Int8Linear, 32), QT.Q4_0: (Int4Linear, 32), QT.Q4_1: (Int4Linear, 32),
         QT.Q4_K: (Int4Linear, 32), QT.Q6_K: (Int8Linear, 16)}  # fmt: skip
REQUANTIZED = (QT.Q5_K, QT.Q5_0, QT.Q5_1, QT.Q2_K, QT.Q3_K)


def raw_blocks(qt: QT, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Valid blocks as GGUF stores them ([rows, bytes_per_row] uint8), from gguf's quantizer when it has
    one, else random bytes with finite fp16 scales (every byte pattern of the rest is a valid block)."""
    rng = np.random.default_rng(seed)
    if qt not in K_F16_FIELDS:
        w = rng.normal(0, 0.05, (rows, cols)).astype(np.float32)
        w[0, :32] = 0.0  # an all-zero group: its scale is 0 (Q8_0) or its range empty (Q4_1)
        return gguf.quants.quantize(w, qt)
    elems, nbytes = GGML_QUANT_SIZES[qt]
    blocks = rng.integers(0, 256, (rows * cols // elems, nbytes), dtype=np.uint8)
    for off in K_F16_FIELDS[qt]:
        field = rng.uniform(-0.01, 0.01, (blocks.shape[0], 1)).astype(np.float16)
        field[0] = 0.0
        blocks[:, off : off + 2] = field.view(np.uint8)
    return blocks.reshape(rows, -1)


def _close(y: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    torch.testing.assert_close(y, ref, rtol=rel, atol=rel * ref.abs().max().item())


@pytest.mark.parametrize("qt", list(EXACT), ids=lambda q: q.name)
def test_blocks_load_exactly(qt: QT) -> None:
    rows, cols = 40, 512
    raw = raw_blocks(qt, rows, cols, seed=qt.value)
    layer = compact_linear(raw, qt, (rows, cols))
    cls, group = EXACT[qt]
    assert type(layer) is cls and layer.group_size == group
    reference = dequantize(raw, qt, (rows, cols))
    assert torch.equal(layer.dequantize(), reference)
    numpy_ref = np.asarray(gguf.quants.dequantize(raw, qt), dtype=np.float32).reshape(rows, cols)
    assert torch.equal(reference, torch.from_numpy(numpy_ref))
    for tokens in (1, 4, 64):  # GEMV kernel, small-batch kernel, dequantize + GEMM
        x = torch.randn(tokens, cols)
        _close(layer(x), act_quantized(x) @ reference.T)


@pytest.mark.parametrize("qt", [QT.Q4_K, QT.Q6_K], ids=lambda q: q.name)
def test_k_quant_unpacking_in_chunks(qt: QT, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = raw_blocks(qt, 12, 1024, seed=5)  # 48 blocks: 6 chunks of 7 and a ragged 6
    monkeypatch.setattr(gguf_blocks, "_CHUNK_BLOCKS", 7)
    assert torch.equal(compact_linear(raw, qt, (12, 1024)).dequantize(), dequantize(raw, qt, (12, 1024)))


def test_q4_k_nibbles_are_repacked() -> None:
    # Copying Q4_K's nibbles as they are (Q4_0's order) would be wrong: the test above would catch it.
    raw = raw_blocks(QT.Q4_K, 8, 256, seed=2)
    layer = compact_linear(raw, QT.Q4_K, (8, 256))
    as_is = Int4Linear(torch.from_numpy(raw.reshape(8, 144)[:, 16:].copy()), layer.scale, layer.zero)
    assert not torch.equal(as_is.dequantize(), dequantize(raw, QT.Q4_K, (8, 256)))


@pytest.mark.parametrize("qt", REQUANTIZED, ids=lambda q: q.name)
def test_other_types_are_requantized_to_int8(qt: QT, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, cols = 24, 512
    raw = raw_blocks(qt, rows, cols, seed=qt.value)
    monkeypatch.setattr(gguf_blocks, "_CHUNK_ELEMS", 5 * cols)  # row chunks of 5, ragged tail
    layer = compact_linear(raw, qt, (rows, cols))
    w = dequantize(raw, qt, (rows, cols))
    assert type(layer) is Int8Linear and layer.group_size == 32
    assert torch.equal(layer.dequantize(), Int8Linear.from_float(w, group_size=32).dequantize())
    half_step = (layer.scale / 2).repeat_interleave(32, dim=1)  # the stated bound of from_float
    assert ((layer.dequantize() - w).abs() <= half_step * (1 + 1e-5) + 1e-12).all()
    x = torch.randn(3, cols)
    _close(layer(x), act_quantized(x) @ layer.dequantize().T)


def test_bad_sizes_and_float_types_are_rejected() -> None:
    raw = raw_blocks(QT.Q6_K, 4, 256).reshape(-1)
    with pytest.raises(ValueError, match="needs"):
        compact_linear(raw[:-1], QT.Q6_K, (4, 256))
    with pytest.raises(ValueError, match="multiple of the block size"):
        compact_linear(raw_blocks(QT.Q4_K, 2, 256), QT.Q4_K, (4, 128))
    with pytest.raises(ValueError, match="floats already"):
        compact_linear(np.zeros(16, np.uint8), QT.F16, (2, 4))


# A tiny llama GGUF mixing every path: exact types, a requantized one, a float linear, RoPE rows.
ARGS = {"dim": 256, "n_heads": 4, "n_kv_heads": 2, "hidden": 512, "vocab": 48, "layers": 2}
LAYER_TYPES = [
    {"attn_q": QT.Q4_K, "attn_k": QT.Q6_K, "attn_v": QT.Q8_0, "attn_output": QT.Q4_0,
     "ffn_gate": QT.Q4_1, "ffn_down": QT.Q5_K, "ffn_up": QT.F16},
    {"attn_q": QT.Q6_K, "attn_k": QT.Q4_K, "attn_v": QT.Q4_1, "attn_output": QT.Q6_K,
     "ffn_gate": QT.Q4_K, "ffn_down": QT.Q8_0, "ffn_up": QT.Q4_0},
]  # fmt: skip


def write_tiny_gguf(path: Path, tied: bool, embed: QT = QT.Q6_K, output: QT = QT.Q4_K) -> None:
    dim, hidden, vocab = ARGS["dim"], ARGS["hidden"], ARGS["vocab"]
    head_dim = dim // ARGS["n_heads"]
    shapes = {"attn_q": (dim, dim), "attn_k": (ARGS["n_kv_heads"] * head_dim, dim),
              "attn_v": (ARGS["n_kv_heads"] * head_dim, dim), "attn_output": (dim, dim),
              "ffn_gate": (hidden, dim), "ffn_up": (hidden, dim), "ffn_down": (dim, hidden)}  # fmt: skip
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(ARGS["layers"])
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(ARGS["n_heads"])
    writer.add_head_count_kv(ARGS["n_kv_heads"])
    writer.add_vocab_size(vocab)
    rng = np.random.default_rng(0)

    def add(name: str, qt: QT, shape: tuple[int, ...]) -> None:
        if qt in (QT.F32, QT.F16):
            dtype = np.float32 if qt == QT.F32 else np.float16
            writer.add_tensor(name, rng.normal(0, 0.05, shape).astype(dtype))
        else:
            writer.add_tensor(name, raw_blocks(qt, *shape, seed=len(writer.tensors[-1])), raw_dtype=qt)

    add("token_embd.weight", embed, (vocab, dim))
    add("output_norm.weight", QT.F32, (dim,))
    if not tied:
        add("output.weight", output, (vocab, dim))
    for i, types in enumerate(LAYER_TYPES):
        add(f"blk.{i}.attn_norm.weight", QT.F32, (dim,))
        add(f"blk.{i}.ffn_norm.weight", QT.F32, (dim,))
        for name, qt in types.items():
            add(f"blk.{i}.{name}.weight", qt, shapes[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read(path: Path, compact: bool) -> tuple[ModelArgs, dict[str, torch.Tensor | nn.Module]]:
    meta, infos = read_gguf_header(path)
    args = read_gguf_args(meta, infos)
    return args, dict(iter_gguf_tensors(path, infos, args, compact=compact))


def exact_or_requantized(module: nn.Module, want: torch.Tensor, name: str) -> None:
    got = module.dequantize()
    if "layers.0.feed_forward.w2" in name:  # Q5_K: requantized (stated bound: half a step)
        assert (got - want).abs().max() <= module.scale.max() / 2 * (1 + 1e-5), name
    else:
        assert torch.equal(got, want), name


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_compact_iteration_matches_the_float_one(tmp_path: Path, tied: bool) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tied)
    args, floats = read(path, compact=False)
    _, compact = read(path, compact=True)
    assert args.tied_embeddings == tied
    assert set(compact) == set(floats) | {"output.weight"}  # tied: a compact copy of the embedding's blocks
    for name, value in compact.items():
        if isinstance(value, nn.Module):
            exact_or_requantized(value, floats.get(name, floats["tok_embeddings.weight"]), name)
        else:
            assert torch.equal(value, floats[name]), name
    assert isinstance(compact["layers.0.feed_forward.w3.weight"], torch.Tensor)  # F16 stays a float tensor
    assert isinstance(compact["tok_embeddings.weight"], torch.Tensor)
    assert isinstance(compact["output.weight"], Int8Linear if tied else Int4Linear)


def test_rope_rows_are_permuted_per_head_count(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tied=True)
    meta, infos = read_gguf_header(path)
    args = read_gguf_args(meta, infos)
    compact = dict(iter_gguf_tensors(path, infos, args, compact=True))
    data = path.read_bytes()
    checked = 0
    for info in infos:
        if info.name not in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
            continue
        checked += 1
        heads = args.n_heads if "attn_q" in info.name else args.n_kv_heads
        shape = tuple(reversed(info.dims))
        elems, nbytes = GGML_QUANT_SIZES[QT(info.qtype)]
        raw = np.frombuffer(data, np.uint8, info.dims[0] * info.dims[1] // elems * nbytes, info.offset)
        file_order = dequantize(raw, info.qtype, shape)
        got = compact["layers.0.attention." + ("wq" if "attn_q" in info.name else "wk") + ".weight"]
        assert torch.equal(got.dequantize(), interleaved_to_half(file_order, heads))
        # Teeth: the file's own order, or the other head count, would give other rows.
        assert not torch.equal(got.dequantize(), file_order)
        wrong = args.n_kv_heads if heads == args.n_heads else args.n_heads
        assert not torch.equal(got.dequantize(), file_order[rope_row_perm(shape[0], wrong)])
    assert checked == 2


def whole_tensor_reference(
    path: Path, args: ModelArgs, info: GgufTensorInfo
) -> list[tuple[str, torch.Tensor | nn.Module]]:
    """One tensor read whole, as before chunked reads: compact_linear + permute_rows, or dequantize."""
    ours = gguf_name(info.name)
    shape = tuple(reversed(info.dims))
    elems, nbytes = GGML_QUANT_SIZES[QT(info.qtype)]
    raw = np.fromfile(path, np.uint8, int(np.prod(info.dims)) // elems * nbytes, offset=info.offset)
    rope = {"attention.wq.weight": args.n_heads, "attention.wk.weight": args.n_kv_heads}
    heads = next((n for suffix, n in rope.items() if ours.endswith(suffix)), None)
    linears = tuple(f"{w}.weight" for w in ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"))
    if QT(info.qtype) not in (QT.F32, QT.F16) and ours.endswith(linears):
        layer = compact_linear(raw, info.qtype, shape)
        return [(ours, layer.permute_rows(rope_row_perm(shape[0], heads)) if heads else layer)]
    weight = dequantize(raw, info.qtype, shape)
    out = [(ours, interleaved_to_half(weight, heads) if heads else weight)]
    if ours == "tok_embeddings.weight" and args.tied_embeddings:
        out.append(("output.weight", compact_linear(raw, info.qtype, shape)))
    return out


def assert_bit_identical(got: torch.Tensor | nn.Module, want: torch.Tensor | nn.Module, name: str) -> None:
    assert type(got) is type(want), name
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want), name
        return
    want_buffers = dict(want.named_buffers())
    assert set(dict(got.named_buffers())) == set(want_buffers), name
    for key, buf in got.named_buffers():
        assert buf.dtype == want_buffers[key].dtype and torch.equal(buf, want_buffers[key]), f"{name}.{key}"


@pytest.mark.parametrize(
    ("chunk_bytes", "drop_pages"), [(1, False), (2_500, True)], ids=["row-by-row", "ragged-dropping-pages"]
)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_chunked_read_is_bit_identical_to_whole_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tied: bool, chunk_bytes: int, drop_pages: bool
) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tied, embed=QT.Q8_0)  # a Q8_0 embedding: float rows and, tied, compact rows
    monkeypatch.setattr(load_gguf, "_CHUNK_BYTES", chunk_bytes)  # 1: every chunk is one row
    monkeypatch.setattr(load_gguf, "_drops_read_pages", lambda size: drop_pages)  # as for a huge file
    monkeypatch.setattr(load_gguf, "_FLOAT_STEP_ELEMS", 300)  # float rows dequantized a few at a time
    monkeypatch.setattr(gguf_blocks, "_CHUNK_BLOCKS", 5)  # K-quant rows unpacked a few at a time
    meta, infos = read_gguf_header(path)
    args = read_gguf_args(meta, infos)
    got = dict(iter_gguf_tensors(path, infos, args, compact=True))
    want = dict(item for info in infos for item in whole_tensor_reference(path, args, info))
    assert set(got) == set(want)
    for name, value in want.items():
        assert_bit_identical(got[name], value, name)
    early = iter_gguf_tensors(path, infos, args, compact=True)
    next(early)
    early.close()  # stopping early: the reader thread finishes its read and goes
    assert not [t for t in threading.enumerate() if t.name.startswith("gguf-read")]


def build_compact(path: Path) -> Transformer:
    meta, infos = read_gguf_header(path)
    args = read_gguf_args(meta, infos)
    return build_model(args, iter_gguf_tensors(path, infos, args, compact=True), torch.float32, "cpu")


def test_build_model_keeps_a_compact_tied_output(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tied=True)
    model = build_compact(path)
    assert isinstance(model.output, Int8Linear) and isinstance(model.tok_embeddings, nn.Embedding)
    assert model.output.group_size == 16  # the embedding's own Q6_K blocks, not a requantized copy
    assert torch.equal(model.output.dequantize(), model.tok_embeddings.weight)


def test_truncated_file_names_the_tensor(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tied=True)
    meta, infos = read_gguf_header(path)
    args = read_gguf_args(meta, infos)
    last = max(infos, key=lambda t: t.offset)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: last.offset + 10])
    with pytest.raises(CheckpointError, match=f"truncated: tensor {last.name}"):
        list(iter_gguf_tensors(cut, infos, args, compact=True))


@pytest.fixture(scope="module")
def smollm2() -> dict[str, object]:
    path = smollm2_gguf_path()
    meta, infos = read_gguf_header(path)
    args = read_gguf_args(meta, infos)
    floats = build_model(args, iter_gguf_tensors(path, infos, args), torch.float32, "cpu")
    compact = build_compact(path)
    return {"path": path, "float": floats, "compact": compact, "tokenizer": load_tokenizer(path)}


def test_smollm2_compact_weights_equal_the_float_load(smollm2: dict) -> None:
    floats, compact = smollm2["float"], smollm2["compact"]
    modules = {n: m for n, m in compact.named_modules() if isinstance(m, Int8Linear | Int4Linear)}
    assert len(modules) == 7 * len(compact.layers) + 1  # every linear, the tied output included
    assert not any(isinstance(m, nn.Linear) for m in compact.modules())
    for name, module in modules.items():
        assert torch.equal(module.dequantize(), floats.get_parameter(f"{name}.weight")), name
    floats_params = dict(floats.named_parameters())
    for name, param in compact.named_parameters():  # embedding and norms
        assert torch.equal(param, floats_params[name]), name


def test_smollm2_compact_logits_and_answer(smollm2: dict) -> None:
    tokenizer = smollm2["tokenizer"]
    ids = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    # Same weights; the compact layers also round their activations to int16 (blocks of 32), the float
    # model does not: agreement to that noise (prefill GEMM, small-batch kernel, GEMV kernel).
    for n in (len(ids), 8, 1):
        tokens = torch.tensor(ids[:n])
        ref = smollm2["float"].logits(tokens)
        got = smollm2["compact"].logits(tokens)
        assert_logits_agree_to_quantization_noise(got, ref)
    result = generate(smollm2["compact"], tokenizer, ids, SamplingParams(max_tokens=40, temperature=0))
    assert "Paris" in result.text, result.text


MEASURE = r"""
import sys, torch
from mistral_nemo.model import load_gguf
from mistral_nemo.model.load_gguf import gguf_name, iter_gguf_tensors, read_gguf_args
from mistral_nemo.model.quant import gguf_blocks  # noqa: F401  numba and the kernels: before the baseline
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.model.weights import build_model
from mistral_nemo.formats.gguf import GgufTensorInfo, read_gguf_header

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

path, compact = sys.argv[1], sys.argv[2] == "compact"
meta, infos = read_gguf_header(path)
args = read_gguf_args(meta, infos)
with torch.device("meta"):
    Transformer(args)  # torch's one-off lazy setup (about 75 MB, measured) is no part of loading
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
before = status("VmRSS:")
model = build_model(args, iter_gguf_tensors(path, infos, args, compact=compact), torch.float32, "cpu")
peak = status("VmHWM:") - before
storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in [*model.parameters(), *model.buffers()]}
print(peak, sum(storages.values()))
"""


def measure_load(path: Path, mode: str) -> tuple[int, int]:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), mode], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    peak, final = result.stdout.split()[-2:]
    return int(peak), int(final)


def test_compact_load_peak_memory_is_near_the_compact_size() -> None:
    path = smollm2_gguf_path()
    peak, final = measure_load(path, "compact")
    _, infos = read_gguf_header(path)
    largest = max(int(np.prod(t.dims)) // block_size(t.qtype)[0] * block_size(t.qtype)[1] for t in infos)
    # Compact: Q4_1 layers as int4 + fp32 scale/zero (80 MB), fp32 embedding (113 MB), int8 output (32 MB);
    # all-float32 would be 538 MB. Measured peak growth 258 MB for 225 MB of weights (the float load:
    # 557-577 MB for 538; before reads replaced the memory map: 673 MB).
    assert final < 240e6
    in_flight = (load_gguf._READ_AHEAD + 1) * min(load_gguf._CHUNK_BYTES, largest)  # the read buffers
    bound = final + in_flight + 16e6  # plus allocator slack; far below a float copy of the matrices
    assert peak < bound, f"peak {peak / 1e6:.0f} MB > {bound / 1e6:.0f} MB ({final / 1e6:.0f} MB of weights)"
