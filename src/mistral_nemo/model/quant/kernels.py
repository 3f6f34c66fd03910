"""Numba CPU kernels of the int8 / int4 linears: int16 activations, integer block dot products.

Decode on CPU is memory-bound, so the kernels read each weight byte once per call and never
materialise a float copy of the matrix. Each token's activations are quantized to int16 in blocks of
32 (xs = absmax / 32767 per block), so a block of weights costs a few integer instructions (simd.py)
instead of widening every byte to float: 3-10x faster than the float kernels this replaced at batch 1
(bench/quant_linear.py). Per-block integer sums are then scaled in float: sum_b ws * xs_b * isum_b.

Why int16 and not int8 as llama.cpp does: the same instructions cost about the same here, and int8
activations (absmax / 127) changed the greedy answers of SmolLM2 Q4_1 ("What is the capital of
France?" -> "L'Étoile, la Cité, ...", which llama.cpp answers too), while int16 rounding moves logits
by ~1e-4 of their range and keeps every answer of the float activations.

Every path computes that same sum, so they agree to float rounding and a token's result does not
depend on the other tokens in its batch: tokens <= small-batch run these kernels (one token or several,
each row read once for all of them); prefill multiplies the dequantized weights with the same
quantized activations (`fake_quantize`) through torch's GEMM.

Layouts (all C-contiguous, rows = output features; in_features and group sizes multiples of 32):
- int8: q [N, K] int8, scale [N, K // G] float32; w = scale * q. G = K is per-channel, G = 32 is Q8_0,
  and G = 16 (Q6_K's sub-blocks) is allowed too.
- int4: packed [N, K // 2] uint8, scale, zero [N, K // G] float32; w = scale * q + zero, q in 0..15.
  Inside each block of 32 values, byte j holds value j (low nibble) and value j + 16 (high nibble):
  ggml's Q4_0 / Q4_1 order, so GGUF blocks are copied as they are (a group of 64 or 128 is 2 or 4 such
  blocks sharing a scale). The zero term is folded out: sum(w x) = scale * sum(q x) + zero * sum(x),
  with sum(x) per group computed once per call.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mistral_nemo.model.quant.simd import (
    TILE,
    i8_half_block_dots,
    i8_tile_dots,
    i16_half_block_dots,
    u4_tile_dots,
)

_OPTS = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}
_SERIAL = {"fastmath": True, "cache": True, "nogil": True}  # helpers: no loop of their own
BLOCK = 32  # activation values per scale
ACT_MAX = 32767  # activations are int16: |xq| <= ACT_MAX
_ROWS_PER_TASK = 16  # weight rows per parallel task (each task reuses one scratch row of block sums)


# numba cannot index a tuple of intrinsics at run time: one name each, and a branch per tile size.
_I8T1, _I8T2, _I8T3, _I8T4, _I8T5, _I8T6, _I8T7, _I8T8 = i8_tile_dots
_U4T1, _U4T2, _U4T3, _U4T4, _U4T5, _U4T6, _U4T7, _U4T8 = u4_tile_dots


@njit(**_SERIAL)
def _i8_tile(n, w, w_off, x, x_off, x_stride, s, out, n_blocks):  # fmt: skip
    if n == 1:
        _I8T1(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 2:
        _I8T2(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 3:
        _I8T3(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 4:
        _I8T4(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 5:
        _I8T5(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 6:
        _I8T6(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 7:
        _I8T7(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    else:
        _I8T8(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)


@njit(**_SERIAL)
def _u4_tile(n, w, w_off, x, x_off, x_stride, s, out, n_blocks):  # fmt: skip
    if n == 1:
        _U4T1(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 2:
        _U4T2(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 3:
        _U4T3(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 4:
        _U4T4(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 5:
        _U4T5(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 6:
        _U4T6(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    elif n == 7:
        _U4T7(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)
    else:
        _U4T8(w, w_off, x, x_off, x_stride, s, n_blocks, out, n_blocks)


@njit(**_SERIAL)
def _block_scales(xs: np.ndarray, t0: int, n: int, scale: np.ndarray, row: int, s: np.ndarray) -> None:
    """s[j, b] = xs[t0 + j, b] * scale[row, g(b)] for the n tokens of a tile: each block's float factor."""
    n_blocks = xs.shape[1]
    per_group = n_blocks // scale.shape[1]
    for j in range(n):
        if per_group == 1:
            for b in range(n_blocks):
                s[j, b] = xs[t0 + j, b] * scale[row, b]
        else:
            for g in range(scale.shape[1]):
                ws = scale[row, g]
                for b in range(g * per_group, (g + 1) * per_group):
                    s[j, b] = xs[t0 + j, b] * ws


@njit(**_SERIAL)
def _quantize_token(x: np.ndarray, t: int, xq: np.ndarray, xs: np.ndarray, xsum: np.ndarray) -> None:
    for b in range(xs.shape[1]):
        base = b * BLOCK
        top = np.float32(0.0)
        for k in range(BLOCK):
            top = max(top, abs(x[t, base + k]))
        d = top / np.float32(ACT_MAX)
        inv = np.float32(ACT_MAX) / top if top > 0 else np.float32(0.0)
        total = 0
        for k in range(BLOCK):
            v = np.int16(np.rint(x[t, base + k] * inv))
            xq[t, base + k] = v
            total += v
        xs[t, b] = d
        xsum[t, b] = d * np.float32(total)


@njit(**_SERIAL)
def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [T, K] float32 -> (xq [T, K] int16, xs [T, K / 32] float32, xsum [T, K / 32] float32).

    xq = round(x / xs) with xs = absmax(block) / 32767; xsum = xs * sum(xq) per block (int4's zero term).
    Serial: decode steps quantize a few tokens, where starting threads would cost more.
    """
    n_tok, k_dim = x.shape
    xq = np.empty((n_tok, k_dim), dtype=np.int16)
    xs = np.empty((n_tok, k_dim // BLOCK), dtype=np.float32)
    xsum = np.empty((n_tok, k_dim // BLOCK), dtype=np.float32)
    for t in range(n_tok):
        _quantize_token(x, t, xq, xs, xsum)
    return xq, xs, xsum


@njit(**_OPTS)
def fake_quantize(x: np.ndarray) -> np.ndarray:
    """The float values the kernels see, xq * xs, for every token in parallel (what prefill multiplies
    with the weights)."""
    n_tok, k_dim = x.shape
    xq = np.empty((n_tok, k_dim), dtype=np.int16)
    xs = np.empty((n_tok, k_dim // BLOCK), dtype=np.float32)
    xsum = np.empty((n_tok, k_dim // BLOCK), dtype=np.float32)
    out = np.empty(x.shape, dtype=np.float32)
    for t in prange(n_tok):
        _quantize_token(x, t, xq, xs, xsum)
        for b in range(xs.shape[1]):
            for k in range(BLOCK):
                out[t, b * BLOCK + k] = np.float32(xq[t, b * BLOCK + k]) * xs[t, b]
    return out


@njit(**_SERIAL)
def _half_scaled_sum(isum: np.ndarray, xs: np.ndarray, t: int, scale: np.ndarray, n: int) -> np.float32:
    """sum_b xs[t, b] * (isum[2b] scale[n, 2b] + isum[2b + 1] scale[n, 2b + 1]): a weight scale per 16
    values (Q6_K), two int32 sums per block."""
    acc = np.float32(0.0)
    for b in range(xs.shape[1]):
        part = np.float32(isum[2 * b]) * scale[n, 2 * b] + np.float32(isum[2 * b + 1]) * scale[n, 2 * b + 1]
        acc += part * xs[t, b]
    return acc


@njit(**_SERIAL)
def _widen_int8_row(q: np.ndarray, n: int, w16: np.ndarray) -> None:
    for k in range(w16.shape[0]):
        w16[k] = q[n, k]


@njit(**_OPTS)
def int8_matmul(xq: np.ndarray, xs: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """out[T, N] = dequantized activations @ (scale * q).T; rows in parallel, every token per row.
    Weight groups of any multiple of 32: token tiles (simd.py), each row read once per TILE tokens with
    the same float order for every token. Groups of 16 (Q6_K's): per-block int32 sums, widened once
    per row for several tokens (exact, so every token gets the same sums as alone)."""
    n_rows, k_dim = q.shape
    n_blocks = k_dim // BLOCK
    n_tok = xq.shape[0]
    if scale.shape[1] == 2 * n_blocks:
        _int8_half_matmul(xq, xs, q, scale, out)
        return
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        s = np.empty((TILE, n_blocks), dtype=np.float32)
        acc = np.empty(TILE, dtype=np.float32)
        for n in range(task * _ROWS_PER_TASK, min(n_rows, (task + 1) * _ROWS_PER_TASK)):
            for t0 in range(0, n_tok, TILE):
                tn = min(TILE, n_tok - t0)
                _block_scales(xs, t0, tn, scale, n, s)
                _i8_tile(tn, q, n * k_dim, xq, t0 * k_dim, k_dim, s, acc, n_blocks)
                for j in range(tn):
                    out[t0 + j, n] = acc[j]


@njit(**_OPTS)
def _int8_half_matmul(xq: np.ndarray, xs: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    n_rows, k_dim = q.shape
    n_blocks = k_dim // BLOCK
    n_tok = xq.shape[0]
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        isum = np.empty(2 * n_blocks, dtype=np.int32)
        w16 = np.empty(k_dim if n_tok > 1 else 0, dtype=np.int16)
        for n in range(task * _ROWS_PER_TASK, min(n_rows, (task + 1) * _ROWS_PER_TASK)):
            if n_tok > 1:
                _widen_int8_row(q, n, w16)
            for t in range(n_tok):
                if n_tok > 1:
                    i16_half_block_dots(w16, 0, xq[t], 0, isum, n_blocks)
                else:
                    i8_half_block_dots(q[n], 0, xq[t], 0, isum, n_blocks)
                out[t, n] = _half_scaled_sum(isum, xs, t, scale, n)


@njit(**_SERIAL)
def group_sums(xsum: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-block sums of the activations [T, K / 32] -> per weight group [T, n_groups]."""
    per_group = xsum.shape[1] // n_groups
    if per_group == 1:
        return xsum
    out = np.zeros((xsum.shape[0], n_groups), dtype=np.float32)
    for t in range(xsum.shape[0]):
        for b in range(xsum.shape[1]):
            out[t, b // per_group] += xsum[t, b]
    return out


@njit(**_OPTS)
def int4_matmul(
    xq: np.ndarray,
    xs: np.ndarray,
    xsum: np.ndarray,
    packed: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[T, N] = dequantized activations @ (scale * q + zero).T for nibble-packed q in groups of 32."""
    n_rows, row_bytes = packed.shape
    n_blocks = row_bytes * 2 // BLOCK
    gsum = group_sums(xsum, scale.shape[1])
    n_tok = xq.shape[0]
    k_dim = xq.shape[1]
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        s = np.empty((TILE, n_blocks), dtype=np.float32)
        acc = np.empty(TILE, dtype=np.float32)
        for n in range(task * _ROWS_PER_TASK, min(n_rows, (task + 1) * _ROWS_PER_TASK)):
            for t0 in range(0, n_tok, TILE):
                tn = min(TILE, n_tok - t0)
                _block_scales(xs, t0, tn, scale, n, s)
                _u4_tile(tn, packed, n * row_bytes, xq, t0 * k_dim, k_dim, s, acc, n_blocks)
                for j in range(tn):
                    total = acc[j]
                    for g in range(scale.shape[1]):
                        total += zero[n, g] * gsum[t0 + j, g]
                    out[t0 + j, n] = total


@njit(**_OPTS)
def int8_dequant_rows(q: np.ndarray, scale: np.ndarray, start: int, out: np.ndarray) -> None:
    """out[r, :] = float weights of row start + r (a block of rows for the prefill matmul)."""
    k_dim = q.shape[1]
    n_groups = scale.shape[1]
    gsize = k_dim // n_groups
    for r in prange(out.shape[0]):
        n = start + r
        for g in range(n_groups):
            s = scale[n, g]
            base = g * gsize
            for k in range(gsize):
                out[r, base + k] = np.float32(q[n, base + k]) * s


@njit(**_OPTS)
def int4_dequant_rows(
    packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, start: int, out: np.ndarray
) -> None:
    """As int8_dequant_rows, for nibble-packed int4 (w = scale * q + zero)."""
    n_groups = scale.shape[1]
    blocks_per_group = packed.shape[1] // 16 // n_groups
    for r in prange(out.shape[0]):
        n = start + r
        for blk in range(packed.shape[1] // 16):
            s = scale[n, blk // blocks_per_group]
            z = zero[n, blk // blocks_per_group]
            for j in range(16):
                b = packed[n, blk * 16 + j]
                out[r, blk * BLOCK + j] = np.float32(b & 15) * s + z
                out[r, blk * BLOCK + 16 + j] = np.float32(b >> 4) * s + z
