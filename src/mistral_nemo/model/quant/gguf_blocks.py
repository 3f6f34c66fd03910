"""One GGUF tensor's raw blocks -> a compact linear (Int8Linear / Int4Linear), without a float copy.

Exact (dequantize() is bit-equal to gguf_quants.dequantize of the same bytes):
- Q8_0 -> Int8Linear G=32; Q4_0 / Q4_1 -> Int4Linear G=32 (linear.py's put_q8_0_rows / put_q4_rows).
- Q6_K -> Int8Linear G=16: w = (d * sc_j) * q, q in -32..31. The scale d * sc_j is exact in fp32
  (11-bit fp16 mantissa times an int8), and the kernels round the one product (scale * q) as ggml does.
- Q4_K -> Int4Linear G=32: w = (d * sc_j) * q - dmin * m_j, q in 0..15, so scale = d * sc_j and
  zero = -(dmin * m_j), both exact products; x - y == x + (-y) in IEEE arithmetic.
Every other quantized type (Q5_0, Q5_1, Q5_K, Q2_K, Q3_K, Q8_K, ...) is NOT exact: it is dequantized
in row chunks and requantized with Int8Linear.from_float(group_size=32) (error <= absmax(group) / 254).

CompactRows builds a layer from a tensor's rows as they are read (load_gguf.py reads a file a chunk of
rows at a time): the final buffers are allocated once and each chunk is written straight into its rows,
permuted if asked (q/k RoPE order), so no tensor ever exists twice in full. All unpacking is vectorised
numpy over chunks of blocks (temporaries of a few MiB, no per-block loop).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from mistral_nemo.formats.gguf import QK_K, block_size, block_view, is_float_type, qtype_of, row_bytes
from mistral_nemo.model.gguf_quants import dequantize
from mistral_nemo.model.quant.linear import (
    Int4Linear,
    Int8Linear,
    f16_field,
    put_q4_rows,
    put_q8_0_rows,
    put_rows,
)

__all__ = ["EXACT_TYPES", "CompactRows", "compact_linear"]

EXACT_TYPES = frozenset({QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q4_K, QT.Q6_K})
# K-quant blocks unpacked per step: bounds the uint8 temporaries to a few MiB whatever the chunk size.
_CHUNK_BLOCKS = 1 << 14
_CHUNK_ELEMS = 1 << 20  # fp32 elements per requantization step (4 MiB)
_NIBBLE = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
_CRUMB = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)

Rows = slice | np.ndarray  # destination rows of a chunk's rows: a slice, or indices (a permutation)


def compact_linear(
    raw: np.ndarray | bytes, qtype: int | str, shape: tuple[int, int]
) -> Int8Linear | Int4Linear:
    """The compact linear for one GGUF tensor: raw bytes in file order, shape (out, in) in PyTorch order.

    Exact for EXACT_TYPES; any other quantized type is requantized to int8 in groups of 32 (see module doc).
    Raises ValueError for float types (keep those as tensors) and for bytes that do not fit the shape.
    """
    builder = CompactRows(qtype, shape)
    builder.put(block_view(raw, builder.qtype, shape))
    return builder.finish()


class CompactRows:
    """A compact layer's final buffers, allocated once and filled a chunk of whole rows at a time.

    put() takes the raw bytes of the next rows in file order. row_order is the permutation that
    permute_rows would apply afterwards (new row i = file row row_order[i]): each file row is written
    straight to its final place instead, without a second copy of the layer.
    """

    def __init__(
        self, qtype: int | str, shape: tuple[int, int], row_order: torch.Tensor | np.ndarray | None = None
    ) -> None:
        qt = qtype_of(qtype)
        rows, cols = (int(s) for s in shape)
        if is_float_type(qt):
            raise ValueError(f"{qt.name} weights are floats already; keep them as a tensor")
        self.block_bytes = block_size(qt)[1]
        self.qtype, self.rows, self.cols = qt, rows, cols
        self.row_bytes = row_bytes(qt, cols)
        self.layer = _empty_layer(qt, rows, cols)
        self._dest = None if row_order is None else _inverse(row_order, rows)
        self._buffers = {name: buf.numpy() for name, buf in self.layer.named_buffers()}
        self._done = 0  # file rows written so far

    def put(self, raw: np.ndarray) -> None:
        """Write the next whole rows (their raw bytes, in file order) into the layer."""
        arr = np.asarray(raw).reshape(-1).view(np.uint8)
        count = arr.size // self.row_bytes
        if arr.size % self.row_bytes or self._done + count > self.rows:
            raise ValueError(
                f"{self.qtype.name}: {arr.size} bytes are not whole rows of {self.row_bytes} bytes, "
                f"or overrun {self.rows} rows (at row {self._done})"
            )
        per_row = self.row_bytes // self.block_bytes
        blocks = arr.reshape(count, per_row, self.block_bytes)
        step = self._rows_per_step()
        for start in range(0, count, step):
            part = blocks[start : start + step]
            first = self._done + start
            self._fill(part.reshape(-1, self.block_bytes), self._rows(first, first + part.shape[0]))
        self._done += count

    def finish(self) -> Int8Linear | Int4Linear:
        if self._done != self.rows:
            raise ValueError(f"{self.qtype.name}: got {self._done} of {self.rows} rows")
        return self.layer

    def _rows(self, start: int, stop: int) -> Rows:
        return slice(start, stop) if self._dest is None else self._dest[start:stop]

    def _rows_per_step(self) -> int:
        """Rows unpacked at once: all for plain copies; bounded where unpacking makes temporaries."""
        if self.qtype in (QT.Q8_0, QT.Q4_0, QT.Q4_1):
            return max(1, self.rows)
        if self.qtype in EXACT_TYPES:
            return max(1, _CHUNK_BLOCKS // (self.row_bytes // self.block_bytes))
        return max(1, _CHUNK_ELEMS // self.cols)

    def _fill(self, blocks: np.ndarray, rows: Rows) -> None:
        qt, buf = self.qtype, self._buffers
        if qt == QT.Q8_0:
            put_q8_0_rows(blocks, rows, buf["qweight"], buf["scale"])
        elif qt in (QT.Q4_0, QT.Q4_1):
            put_q4_rows(blocks, rows, buf["packed"], buf["scale"], buf["zero"], q4_1=qt == QT.Q4_1)
        elif qt == QT.Q6_K:
            _put_q6_k_rows(blocks, rows, buf["qweight"], buf["scale"])
        elif qt == QT.Q4_K:
            _put_q4_k_rows(blocks, rows, buf["packed"], buf["scale"], buf["zero"])
        else:
            _put_requantized_rows(blocks, rows, qt, buf["qweight"], buf["scale"])


def _empty_layer(qt: QT, rows: int, cols: int) -> Int8Linear | Int4Linear:
    """The layer for `qt` with uninitialised buffers of their final shapes (CompactRows fills them)."""
    if qt in (QT.Q4_0, QT.Q4_1, QT.Q4_K):
        groups = cols // 32
        return Int4Linear(
            torch.empty(rows, cols // 2, dtype=torch.uint8),
            torch.empty(rows, groups),
            torch.empty(rows, groups),
        )
    group = 16 if qt == QT.Q6_K else 32
    return Int8Linear(torch.empty(rows, cols, dtype=torch.int8), torch.empty(rows, cols // group))


def _inverse(row_order: torch.Tensor | np.ndarray, rows: int) -> np.ndarray:
    """Destination row of each file row, for new row i = file row row_order[i]."""
    order = np.asarray(row_order, dtype=np.int64).reshape(-1)
    if order.size != rows or not np.array_equal(np.sort(order), np.arange(rows)):
        raise ValueError(f"row_order is not a permutation of {rows} rows")
    dest = np.empty(rows, dtype=np.int64)
    dest[order] = np.arange(rows)
    return dest


def _f16(b: np.ndarray, off: int) -> np.ndarray:
    """The fp16 field at byte `off` of each block, as float32 [n, 1] (exact; through a uint16 view)."""
    return f16_field(b, off).astype(np.float32)[:, None]


def _put_q6_k_rows(b: np.ndarray, rows: Rows, q: np.ndarray, scale: np.ndarray) -> None:
    """Q6_K blocks (ql[128] | qh[64] | scales[16] int8 | d fp16) -> q[rows] (int8), scale[rows] (G = 16).

    Element e of a block, with h = e // 128 and r = e % 128: lo = nibble r // 64 of ql[64h + r % 64],
    hi = 2-bit field r // 32 of qh[32h + r % 32]; q = (lo | hi << 4) - 32, one int8 scale per 16 elements.
    """
    m, per_row = b.shape[0], scale.shape[1] // 16
    lo = ((b[:, :128].reshape(m, 2, 1, 64) >> _NIBBLE) & 0xF).reshape(m, QK_K)
    hi = ((b[:, 128:192].reshape(m, 2, 1, 32) >> _CRUMB) & 3).reshape(m, QK_K)
    values = np.subtract((lo | (hi << 4)).view(np.int8), np.int8(32))
    put_rows(q.reshape(-1, per_row, QK_K), rows, values.reshape(-1, per_row, QK_K))
    sc = np.multiply(_f16(b, 208), b[:, 192:208].view(np.int8).astype(np.float32))
    put_rows(scale.reshape(-1, per_row, 16), rows, sc.reshape(-1, per_row, 16))


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12-byte field of 8 x (6-bit scale, 6-bit min) of Q4_K / Q5_K, as two uint8 [n, 8]."""
    s = s.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0xF) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _put_q4_k_rows(
    b: np.ndarray, rows: Rows, packed: np.ndarray, scale: np.ndarray, zero: np.ndarray
) -> None:
    """Q4_K blocks (d | dmin | scales[12] | qs[128]) -> rows of Int4Linear's (packed, scale, zero), G = 32.

    In Q4_K, sub-block 2g is the low nibbles of qs[32g : 32g + 32] and sub-block 2g + 1 their high
    nibbles; ours wants byte j of a group to hold values j (low) and j + 16 (high), so the nibbles of
    bytes j and j + 16 are paired up.
    """
    m, per_row = b.shape[0], scale.shape[1] // 8
    sc, mn = _k_scale_min(b[:, 4:16])
    put_rows(
        scale.reshape(-1, per_row, 8), rows, (_f16(b, 0) * sc.astype(np.float32)).reshape(-1, per_row, 8)
    )
    neg_min = np.negative(_f16(b, 2) * mn.astype(np.float32))  # x - y == x + (-y) in IEEE arithmetic
    put_rows(zero.reshape(-1, per_row, 8), rows, neg_min.reshape(-1, per_row, 8))
    qs = b[:, 16:].reshape(m, 4, 2, 16)  # [group pair g, bytes 0-15 / 16-31, j]
    first, second = qs[:, :, 0], qs[:, :, 1]
    out = np.empty((m, 4, 2, 16), dtype=np.uint8)
    out[:, :, 0] = (first & 0xF) | (second << 4)  # uint8 shift drops the high nibble
    out[:, :, 1] = (first >> 4) | (second & 0xF0)
    put_rows(packed.reshape(-1, per_row, 128), rows, out.reshape(-1, per_row, 128))


def _put_requantized_rows(b: np.ndarray, rows: Rows, qt: QT, q: np.ndarray, scale: np.ndarray) -> None:
    """Not exact: dequantize these rows, requantize them to int8 G=32 (never a full fp32 copy)."""
    cols = q.shape[1]
    count = b.shape[0] * block_size(qt)[0] // cols
    part = Int8Linear.from_float(dequantize(b, qt, (count, cols)), group_size=32)
    put_rows(q, rows, part.qweight.numpy())
    put_rows(scale, rows, part.scale.numpy())
