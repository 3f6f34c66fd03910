"""`--tensor-parallel-size N` for the CLI: whether this process is rank 0 or a torchrun worker, and
rank 0's model + engine built over the group (torch is imported only when the flag is used)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mistral_nemo.engine.config import EngineConfig
    from mistral_nemo.engine.distributed_launch import TensorParallelGroup
    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.model.loading import LoadedModel


def requested_size(flag: int | None) -> int:
    """The flag, else torchrun's WORLD_SIZE, else 1."""
    if flag is not None:
        return flag
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class TensorParallelLaunch:
    size: int
    device: str | None
    options: dict[str, Any]  # load() keywords
    group: TensorParallelGroup | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TensorParallelLaunch | None:
        """None for one process; refuses what cannot run tensor-parallel yet."""
        size = requested_size(getattr(args, "tensor_parallel_size", None))
        if size == 1:
            return None
        if getattr(args, "lora", None):
            raise ValueError(
                "--lora cannot be combined with --tensor-parallel-size yet; merge the adapter first"
            )
        import torch

        from mistral_nemo.entrypoints.model_options import apply_threads

        apply_threads(getattr(args, "threads", None))
        dtype = getattr(torch, args.dtype) if getattr(args, "dtype", None) else None
        options = {"path": args.model, "dtype": dtype, "quantization": getattr(args, "quantization", "auto")}
        return cls(size, getattr(args, "device", None), options)

    @property
    def is_worker(self) -> bool:
        """True on torchrun's ranks other than 0 (they run steps, not the server)."""
        return int(os.environ.get("RANK", "0")) != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1

    def start(self) -> TensorParallelGroup:
        from mistral_nemo.engine.distributed_launch import TensorParallelGroup

        if self.group is None:
            self.group = TensorParallelGroup.start(self.size, self.device, **self.options)
        return self.group

    def run_worker(self) -> None:
        self.start().run_worker()

    def build(
        self, config: EngineConfig, on_rank_lost: Callable[[str], None]
    ) -> tuple[LoadedModel, LLMEngine]:
        """Rank 0: start (or join) the group, load this rank's part, build and attach the engine."""
        from mistral_nemo.engine.llm_engine import LLMEngine

        started = time.perf_counter()
        group = self.start()
        loaded = group.load()
        engine = LLMEngine(loaded, config)
        group.attach(engine, on_rank_lost)
        print(
            f"Loaded {loaded.name} ({loaded.format}, {loaded.args.num_parameters() / 1e6:,.0f}M parameters) "
            f"over {self.size} tensor-parallel ranks in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        return loaded, engine

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
