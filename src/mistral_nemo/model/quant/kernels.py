"""Numba CPU kernels for weight-only int8 / int4 linears: fused dequantize + GEMV / small GEMM.

Decode on CPU is memory-bound, so the kernels read each weight byte once per call and never
materialise a float copy of the matrix: the scale is applied once per group to a float partial sum.
PyTorch's own CPU weight-only kernels were measured 5-9x slower than an fp32 linear at batch 1 on
AVX2 machines; these run several times faster than fp32 (see bench/quant_linear.py).

Layouts (all C-contiguous, rows = output features):
- int8: q [N, K] int8, scale [N, K // G] float32; w = scale * q. G = K is per-channel, G = 32 is Q8_0.
- int4: packed [N, K // 2] uint8, scale, zero [N, K // G] float32; w = scale * q + zero, q in 0..15.
  Inside each group of G values, byte j holds value j (low nibble) and value j + G/2 (high nibble):
  ggml's Q4_0 / Q4_1 order, so GGUF blocks are copied as they are, and the two halves are two
  contiguous, vectorisable runs. The zero term is folded out: sum(w x) = scale * sum(q x) + zero * sum(x),
  with sum(x) per group computed once per call and shared by all rows.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_OPTS = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}
_SERIAL = {"fastmath": True, "cache": True, "nogil": True}  # dispatchers and helpers: no loop of their own


@njit(**_SERIAL)
def int8_matmul(x: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """out[T, N] = x[T, K] @ (scale * q).T, rows in parallel (GEMV at one token, else a small GEMM)."""
    if x.shape[0] == 1:
        _int8_gemv(x, q, scale, out)
    else:
        _int8_small_gemm(x, q, scale, out)


@njit(**_OPTS)
def _int8_gemv(x: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """One token: each weight byte is converted and used once; scalars only in the loop."""
    n_rows, k_dim = q.shape
    n_groups = scale.shape[1]
    gsize = k_dim // n_groups
    for n in prange(n_rows):
        for t in range(x.shape[0]):
            acc = np.float32(0.0)
            for g in range(n_groups):
                base = g * gsize
                part = np.float32(0.0)
                for k in range(gsize):  # range(base, ...) defeats LLVM's vectoriser (10x slower)
                    part += np.float32(q[n, base + k]) * x[t, base + k]
                acc += part * scale[n, g]
            out[t, n] = acc


_ROWS_PER_TASK = 16  # rows per parallel task in the small GEMMs (each task reuses one scratch row)


@njit(**_OPTS)
def _int8_small_gemm(x: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """Several tokens: dequantize each weight row once into an L1 scratch row, then dot it with every
    token (converting the bytes once per row instead of once per token: 1.1-1.8x at 4-16 tokens)."""
    n_rows, k_dim = q.shape
    n_groups = scale.shape[1]
    gsize = k_dim // n_groups
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        w = np.empty(k_dim, dtype=np.float32)
        for n in range(task * _ROWS_PER_TASK, min(n_rows, (task + 1) * _ROWS_PER_TASK)):
            for g in range(n_groups):
                s = scale[n, g]
                base = g * gsize
                for k in range(gsize):
                    w[base + k] = np.float32(q[n, base + k]) * s
            _dot_tokens(w, x, out, n)


@njit(**_SERIAL)
def _dot_tokens(w: np.ndarray, x: np.ndarray, out: np.ndarray, n: int) -> None:
    """out[t, n] = w . x[t] for every token, four tokens per pass (each w[k] loaded once for four)."""
    n_tok, k_dim = x.shape
    t = 0
    while t + 4 <= n_tok:
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for k in range(k_dim):
            wk = w[k]
            a0 += wk * x[t, k]
            a1 += wk * x[t + 1, k]
            a2 += wk * x[t + 2, k]
            a3 += wk * x[t + 3, k]
        out[t, n] = a0
        out[t + 1, n] = a1
        out[t + 2, n] = a2
        out[t + 3, n] = a3
        t += 4
    while t < n_tok:
        acc = np.float32(0.0)
        for k in range(k_dim):
            acc += w[k] * x[t, k]
        out[t, n] = acc
        t += 1


@njit(**_OPTS)
def group_sums(x: np.ndarray, n_groups: int) -> np.ndarray:
    """sum(x[t, group]) for each token and group: the zero-point term of int4 shared by all rows."""
    n_tok, k_dim = x.shape
    gsize = k_dim // n_groups
    sums = np.empty((n_tok, n_groups), dtype=np.float32)
    for t in prange(n_tok):
        for g in range(n_groups):
            s = np.float32(0.0)
            base = g * gsize
            for k in range(gsize):
                s += x[t, base + k]
            sums[t, g] = s
    return sums


@njit(**_SERIAL)
def int4_matmul(
    x: np.ndarray, xsum: np.ndarray, packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, out: np.ndarray
) -> None:
    """out[T, N] = x @ (scale * q + zero).T for nibble-packed q; xsum from group_sums (GEMV only)."""
    if x.shape[0] == 1:
        _int4_gemv(x, xsum, packed, scale, zero, out)
    else:
        _int4_small_gemm(x, packed, scale, zero, out)


@njit(**_OPTS)
def _int4_small_gemm(
    x: np.ndarray, packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, out: np.ndarray
) -> None:
    """Several tokens: dequantize each row once into an L1 scratch row, then dot it with every token."""
    n_rows, row_bytes = packed.shape
    n_groups = scale.shape[1]
    half = row_bytes // n_groups
    for task in prange((n_rows + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        w = np.empty(2 * row_bytes, dtype=np.float32)
        for n in range(task * _ROWS_PER_TASK, min(n_rows, (task + 1) * _ROWS_PER_TASK)):
            for g in range(n_groups):
                s = scale[n, g]
                z = zero[n, g]
                pb = g * half
                for j in range(half):
                    fb = np.float32(packed[n, pb + j])
                    hi = np.floor(fb * np.float32(0.0625))
                    w[2 * pb + j] = (fb - np.float32(16.0) * hi) * s + z
                    w[2 * pb + half + j] = hi * s + z
            _dot_tokens(w, x, out, n)


@njit(**_OPTS)
def _int4_gemv(
    x: np.ndarray, xsum: np.ndarray, packed: np.ndarray, scale: np.ndarray, zero: np.ndarray, out: np.ndarray
) -> None:
    """One token.

    With byte b = lo + 16 hi: lo * xa + hi * xb = b * xa + hi * (xb - 16 xa), so the activations are
    rearranged once per call (xa, xd, shared by all rows) and each byte costs one float conversion, one
    truncation and two FMAs. Each row's group scales are spread over a per-thread buffer so the inner
    loop runs the whole row: per-group loops of 16 bytes (groups of 32) are too short for LLVM to
    vectorise (measured 1.25-1.35x faster than per-group sums, 1 thread, SmolLM2 and NeMo shapes).
    """
    n_rows, row_bytes = packed.shape
    n_groups = scale.shape[1]
    n_tok = x.shape[0]
    half = row_bytes // n_groups  # bytes per group = G / 2
    xa = np.empty((n_tok, row_bytes), dtype=np.float32)
    xd = np.empty((n_tok, row_bytes), dtype=np.float32)
    for t in range(n_tok):
        for g in range(n_groups):
            for j in range(half):
                lo = x[t, 2 * g * half + j]
                xa[t, g * half + j] = lo
                xd[t, g * half + j] = x[t, 2 * g * half + half + j] - np.float32(16.0) * lo
    rows_per_task = 64
    for task in prange((n_rows + rows_per_task - 1) // rows_per_task):
        spread = np.empty(row_bytes, dtype=np.float32)
        for n in range(task * rows_per_task, min(n_rows, (task + 1) * rows_per_task)):
            for g in range(n_groups):
                s = scale[n, g]
                for j in range(half):
                    spread[g * half + j] = s
            for t in range(n_tok):
                acc = np.float32(0.0)
                for k in range(row_bytes):
                    fb = np.float32(packed[n, k])
                    # floor by float ops (exact for 0..255): numba widens `b >> 4` to int64, and int64
                    # -> float has no AVX2 instruction; this form vectorises
                    hi = np.floor(fb * np.float32(0.0625))
                    acc += (fb * xa[t, k] + hi * xd[t, k]) * spread[k]
                zsum = np.float32(0.0)
                for g in range(n_groups):
                    zsum += zero[n, g] * xsum[t, g]
                out[t, n] = acc + zsum


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
    half = packed.shape[1] // n_groups
    for r in prange(out.shape[0]):
        n = start + r
        for g in range(n_groups):
            s = scale[n, g]
            z = zero[n, g]
            pb = g * half
            for j in range(half):
                b = packed[n, pb + j]
                out[r, 2 * pb + j] = np.float32(b & 15) * s + z
                out[r, 2 * pb + half + j] = np.float32(b >> 4) * s + z
