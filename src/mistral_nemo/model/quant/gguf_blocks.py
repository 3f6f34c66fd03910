"""One GGUF tensor's raw blocks -> a compact linear (Int8Linear / Int4Linear), without a float copy.

Exact (dequantize() is bit-equal to gguf_quants.dequantize of the same bytes):
- Q8_0 -> Int8Linear G=32; Q4_0 / Q4_1 -> Int4Linear G=32 (linear.py's from_gguf_blocks).
- Q6_K -> Int8Linear G=16: w = (d * sc_j) * q, q in -32..31. The scale d * sc_j is exact in fp32
  (11-bit fp16 mantissa times an int8), and the kernels round the one product (scale * q) as ggml does.
- Q4_K -> Int4Linear G=32: w = (d * sc_j) * q - dmin * m_j, q in 0..15, so scale = d * sc_j and
  zero = -(dmin * m_j), both exact products; x - y == x + (-y) in IEEE arithmetic.
Every other quantized type (Q5_0, Q5_1, Q5_K, Q2_K, Q3_K, Q8_K, ...) is NOT exact: it is dequantized
in row chunks and requantized with Int8Linear.from_float(group_size=32) (error <= absmax(group) / 254).

All unpacking is vectorised numpy over chunks of blocks (temporaries of a few MiB, no per-block loop).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from mistral_nemo.model.gguf_quants import dequantize
from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear

__all__ = ["EXACT_TYPES", "FLOAT_TYPES", "compact_linear"]

EXACT_TYPES = frozenset({QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q6_K})
FLOAT_TYPES = frozenset({QT.F32, QT.F16, QT.BF16})
QK_K = 256
# Blocks unpacked per step: bounds the uint8 temporaries to a few MiB whatever the tensor size.
_CHUNK_BLOCKS = 1 << 14
_CHUNK_ELEMS = 1 << 20  # fp32 elements per requantization step (4 MiB)
_NIBBLE = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
_CRUMB = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)


def resolve_qtype(qtype: int | str) -> QT:
    return QT[qtype.strip().upper()] if isinstance(qtype, str) else QT(int(qtype))


def compact_linear(
    raw: np.ndarray | bytes, qtype: int | str, shape: tuple[int, int]
) -> Int8Linear | Int4Linear:
    """The compact linear for one GGUF tensor: raw bytes in file order, shape (out, in) in PyTorch order.

    Exact for EXACT_TYPES; any other quantized type is requantized to int8 in groups of 32 (see module doc).
    Raises ValueError for float types (keep those as tensors) and for bytes that do not fit the shape.
    """
    qt = resolve_qtype(qtype)
    rows, cols = (int(s) for s in shape)
    if qt in FLOAT_TYPES:
        raise ValueError(f"{qt.name} weights are floats already; keep them as a tensor")
    if qt == QT.Q8_0:
        return Int8Linear.from_gguf_blocks(raw, qt.name, (rows, cols))
    if qt in (QT.Q4_0, QT.Q4_1):
        return Int4Linear.from_gguf_blocks(raw, qt.name, (rows, cols))
    blocks = gguf_block_view(raw, qt, (rows, cols))
    if qt == QT.Q6_K:
        return Int8Linear(*q6_k_to_int8(blocks, rows, cols))
    if qt == QT.Q4_K:
        return Int4Linear(*q4_k_to_int4(blocks, rows, cols))
    return _requantized(blocks, qt, rows, cols)


def gguf_block_view(raw: np.ndarray | bytes, qt: QT, shape: tuple[int, int]) -> np.ndarray:
    """Raw bytes as [n_blocks, bytes_per_block] uint8 (a view), after checking they fill `shape`."""
    if isinstance(raw, bytes | bytearray | memoryview):
        arr = np.frombuffer(raw, dtype=np.uint8)
    else:
        arr = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    rows, cols = shape
    elems, nbytes = GGML_QUANT_SIZES[qt]
    if cols % elems:
        raise ValueError(f"{qt.name}: row length {cols} is not a multiple of the block size {elems}")
    need = rows * cols // elems * nbytes
    if arr.size != need:
        raise ValueError(f"{qt.name}: shape {shape} needs {need} bytes, got {arr.size}")
    return arr.reshape(-1, nbytes)


def _f16(b: np.ndarray, off: int) -> np.ndarray:
    """The fp16 field at byte `off` of each block, as float32 [n, 1] (exact)."""
    return np.ascontiguousarray(b[:, off : off + 2]).view(np.float16).astype(np.float32)


def q6_k_to_int8(blocks: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q6_K blocks (ql[128] | qh[64] | scales[16] int8 | d fp16) -> q [rows, cols], scale [rows, cols/16].

    Element e of a block, with h = e // 128 and r = e % 128: lo = nibble r // 64 of ql[64h + r % 64],
    hi = 2-bit field r // 32 of qh[32h + r % 32]; q = (lo | hi << 4) - 32, one int8 scale per 16 elements.
    """
    n = blocks.shape[0]
    q = np.empty((n, QK_K), dtype=np.int8)
    scale = np.empty((n, QK_K // 16), dtype=np.float32)
    for s in range(0, n, _CHUNK_BLOCKS):
        b = blocks[s : s + _CHUNK_BLOCKS]
        m = b.shape[0]
        lo = ((b[:, :128].reshape(m, 2, 1, 64) >> _NIBBLE) & 0xF).reshape(m, QK_K)
        hi = ((b[:, 128:192].reshape(m, 2, 1, 32) >> _CRUMB) & 3).reshape(m, QK_K)
        np.subtract((lo | (hi << 4)).view(np.int8), 32, out=q[s : s + m])
        np.multiply(_f16(b, 208), b[:, 192:208].view(np.int8).astype(np.float32), out=scale[s : s + m])
    return torch.from_numpy(q.reshape(rows, cols)), torch.from_numpy(scale.reshape(rows, cols // 16))


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12-byte field of 8 x (6-bit scale, 6-bit min) of Q4_K / Q5_K, as two uint8 [n, 8]."""
    s = s.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0xF) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def q4_k_to_int4(blocks: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K blocks (d | dmin | scales[12] | qs[128]) -> Int4Linear's (packed, scale, zero), G = 32.

    In Q4_K, sub-block 2g is the low nibbles of qs[32g : 32g + 32] and sub-block 2g + 1 their high
    nibbles; ours wants byte j of a group to hold values j (low) and j + 16 (high), so the nibbles of
    bytes j and j + 16 are paired up.
    """
    n = blocks.shape[0]
    packed = np.empty((n, 8, 16), dtype=np.uint8)
    scale = np.empty((n, 8), dtype=np.float32)
    zero = np.empty((n, 8), dtype=np.float32)
    for s in range(0, n, _CHUNK_BLOCKS):
        b = blocks[s : s + _CHUNK_BLOCKS]
        m = b.shape[0]
        sc, mn = _k_scale_min(b[:, 4:16])
        np.multiply(_f16(b, 0), sc.astype(np.float32), out=scale[s : s + m])
        np.negative(_f16(b, 2) * mn.astype(np.float32), out=zero[s : s + m])
        qs = b[:, 16:].reshape(m, 4, 2, 16)  # [group pair g, bytes 0-15 / 16-31, j]
        first, second = qs[:, :, 0], qs[:, :, 1]
        out = packed[s : s + m].reshape(m, 4, 2, 16)
        out[:, :, 0] = (first & 0xF) | (second << 4)  # uint8 shift drops the high nibble
        out[:, :, 1] = (first >> 4) | (second & 0xF0)
    groups = cols // 32
    return (
        torch.from_numpy(packed.reshape(rows, cols // 2)),
        torch.from_numpy(scale.reshape(rows, groups)),
        torch.from_numpy(zero.reshape(rows, groups)),
    )


def _requantized(blocks: np.ndarray, qt: QT, rows: int, cols: int) -> Int8Linear:
    """Not exact: dequantize a few rows at a time, requantize to int8 G=32 (never a full fp32 copy)."""
    q = torch.empty(rows, cols, dtype=torch.int8)
    scale = torch.empty(rows, cols // 32, dtype=torch.float32)
    per_row = blocks.reshape(rows, -1)
    step = max(1, _CHUNK_ELEMS // cols)
    for r in range(0, rows, step):
        chunk = per_row[r : r + step]
        part = Int8Linear.from_float(dequantize(chunk, qt, (chunk.shape[0], cols)), group_size=32)
        q[r : r + step], scale[r : r + step] = part.qweight, part.scale
    return Int8Linear(q, scale)
