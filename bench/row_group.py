"""One-token row groups (batch-1 decode): the transposing kernel vs the one without the transpose.

Runs 16-row groups of a 256 x K int8 / int4 (G = 32) weight against one token, weights resident in
cache, on one thread; prints best-of-7 thread-CPU microseconds per 256-row call and GMAC/s for both
variants, and checks that their outputs are the same bits. Usage: python bench/row_group.py [--k 2304]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from numba import njit

from mistral_nemo.model.quant.simd import GROUP_ROWS, host_isa, rows16_intrinsic

ROWS = 256


def _looped(kernel: Callable) -> Callable:
    """reps x the 256 rows' groups; scales [ROWS, n_blocks] (G = 32). `extra`: u4's (zeros, group sums,
    offset) between the scales and the output, empty for i8."""

    @njit(nogil=True)
    def run(reps, w, stride, x, xs, ws, out, n_blocks, *extra):  # type: ignore[no-untyped-def]
        for _ in range(reps):
            for g in range(ROWS // GROUP_ROWS):
                first = g * GROUP_ROWS
                kernel(w, first * stride, stride, x, 0, 0, xs, 0, ws, first * n_blocks, n_blocks,
                       *extra, out, 0, 0, n_blocks)  # fmt: skip

    return run


def bench(weights: str, k: int, reps: int = 200) -> dict:
    rng = np.random.default_rng(0)
    n_blocks = k // 32
    if weights == "i8":
        w = rng.integers(-128, 128, (ROWS, k), dtype=np.int8)
    else:
        w = rng.integers(0, 256, (ROWS, k // 2), dtype=np.uint8)
    x = rng.integers(-32767, 32768, (1, k), dtype=np.int16)
    xs = rng.uniform(1e-6, 1e-4, (1, n_blocks)).astype(np.float32)
    ws = rng.uniform(1e-3, 1e-1, (ROWS, n_blocks)).astype(np.float32)
    extra = () if weights == "i8" else (np.zeros_like(ws), xs, 0)  # zero term 0
    runs = {
        name: _looped(rows16_intrinsic(weights, 1, transpose=flag))
        for name, flag in (("transpose", True), ("no_transpose", False))
    }
    outs = {}
    for name, run in runs.items():
        outs[name] = np.zeros(GROUP_ROWS, np.float32)
        run(1, w, w.shape[1], x, xs, ws, outs[name], n_blocks, *extra)
    if not np.array_equal(outs["transpose"], outs["no_transpose"]):
        raise AssertionError(f"{weights}: the two kernels disagree")
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(7):  # alternated, so both see the same machine load
        for name, run in runs.items():
            start = time.thread_time()
            run(reps, w, w.shape[1], x, xs, ws, outs[name], n_blocks, *extra)
            best[name] = min(best[name], time.thread_time() - start)
    row: dict = {"weights": weights, "shape": [ROWS, k]}
    for name, sec in best.items():
        row[f"{name}_us"] = round(sec / reps * 1e6, 2)
        row[f"{name}_GMACs"] = round(ROWS * k * reps / sec / 1e9, 1)
    row["speed_up"] = round(best["transpose"] / best["no_transpose"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=2304, help="input width, a multiple of 32")
    args = parser.parse_args()
    print(json.dumps({"isa": host_isa(), "rows": [bench(w, args.k) for w in ("i8", "u4")]}))


if __name__ == "__main__":
    main()
