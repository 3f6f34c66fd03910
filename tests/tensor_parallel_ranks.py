"""Rank processes for the tensor-parallel tests (spawned: importable by name, no test collected here)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from mistral_nemo.model.loading import load


def rank_logits(
    rank: int, world: int, port: int, path: str, modes: list[str], ids: list[int], out: Any
) -> None:
    """Load this rank's part of `path` in each quantization mode; rank 0 puts {mode: logits} in `out`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for mode in modes:
            loaded = load(path, device="cpu", quantization=mode, tensor_parallel=(rank, world))
            results[mode] = loaded.model.logits(torch.tensor(ids)).tolist()
        if rank == 0:
            out.put(results)
    finally:
        dist.destroy_process_group()
