"""How fast the quantized linears stream weights that are not in cache (batch-1 decode reads every weight
once per token, so this bounds decode), against a plain parallel read of the same bytes.

For each shape and format, enough copies of the weight to exceed the last-level cache are multiplied
in turn with one token (and with 5: speculative verification), best of 5 rounds; GB/s counts weights,
scales and zeros. `read_GB_s` is a parallel integer sum over a 256 MiB array, the machine's ceiling.
Prints one JSON line. Usage: python bench/weight_stream.py [--threads 2] [--mib 192]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import numba
import numpy as np
from numba import njit, prange

from mistral_nemo.model.quant import kernels
from mistral_nemo.model.quant.simd import host_isa

# (out, in): SmolLM2-135M's FFN up and down, NeMo-12B's attention output and FFN down (a slice of rows)
SHAPES = [(1536, 576), (576, 1536), (5120, 4096), (2048, 14336)]


@njit(parallel=True)
def _parallel_sum(a: np.ndarray) -> int:
    total = 0
    for i in prange(a.shape[0]):
        total += a[i]
    return total


def _read_gb_s() -> float:
    data = np.ones(64 << 20, dtype=np.int32)
    _parallel_sum(data)
    best = min(_timed(lambda: _parallel_sum(data)) for _ in range(5))
    return data.nbytes / best / 1e9


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _copies(fmt: str, out_f: int, in_f: int, mib: int, rng: np.random.Generator) -> list[tuple]:
    groups = {"int8-channel": 1, "int8-g32": in_f // 32, "int4-g32": in_f // 32}[fmt]
    one = out_f * in_f // (2 if fmt.startswith("int4") else 1) + out_f * groups * 4 * (
        2 if fmt.startswith("int4") else 1
    )
    n = max(2, (mib << 20) // one)
    made = []
    for _ in range(n):
        scale = rng.uniform(1e-3, 1e-2, (out_f, groups)).astype(np.float32)
        if fmt.startswith("int4"):
            packed = rng.integers(0, 256, (out_f, in_f // 2), dtype=np.uint8)
            made.append((packed, scale, rng.uniform(-1e-2, 0, (out_f, groups)).astype(np.float32)))
        else:
            made.append((rng.integers(-127, 128, (out_f, in_f), dtype=np.int8), scale))
    return made


def _stream(fmt: str, out_f: int, in_f: int, tokens: int, mib: int) -> float:
    rng = np.random.default_rng(0)
    weights = _copies(fmt, out_f, in_f, mib, rng)
    xq, xs, xsum = kernels.quantize_activations(rng.standard_normal((tokens, in_f)).astype(np.float32))
    out = np.empty((tokens, out_f), dtype=np.float32)

    def run() -> None:
        for w in weights:
            if fmt.startswith("int4"):
                kernels.int4_matmul(xq, xs, xsum, *w, out)
            else:
                kernels.int8_matmul(xq, xs, *w, out)

    run()
    best = min(_timed(run) for _ in range(5))
    return sum(a.nbytes for w in weights for a in w) / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mib", type=int, default=192, help="weight bytes cycled through, above the LLC")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    rows = []
    for out_f, in_f in SHAPES:
        for fmt in ("int8-channel", "int8-g32", "int4-g32"):
            row = {"shape": [out_f, in_f], "format": fmt}
            for tokens in (1, 5):
                row[f"t{tokens}_GB_s"] = round(_stream(fmt, out_f, in_f, tokens, args.mib), 2)
            rows.append(row)
    result = {
        "bench": "weight_stream",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "isa": host_isa(),
        "threads": args.threads,
        "read_GB_s": round(_read_gb_s(), 2),
        "rows": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
