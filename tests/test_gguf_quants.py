"""Torch GGUF dequantization vs gguf's numpy reference: bit-exact on synthetic blocks and on a real file."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

import mistral_nemo.model.gguf_quants as gq
from mistral_nemo.formats.gguf import UnsupportedQuantizationError, block_size, block_view, row_bytes
from mistral_nemo.model.gguf_quants import SUPPORTED_TYPES, dequantize
from tests.gguf_fixture import smollm2_gguf_path

# Byte offsets of the fp16 scale fields (d, and m/dmin where present) inside one block.
F16_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q8_0: (0,),
    QT.Q4_0: (0,),
    QT.Q4_1: (0, 2),
    QT.Q5_0: (0,),
    QT.Q5_1: (0, 2),
    QT.Q2_K: (80, 82),
    QT.Q3_K: (108,),
    QT.Q4_K: (0, 2),
    QT.Q5_K: (0, 2),
    QT.Q6_K: (208,),
}
QUANTIZABLE = (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1)
# (rows, blocks per row); None rows means a 1-D tensor.
LAYOUTS = [(None, 1), (1, 3), (4, 2), (7, 5), (33, 16)]


def shape_of(qt: QT, rows: int | None, blocks: int) -> tuple[int, ...]:
    cols = blocks * GGML_QUANT_SIZES[qt][0]
    return (cols,) if rows is None else (rows, cols)


def random_blocks(qt: QT, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random bytes in GGUFReader's [rows, bytes_per_row] layout, with finite, modest fp16 scales."""
    rng = np.random.default_rng(seed)
    elems, nbytes = GGML_QUANT_SIZES[qt]
    byte_shape = (*shape[:-1], shape[-1] // elems * nbytes)
    raw = rng.integers(0, 256, byte_shape, dtype=np.uint8)
    blocks = raw.reshape(-1, nbytes)
    for off in F16_FIELDS.get(qt, ()):
        scale = rng.uniform(-3.0, 3.0, (blocks.shape[0], 1)) * 10.0 ** rng.integers(
            -4, 1, (blocks.shape[0], 1)
        )
        blocks[:, off : off + 2] = scale.astype(np.float16).view(np.uint8)
    return raw


def reference(raw: np.ndarray, qt: QT, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, qt)).reshape(shape))


def assert_exact(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.isfinite(want).all()
    assert torch.equal(got, want), f"max abs diff {(got - want).abs().max().item()}"


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("qt", list(F16_FIELDS), ids=lambda q: q.name)
def test_random_blocks_match_reference(qt: QT, layout: tuple[int | None, int]) -> None:
    shape = shape_of(qt, *layout)
    raw = random_blocks(qt, shape, seed=qt.value * 1000 + LAYOUTS.index(layout))
    assert_exact(dequantize(raw, qt, shape), reference(raw, qt, shape))


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("qt", QUANTIZABLE, ids=lambda q: q.name)
def test_quantized_weights_match_reference(qt: QT, layout: tuple[int | None, int]) -> None:
    shape = shape_of(qt, *layout)
    w = np.random.default_rng(qt.value).normal(0, 0.05, shape).astype(np.float32)
    raw = gguf.quants.quantize(w, qt)
    out = dequantize(raw, qt, shape)
    assert_exact(out, reference(raw, qt, shape))
    # Sanity that the round trip is a quantization of w, not merely equal to the reference.
    assert (out - torch.from_numpy(w)).abs().max() < 0.05


@pytest.mark.parametrize("qt", [QT.F32, QT.F16, QT.BF16], ids=lambda q: q.name)
@pytest.mark.parametrize("shape", [(5,), (3, 8), (2, 3, 4)], ids=str)
def test_float_types(qt: QT, shape: tuple[int, ...]) -> None:
    w = np.random.default_rng(1).normal(0, 2, shape).astype(np.float32)
    raw = gguf.quants.quantize(w, qt)
    want = torch.from_numpy(np.asarray(gguf.quants.dequantize(raw, qt), dtype=np.float32).reshape(shape))
    # Typed values (as GGUFReader returns F32/F16) and raw bytes (as it returns BF16) both work.
    for data in (raw, raw.view(np.uint8), torch.from_numpy(raw.copy())):
        torch.testing.assert_close(dequantize(data, qt, shape), want, rtol=1e-6, atol=0)
    if qt == QT.F32:
        out = dequantize(w, qt, shape)
        out.zero_()  # the result must be a copy, never an alias of the (possibly read-only) input
        assert np.abs(w).sum() > 0


def test_q8_k_against_layout() -> None:
    # gguf has no numpy Q8_K dequantizer: check the documented layout (fp32 d | int8 qs[256] | i16 bsums).
    rng = np.random.default_rng(8)
    raw = rng.integers(0, 256, (3, 2 * 292), dtype=np.uint8)
    blocks = raw.reshape(-1, 292)
    d = rng.uniform(-1, 1, (blocks.shape[0], 1)).astype(np.float32)
    blocks[:, :4] = d.view(np.uint8)
    want = (blocks[:, 4:260].view(np.int8).astype(np.float32) * d).reshape(3, 512)
    assert_exact(dequantize(raw, "Q8_K", (3, 512)), torch.from_numpy(want))


def test_input_forms_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    qt, shape = QT.Q4_K, (6, 1024)
    raw = random_blocks(qt, shape, seed=3)
    want = reference(raw, qt, shape)
    raw.setflags(write=False)  # like GGUFReader's memmap
    for data in (raw, raw.ravel(), torch.from_numpy(raw.copy()), raw.tobytes(), int(qt), "q4_k"):
        if isinstance(data, int | str):
            assert_exact(dequantize(raw, data, shape), want)
        else:
            assert_exact(dequantize(data, qt, shape), want)
    # Several chunks with a ragged tail must give the same answer as one chunk.
    monkeypatch.setattr(gq, "_CHUNK_ELEMS", 3 * 256)
    assert_exact(dequantize(raw, qt, shape), want)
    # A misaligned view (odd storage offset) is copied rather than rejected.
    padded = torch.cat([torch.zeros(1, dtype=torch.uint8), torch.from_numpy(raw.ravel().copy())])
    assert_exact(dequantize(padded[1:], qt, shape), want)


@pytest.mark.parametrize("qtype", [QT.IQ2_XXS, "TQ1_0", int(QT.MXFP4), "NOPE", 9999])
def test_unsupported_types_raise(qtype: int | str) -> None:
    with pytest.raises(UnsupportedQuantizationError) as err:
        dequantize(np.zeros(64, np.uint8), qtype, (256,))
    name = qtype.name if isinstance(qtype, QT) else QT(qtype).name if qtype == int(QT.MXFP4) else str(qtype)
    assert name in str(err.value)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="bytes"):
        dequantize(np.zeros(33, np.uint8), QT.Q8_0, (32,))
    with pytest.raises(ValueError, match="multiple"):
        dequantize(np.zeros(34, np.uint8), QT.Q8_0, (2, 16))


def test_block_layouts_by_name_or_number() -> None:
    # ggml-common.h: block_q4_K is 2 fp16 + 12 scale bytes + 128 nibble bytes for 256 values.
    assert block_size("Q4_K") == (256, 2 * 2 + 12 + 128) and block_size(8) == (32, 2 + 32)
    assert block_size(" q8_0 ") == block_size(QT.Q8_0) and block_size("F32") == (1, 4)
    assert row_bytes("Q6_K", 512) == 2 * 210
    with pytest.raises(ValueError, match="row length 100 is not a multiple of the block size 32"):
        row_bytes(QT.Q4_0, 100)
    raw = np.zeros((3, 2 * 18), np.uint8)  # 3 rows of 2 Q4_0 blocks
    view = block_view(raw, "Q4_0", (3, 64))
    assert view.shape == (6, 18) and np.shares_memory(view, raw)
    with pytest.raises(ValueError, match=r"Q4_0: shape \(3, 64\) needs 108 bytes, got 107"):
        block_view(raw.reshape(-1)[:-1], "Q4_0", (3, 64))
    with pytest.raises(UnsupportedQuantizationError, match="'Q9_9'"):
        block_size("Q9_9")
    assert {QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.BF16} <= SUPPORTED_TYPES


@pytest.fixture(scope="session")
def smollm2_reader() -> gguf.GGUFReader:
    path: Path = smollm2_gguf_path()
    return gguf.GGUFReader(path)


def test_real_smollm2_file(smollm2_reader: gguf.GGUFReader) -> None:
    tensors = {t.name: t for t in smollm2_reader.tensors}
    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.attn_k.weight"]
    names.append("blk.0.attn_norm.weight")
    kinds = set()
    for name in names:
        t = tensors[name]
        kinds.add(t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        got = dequantize(t.data, t.tensor_type, shape)
        assert_exact(got, reference(t.data, t.tensor_type, shape))
    assert kinds == {QT.Q8_0, QT.Q4_1, QT.F32}
    assert tensors["token_embd.weight"].shape.tolist() == [576, 49152]
