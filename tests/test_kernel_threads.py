"""The CPU kernels give the same bits on two threads as on one.

Under pytest-xdist each worker runs one thread (tests/parallel.py), so the kernels' parallel loops would
otherwise only ever run on one. A row is always computed whole by one task, so splitting the rows
between threads must not change a bit: the quantized linears over 1-20 tokens (row groups, left-over
rows, every weight format), decode attention, and a fused decode step of the embedded model. In a
fresh process with a two-thread pool, switching numba between one thread and two.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.gguf_fixture import smollm2_gguf_path

SCRIPT = r"""
import sys
import numba
import numpy as np
import torch
from torch import nn

from mistral_nemo.engine.dense_cache import DenseKVCache
from mistral_nemo.model.loading import load
from mistral_nemo.model.quant import Int4Linear, Int8Linear
from mistral_nemo.model.quant.decode_kernels import decode_attention

assert numba.config.NUMBA_NUM_THREADS == 2, numba.config.NUMBA_NUM_THREADS
torch.manual_seed(0)
layers = {
    "int8 per channel": Int8Linear.from_float(nn.Linear(576, 200, bias=False)),
    "int8 g32": Int8Linear.from_float(nn.Linear(576, 200, bias=False), group_size=32),
    "int8 g16": Int8Linear.from_float(nn.Linear(576, 200, bias=False), group_size=16),
    "int4 g32": Int4Linear.from_float(nn.Linear(576, 200, bias=False), group_size=32),
    "int4 g64": Int4Linear.from_float(nn.Linear(576, 200, bias=False), group_size=64),
}
x = torch.randn(20, 576)
rng = np.random.default_rng(0)
q = rng.standard_normal((3, 9 * 64)).astype(np.float32)
keys = rng.standard_normal((256, 3, 64)).astype(np.float32)
values = rng.standard_normal((256, 3, 64)).astype(np.float32)
tables = rng.permutation(16)[:15].astype(np.int32).reshape(3, 5)
lens = np.array([80, 17, 33], dtype=np.int32)
loaded = load(sys.argv[1])
model = loaded.model
assert model.fused_decoder is not None


def outputs() -> list:
    got = [layer(x[:n]) for layer in layers.values() for n in (1, 5, 20)]
    out = np.empty_like(q)
    decode_attention(q, keys, values, tables, 16, lens, 9, out)
    got.append(torch.from_numpy(out))
    cache = DenseKVCache(model.args, 24, dtype=torch.float32)
    ids = torch.arange(1000, 1024)
    with torch.inference_mode():
        model(ids[:20], torch.arange(20), cache)
        cache.advance(20)
        for i in range(20, 24):  # decode steps: the fused path
            got.append(model(ids[i : i + 1], torch.tensor([i]), cache)[0])
            cache.advance(1)
    return got


numba.set_num_threads(1)
one = outputs()
numba.set_num_threads(2)
two = outputs()
names = [f"{name} x{n}" for name in layers for n in (1, 5, 20)]
names += ["attention"] + [f"step {i}" for i in range(4)]
bad = [name for name, a, b in zip(names, one, two, strict=True) if not torch.equal(a, b)]
print("differ:", bad)
sys.exit(1 if bad else 0)
"""


@pytest.mark.serial  # two threads of its own: alone, so it neither slows nor is slowed by another test
def test_two_threads_give_the_bits_of_one() -> None:
    env = {
        **os.environ,
        "NUMBA_NUM_THREADS": "2",
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(smollm2_gguf_path())],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "differ: []" in run.stdout
