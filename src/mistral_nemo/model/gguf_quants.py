"""GGUF tensor dequantization in PyTorch: raw GGML blocks in, float32 weights out.

Block sizes come from formats.gguf (gguf's GGML_QUANT_SIZES); the field layout inside a block follows
ggml's ggml-common.h. The numpy dequantizers in ``gguf.quants`` are the reference:
every kernel here does the same float32 operations in the same order, so results match bit for bit.
All blocks of a chunk are decoded at once with tensor ops; chunking bounds the temporaries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType

from mistral_nemo.formats.gguf import QK_K, UnsupportedQuantizationError, block_size, is_float_type, qtype_of

__all__ = ["SUPPORTED_TYPES", "dequantize"]

QT = GGMLQuantizationType
# Elements decoded per step: temporaries stay a few MiB (cache-friendly) whatever the tensor size.
_CHUNK_ELEMS = 1 << 20


# Kernel: (blocks [n, bytes_per_block] uint8, out [n, elems_per_block] float32) -> fills out.
_Kernel = Callable[[torch.Tensor, torch.Tensor], None]

_U8 = torch.uint8
_SH_NIBBLE = torch.tensor([0, 4], dtype=_U8)
_SH_CRUMB = torch.tensor([0, 2, 4, 6], dtype=_U8)
_SH_BIT = torch.arange(8, dtype=_U8)


def _f16(b: torch.Tensor, off: int) -> torch.Tensor:
    """The fp16 field at byte ``off`` of each block, as float32 [n, 1]; a strided view, no byte shuffling."""
    return b[:, off : off + 2].view(torch.float16).float()


def _planes(x: torch.Tensor, groups: int, shifts: torch.Tensor, mask: int) -> torch.Tensor:
    """Split bytes [n, groups*w] into bit planes: [n, groups, len(shifts), w] of (x >> shift) & mask.

    ggml packs consecutive output runs into successive bit positions of the *same* bytes, so a run of
    ``w`` values is (plane s of the group's w bytes); flattening the result gives ggml's element order.
    """
    n = x.shape[0]
    return (x.reshape(n, groups, 1, -1) >> shifts.view(1, 1, -1, 1)) & mask


def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    torch.mul(b[:, 2:].view(torch.int8).float(), _f16(b, 0), out=out)


def _q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _planes(b[:, 2:], 1, _SH_NIBBLE, 0xF).reshape(out.shape).view(torch.int8) - 8
    torch.mul(q.float(), _f16(b, 0), out=out)


def _q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _planes(b[:, 4:], 1, _SH_NIBBLE, 0xF).reshape(out.shape)
    torch.mul(q.float(), _f16(b, 0), out=out)
    out.add_(_f16(b, 2))


def _q5(b: torch.Tensor, qh_off: int) -> torch.Tensor:
    """5-bit values of Q5_0/Q5_1: low nibbles, plus bit i of the little-endian u32 ``qh`` as bit 4."""
    n = b.shape[0]
    lo = _planes(b[:, qh_off + 4 :], 1, _SH_NIBBLE, 0xF).reshape(n, 32)
    # Bit i of a little-endian u32 is bit i%8 of byte i//8: no u32 view needed (qh is 2-aligned only).
    hi = ((b[:, qh_off : qh_off + 4].unsqueeze(-1) >> _SH_BIT) & 1).reshape(n, 32)
    return lo | (hi << 4)


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _q5(b, 2).view(torch.int8) - 16
    torch.mul(q.float(), _f16(b, 0), out=out)


def _q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    torch.mul(_q5(b, 4).float(), _f16(b, 0), out=out)
    out.add_(_f16(b, 2))


def _q2_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # scales[16] | qs[64] | d | dmin; each byte of scales is (min << 4 | scale) for a run of 16.
    n = b.shape[0]
    sc = b[:, :16]
    dl = (_f16(b, 80) * (sc & 0xF).float()).unsqueeze(-1)
    ml = (_f16(b, 82) * (sc >> 4).float()).unsqueeze(-1)
    q = _planes(b[:, 16:80], 2, _SH_CRUMB, 3).reshape(n, 16, 16)
    o = out.view(n, 16, 16)
    torch.mul(dl, q.float(), out=o)
    o.sub_(ml)


def _q3_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # hmask[32] | qs[64] | scales[12] | d. Scales are 6-bit, signed via -32: low nibbles in bytes 0..7,
    # high crumbs in bytes 8..11.
    n = b.shape[0]
    lo = _planes(b[:, 96:104], 1, _SH_NIBBLE, 0xF).reshape(n, 16)
    hi = _planes(b[:, 104:108], 1, _SH_CRUMB, 3).reshape(n, 16)
    sc = (lo | (hi << 4)).view(torch.int8) - 32
    dl = (_f16(b, 108) * sc.float()).unsqueeze(-1)
    ql = _planes(b[:, 32:96], 2, _SH_CRUMB, 3).reshape(n, 16, 16)
    hm = _planes(b[:, :32], 1, _SH_BIT, 1).reshape(n, 16, 16)
    # A *clear* hmask bit subtracts 4 (ggml stores the high bit inverted).
    q = ql.view(torch.int8) - ((hm ^ 1) << 2).view(torch.int8)
    torch.mul(dl, q.float(), out=out.view(n, 16, 16))


def _k_scale_min(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte, 8 x (6-bit scale, 6-bit min) field shared by Q4_K and Q5_K."""
    n = s.shape[0]
    s = s.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0xF) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k_affine(b: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> None:
    """out = d*scale * q - dmin*min over 8 runs of 32, for Q4_K/Q5_K (d, dmin, scales lead the block)."""
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    dl = (_f16(b, 0) * sc.float()).unsqueeze(-1)
    ml = (_f16(b, 2) * mn.float()).unsqueeze(-1)
    o = out.view(n, 8, 32)
    torch.mul(dl, q.float(), out=o)
    o.sub_(ml)


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _planes(b[:, 16:], 4, _SH_NIBBLE, 0xF).reshape(b.shape[0], 8, 32)
    _k_affine(b, q, out)


def _q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    lo = _planes(b[:, 48:], 4, _SH_NIBBLE, 0xF).reshape(n, 8, 32)
    hi = _planes(b[:, 16:48], 1, _SH_BIT, 1).reshape(n, 8, 32)
    _k_affine(b, lo | (hi << 4), out)


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # ql[128] | qh[64] | scales[16] int8 | d.
    n = b.shape[0]
    dl = (_f16(b, 208) * b[:, 192:208].view(torch.int8).float()).unsqueeze(-1)
    lo = _planes(b[:, :128], 2, _SH_NIBBLE, 0xF).reshape(n, 8, 32)
    hi = _planes(b[:, 128:192], 2, _SH_CRUMB, 3).reshape(n, 8, 32)
    q = (lo | (hi << 4)).view(torch.int8) - 32
    torch.mul(dl, q.reshape(n, 16, 16).float(), out=out.view(n, 16, 16))


def _q8_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d is an fp32 (not fp16) here; the trailing bsums[16] are a matmul aid, irrelevant to values.
    torch.mul(b[:, 4 : 4 + QK_K].view(torch.int8).float(), b[:, :4].view(torch.float32), out=out)


_KERNELS: dict[GGMLQuantizationType, _Kernel] = {
    QT.Q8_0: _q8_0,
    QT.Q4_0: _q4_0,
    QT.Q4_1: _q4_1,
    QT.Q5_0: _q5_0,
    QT.Q5_1: _q5_1,
    QT.Q2_K: _q2_k,
    QT.Q3_K: _q3_k,
    QT.Q4_K: _q4_k,
    QT.Q5_K: _q5_k,
    QT.Q6_K: _q6_k,
    QT.Q8_K: _q8_k,
}
SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {qt for qt in QT if is_float_type(qt)} | set(_KERNELS)
)


def _as_tensor(data: np.ndarray | torch.Tensor | bytes | bytearray | memoryview) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray | memoryview) else data
    arr = np.ascontiguousarray(arr)
    with warnings.catch_warnings():
        # GGUFReader hands out read-only memmaps; we only ever read them.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _aligned(raw: torch.Tensor, align: int) -> torch.Tensor:
    # Dtype views need an aligned storage offset; a view into an odd offset is copied once instead.
    return raw.clone() if raw.storage_offset() % align else raw


def dequantize(
    data: np.ndarray | torch.Tensor | bytes | bytearray | memoryview,
    qtype: int | str,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """Decode one GGUF tensor to float32 of ``shape`` (PyTorch order: the reverse of GGUF's dims).

    ``data`` is the tensor's raw bytes (any layout of uint8, e.g. GGUFReader's [rows, bytes_per_row]),
    or, for F32/F16/BF16, already-typed float values. The result never aliases ``data``.
    """
    qt = qtype_of(qtype)
    if qt not in SUPPORTED_TYPES:
        supported = ", ".join(sorted(t.name for t in SUPPORTED_TYPES))
        raise UnsupportedQuantizationError(
            f"cannot dequantize GGML type {qt.name} ({qt.value}); supported: {supported}"
        )
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    t = _as_tensor(data)
    if t.is_floating_point():
        if not is_float_type(qt):
            raise ValueError(f"{qt.name} data must be raw bytes, got {t.dtype} values")
        if t.numel() != numel:
            raise ValueError(f"{t.numel()} values cannot fill shape {shape}")
        return t.reshape(shape).to(torch.float32, copy=True)
    raw = t.contiguous().reshape(-1).view(_U8) if t.dtype != _U8 else t.contiguous().reshape(-1)

    elems, nbytes = block_size(qt)
    if shape and shape[-1] % elems:
        raise ValueError(f"{qt.name}: row length {shape[-1]} is not a multiple of the block size {elems}")
    n_blocks = numel // elems
    if raw.numel() != n_blocks * nbytes:
        raise ValueError(f"{qt.name}: shape {shape} needs {n_blocks * nbytes} bytes, got {raw.numel()}")

    if qt == QT.F32:
        return _aligned(raw, 4).view(torch.float32).reshape(shape).clone()
    if qt == QT.F16:
        return _aligned(raw, 2).view(torch.float16).reshape(shape).float()
    if qt == QT.BF16:
        # bf16 is the top half of an fp32: widen the bits rather than round-trip through torch.bfloat16.
        return (_aligned(raw, 2).view(torch.int16).to(torch.int32) << 16).view(torch.float32).reshape(shape)

    kernel = _KERNELS[qt]
    blocks = _aligned(raw, 4).view(n_blocks, nbytes)
    out = torch.empty(n_blocks, elems, dtype=torch.float32)
    step = max(1, _CHUNK_ELEMS // elems)
    for s in range(0, n_blocks, step):
        kernel(blocks[s : s + step], out[s : s + step])
    return out.view(shape)
