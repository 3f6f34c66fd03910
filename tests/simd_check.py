"""Checks simd.py's block dot products against numpy's int64 arithmetic; run as a script so that each
instruction set is compiled in a process of its own (MISTRAL_NEMO_SIMD picks it at import).

    MISTRAL_NEMO_SIMD=avx2 NUMBA_CACHE_DIR=/tmp/x python -m tests.simd_check   # prints "ok <isa>"
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mistral_nemo.model.quant import kernels, simd


@njit
def _run_i8(w: np.ndarray, x: np.ndarray, out: np.ndarray, halves: bool) -> None:
    for r in range(w.shape[0]):
        if halves:
            simd.i8_half_block_dots(w[r], 0, x[r], 0, out[r], x.shape[1] // 32)
        else:
            simd.i8_block_dots(w[r], 0, x[r], 0, out[r], x.shape[1] // 32)


@njit
def _run_i16(w: np.ndarray, x: np.ndarray, out: np.ndarray, halves: bool) -> None:
    for r in range(w.shape[0]):
        if halves:
            simd.i16_half_block_dots(w[r], 0, x[r], 0, out[r], x.shape[1] // 32)
        else:
            simd.i16_block_dots(w[r], 0, x[r], 0, out[r], x.shape[1] // 32)


@njit
def _run_u4(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    for r in range(w.shape[0]):
        simd.u4_block_dots(w[r], 0, x[r], 0, out[r], x.shape[1] // 32)


@njit
def _widen_u4(w: np.ndarray, out: np.ndarray) -> None:
    for r in range(w.shape[0]):
        simd.u4_widen(w[r], 0, out[r], out.shape[1] // 32)


def _extremes(
    rng: np.random.Generator, shape: tuple[int, int], low: int, high: int, dtype: type
) -> np.ndarray:
    """Random values with the range's ends over-represented (overflow and sign edge cases)."""
    values = rng.integers(low, high + 1, shape).astype(dtype)
    edge = rng.random(shape) < 0.2
    values[edge] = rng.choice(np.array([low, high, 0], dtype=dtype), size=int(edge.sum()))
    return values


def float_chain(isum: np.ndarray, xs: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """The row groups' stated float order in numpy: for every token and row, acc = fma(float32(isum_b),
    float32(xs_b * ws_b), acc) over blocks b in order. The fma through float64, where the product of
    two float32 is exact (a second rounding decides only on exact float32 midpoints, odds ~2^-29).
    isum [T, R, B] int64 exact, xs [T, B], ws [R, B] -> [T, R]."""
    acc = np.zeros(isum.shape[:2], np.float32)
    for b in range(isum.shape[2]):
        scale = xs[:, None, b].astype(np.float32) * ws[None, :, b].astype(np.float32)
        exact = isum[:, :, b].astype(np.float32).astype(np.float64) * scale.astype(np.float64)
        acc = (exact + acc.astype(np.float64)).astype(np.float32)
    return acc


def check_rows16() -> list[str]:
    """Row groups (16 weight rows x 1-8 tokens) equal the float chain of exact block sums, bit for bit."""
    rng = np.random.default_rng(1)
    problems = []
    for n_blocks in (1, 2, 5, 160):
        k = 32 * n_blocks
        w8 = _extremes(rng, (16, k), -128, 127, np.int8)
        packed = rng.integers(0, 256, (16, k // 2), dtype=np.uint8)
        blocks = packed.reshape(16, n_blocks, 16)
        nibbles = np.concatenate([blocks & 15, blocks >> 4], -1).reshape(16, k)
        ws = rng.uniform(1e-3, 1e-1, (16, n_blocks)).astype(np.float32)
        no_zeros = np.zeros_like(ws)
        for tile in range(1, simd.TILE + 1):
            x = _extremes(rng, (tile, k), -32767, 32767, np.int16)
            xs = rng.uniform(1e-6, 1e-4, (tile, n_blocks)).astype(np.float32)
            for name, w, values, u4 in (("i8", w8, w8, False), ("u4", packed, nibbles, True)):
                prod = values.astype(np.int64)[None] * x.astype(np.int64)[:, None]
                want = float_chain(prod.reshape(tile, 16, n_blocks, 32).sum(-1), xs, ws)
                out = np.full((simd.TILE, 16), np.nan, np.float32)
                head = (tile, w, 0, w.shape[1], x, 0, k, xs, 0, ws, 0, n_blocks)
                if u4:  # zero term 0 (test_quant covers it through Int4Linear)
                    kernels.u4_row_group(*head, no_zeros, xs, 0, out, 0, 16, n_blocks)
                else:
                    kernels.i8_row_group(*head, out, 0, 16, n_blocks)
                if not np.array_equal(out[:tile], want):
                    problems.append(f"{name}_rows16 tile={tile} n_blocks={n_blocks}")
    return problems


def check(rows: int = 3) -> list[str]:
    """Mismatch descriptions for block counts covering the 8-block chunks and every leftover count."""
    rng = np.random.default_rng(0)
    problems = []
    for n_blocks in [*range(1, 20), 24, 160]:
        k = 32 * n_blocks
        x = _extremes(rng, (rows, k), -32767, 32767, np.int16)
        w = _extremes(rng, (rows, k), -128, 127, np.int8)
        products = w.astype(np.int64) * x.astype(np.int64)
        for halves in (False, True):
            want = products.reshape(rows, -1, 16 if halves else 32).sum(-1)
            for name, run, weights in (("i8", _run_i8, w), ("i16", _run_i16, w.astype(np.int16))):
                out = np.zeros((rows, n_blocks * (2 if halves else 1)), np.int32)
                run(weights, x, out, halves)
                if not np.array_equal(out, want):
                    problems.append(f"{name} halves={halves} n_blocks={n_blocks}")
        packed = rng.integers(0, 256, (rows, k // 2), dtype=np.uint8)
        blocks = packed.reshape(rows, n_blocks, 16)
        nibbles = np.concatenate([blocks & 15, blocks >> 4], -1).reshape(rows, k)
        out = np.zeros((rows, n_blocks), np.int32)
        _run_u4(packed, x, out)
        want = (nibbles.astype(np.int64) * x).reshape(rows, n_blocks, 32).sum(-1)
        if not np.array_equal(out, want):
            problems.append(f"u4 n_blocks={n_blocks}")
        widened = np.zeros((rows, k), np.int16)
        _widen_u4(packed, widened)
        if not np.array_equal(widened, nibbles):
            problems.append(f"u4_widen n_blocks={n_blocks}")
    return problems + check_rows16()


if __name__ == "__main__":
    found = check()
    print(f"ok {simd.ISA}" if not found else f"mismatch {simd.ISA}: {'; '.join(found)}")
