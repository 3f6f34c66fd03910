"""Dequantize every tensor of the SmolLM2-135M Q4_1 GGUF with ours and with gguf's numpy reference.

Prints one JSON line. Usage: python bench/gguf_dequant.py [path.gguf] (default: the test fixture's file).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.gguf_fixture when run as a script

from mistral_nemo.model.gguf_quants import dequantize
from tests.gguf_fixture import fetch_smollm2_gguf


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else fetch_smollm2_gguf()
    tensors = gguf.GGUFReader(path).tensors
    shapes = [tuple(int(d) for d in reversed(t.shape.tolist())) for t in tensors]
    # Touch the mmap once so neither side pays the page faults.
    for t in tensors:
        np.asarray(t.data).sum()

    def ours() -> None:
        for t, shape in zip(tensors, shapes, strict=True):
            dequantize(t.data, t.tensor_type, shape)

    def reference() -> None:
        for t in tensors:
            gguf.quants.dequantize(t.data, t.tensor_type)

    ours()  # warm-up (torch kernel dispatch, allocator)
    t_ours, t_ref = best_of(ours, 3), best_of(reference, 3)
    record = {
        "bench": "gguf_dequant",
        "file": path.name,
        "tensors": len(tensors),
        "types": dict(Counter(t.tensor_type.name for t in tensors)),
        "elements": int(sum(int(t.n_elements) for t in tensors)),
        "torch_threads": torch.get_num_threads(),
        "ours_s": round(t_ours, 4),
        "gguf_numpy_s": round(t_ref, 4),
        "speedup": round(t_ref / t_ours, 2),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
