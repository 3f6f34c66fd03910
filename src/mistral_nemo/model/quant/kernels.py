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
depend on the other tokens in its batch. Up to small-batch tokens (decode, speculative verification,
small batches), weight groups of any multiple of 32 run one kernel for 1 or many tokens: 16 rows at
a time with the rows in the vector lanes, each block read and transposed once per 8 tokens (simd.py),
exact int32 block sums, then per row and token the float chain acc = fma(isum_b, xs_b * ws_b, acc) over
the blocks in order (row_chain states it in plain code and computes the rows left over from groups
of 16), so a token gets the same bits alone or with up to small-batch others. Prefill multiplies the
dequantized weights with the same quantized activations (`fake_quantize`) through torch's GEMM.

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
    GROUP_ROWS,
    TILE,
    fma32,
    i8_block_dots,
    i8_half_block_dots,
    i8_rows16,
    i16_half_block_dots,
    u4_block_dots,
    u4_rows16,
)

_OPTS = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}
_SERIAL = {"fastmath": True, "cache": True, "nogil": True}  # helpers: no loop of their own
BLOCK = 32  # activation values per scale
ACT_MAX = 32767  # activations are int16: |xq| <= ACT_MAX
_ROWS_PER_TASK = 16  # weight rows per parallel task (each task reuses one scratch row of block sums)


# numba cannot index a tuple of intrinsics at run time: one name each, and a branch per tile size.
_I8R1, _I8R2, _I8R3, _I8R4, _I8R5, _I8R6, _I8R7, _I8R8 = i8_rows16
_U4R1, _U4R2, _U4R3, _U4R4, _U4R5, _U4R6, _U4R7, _U4R8 = u4_rows16


# i8_row_group(n, *args) / u4_row_group(n, *args): simd.i8_rows16[n - 1](*args) / u4_rows16[n - 1](*args),
# for 1 <= n <= TILE.
# No fastmath here: numba would mark the intrinsics' float operations fast, free to be reordered.
_EXACT = {"cache": True, "nogil": True}


@njit(**_EXACT)
def i8_row_group(n, *args):
    if n == 1:
        _I8R1(*args)
    elif n == 2:
        _I8R2(*args)
    elif n == 3:
        _I8R3(*args)
    elif n == 4:
        _I8R4(*args)
    elif n == 5:
        _I8R5(*args)
    elif n == 6:
        _I8R6(*args)
    elif n == 7:
        _I8R7(*args)
    else:
        _I8R8(*args)


@njit(**_EXACT)
def u4_row_group(n, *args):
    if n == 1:
        _U4R1(*args)
    elif n == 2:
        _U4R2(*args)
    elif n == 3:
        _U4R3(*args)
    elif n == 4:
        _U4R4(*args)
    elif n == 5:
        _U4R5(*args)
    elif n == 6:
        _U4R6(*args)
    elif n == 7:
        _U4R7(*args)
    else:
        _U4R8(*args)


@njit(**_EXACT)  # no fastmath: this order of float operations is the contract
def row_chain(isum: np.ndarray, xs: np.ndarray, t: int, scale: np.ndarray, n: int) -> np.float32:
    """acc = fma(float(isum[b]), xs[t, b] * scale[n, g(b)], acc) over blocks b in order: what the row-group
    kernels (simd.py) compute in their lanes, from exact per-block sums, so every path agrees bit for bit."""
    per_group = isum.shape[0] // scale.shape[1]
    acc = np.float32(0.0)
    for b in range(isum.shape[0]):
        acc = fma32(np.float32(isum[b]), xs[t, b] * scale[n, b // per_group], acc)
    return acc


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
    """out[T, N] = dequantized activations @ (scale * q).T. Weight groups of any multiple of 32: groups of
    16 rows in parallel, each block of a group read once per TILE tokens (simd.py); rows left over
    from the groups by per-block sums and row_chain, the same float chain. Groups of 16 (Q6_K's):
    per-block sums of each half block, widened once per row for several tokens."""
    n_rows, k_dim = q.shape
    n_blocks = k_dim // BLOCK
    if scale.shape[1] == 2 * n_blocks:
        _int8_half_matmul(xq, xs, q, scale, out)
        return
    for grp in prange(n_rows // GROUP_ROWS):
        _int8_row_group_tiles(q, scale, xq, xs, grp * GROUP_ROWS, out)
    _int8_left_over_rows(q, scale, xq, xs, out)


@njit(**_EXACT)
def _int8_row_group_tiles(
    q: np.ndarray, scale: np.ndarray, xq: np.ndarray, xs: np.ndarray, first: int, out: np.ndarray
) -> None:
    """Rows first .. first + 15 of int8_matmul for every token, TILE tokens a call: one parallel task.
    (Running wq/wk/wv's tasks in one parallel loop was measured slower on 2 cores than one loop each.)"""
    n_tok, k_dim = xq.shape
    n_blocks, n_groups, stride = k_dim // BLOCK, scale.shape[1], out.shape[1]
    for t0 in range(0, n_tok, TILE):
        i8_row_group(
            min(TILE, n_tok - t0), q, first * k_dim, k_dim, xq, t0 * k_dim, k_dim, xs, t0 * n_blocks,
            scale, first * n_groups, n_groups, out, t0 * stride + first, stride, n_blocks,
        )  # fmt: skip


@njit(**_EXACT)
def _int8_left_over_rows(
    q: np.ndarray, scale: np.ndarray, xq: np.ndarray, xs: np.ndarray, out: np.ndarray
) -> None:
    """The rows after the last whole group of 16, by per-block sums and row_chain (the same chain)."""
    n_rows, k_dim = q.shape
    n_blocks = k_dim // BLOCK
    isum = np.empty(n_blocks, dtype=np.int32)
    for n in range(n_rows - n_rows % GROUP_ROWS, n_rows):
        for t in range(xq.shape[0]):
            i8_block_dots(q[n], 0, xq[t], 0, isum, n_blocks)
            out[t, n] = row_chain(isum, xs, t, scale, n)


@njit(**_OPTS)
def _int8_half_matmul(
    xq: np.ndarray, xs: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray
) -> None:
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
    gsum = group_sums(xsum, scale.shape[1])
    for grp in prange(packed.shape[0] // GROUP_ROWS):
        _int4_row_group_tiles(packed, scale, zero, gsum, xq, xs, grp * GROUP_ROWS, out)
    _int4_left_over_rows(packed, scale, zero, gsum, xq, xs, out)


@njit(**_EXACT)
def _int4_row_group_tiles(
    packed: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    gsum: np.ndarray,
    xq: np.ndarray,
    xs: np.ndarray,
    first: int,
    out: np.ndarray,
) -> None:
    """_int8_row_group_tiles for int4; gsum: the activations' group sums [T, n_groups] (group_sums)."""
    n_tok, k_dim = xq.shape
    row_bytes = packed.shape[1]
    n_blocks, n_groups, stride = k_dim // BLOCK, scale.shape[1], out.shape[1]
    for t0 in range(0, n_tok, TILE):
        u4_row_group(
            min(TILE, n_tok - t0), packed, first * row_bytes, row_bytes, xq, t0 * k_dim, k_dim, xs,
            t0 * n_blocks, scale, first * n_groups, n_groups, zero, gsum, t0 * n_groups, out,
            t0 * stride + first, stride, n_blocks,
        )  # fmt: skip


@njit(**_EXACT)
def _int4_left_over_rows(
    packed: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    gsum: np.ndarray,
    xq: np.ndarray,
    xs: np.ndarray,
    out: np.ndarray,
) -> None:
    n_rows = packed.shape[0]
    n_blocks = packed.shape[1] * 2 // BLOCK
    isum = np.empty(n_blocks, dtype=np.int32)
    for n in range(n_rows - n_rows % GROUP_ROWS, n_rows):
        for t in range(xq.shape[0]):
            u4_block_dots(packed[n], 0, xq[t], 0, isum, n_blocks)
            out[t, n] = _zero_term(row_chain(isum, xs, t, scale, n), zero, n, gsum, t)


@njit(**_EXACT)  # no fastmath: one order for every path
def _zero_term(total: np.float32, zero: np.ndarray, n: int, gsum: np.ndarray, t: int) -> np.float32:
    """int4's zero term: + sum_g zero[n, g] * gsum[t, g], in group order, each step one fma."""
    for g in range(zero.shape[1]):
        total = fma32(zero[n, g], gsum[t, g], total)
    return total


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
