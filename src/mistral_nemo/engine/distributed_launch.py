"""Starting a tensor-parallel group: ranks 1..N-1 as child processes (or torchrun's), rank 0 here.

`TensorParallelGroup.start(size, ...)` either joins the group torchrun made (RANK / WORLD_SIZE in
the environment) or spawns the other ranks itself (torch.multiprocessing, a free loopback port).
Every rank loads only its part of the weights. Rank 0 then builds the engine and `attach`es it:
the cache shape goes to the other ranks and the engine's runner becomes the broadcasting one.
A monitor thread watches spawned ranks, so a killed rank is noticed even while the engine idles.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mistral_nemo.engine.distributed_runner import CacheShape, TensorParallelRunner, broadcast, worker_loop
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.model.loading import LoadedModel, load
from mistral_nemo.model.tensor_parallel import TensorParallelError

# Idle ranks wait in a broadcast for the next step; a dead peer closes its sockets (an error at
# once), so this only bounds a peer that hangs without dying.
_COLLECTIVE_TIMEOUT = timedelta(days=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend(device: str | None) -> str:
    cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    return "nccl" if cuda else "gloo"


def _rank_device(device: str | None, local_rank: int) -> str | None:
    """NCCL ranks each take their own GPU (cuda:LOCAL_RANK); CPU ranks stay on the CPU."""
    if _backend(device) == "nccl":
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return device


def _exit_with_parent() -> None:
    """A spawned rank must not outlive rank 0 (killed, or exited with os._exit, mid-load or waiting
    in the group's rendezvous, where no collective would fail): leave when the parent changes."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="tp-parent-watch", daemon=True).start()


def _worker_main(rank: int, size: int, port: int, device: str | None, options: dict[str, Any]) -> None:
    _exit_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(_backend(device), rank=rank, world_size=size, timeout=_COLLECTIVE_TIMEOUT)
    try:
        run_worker(rank, size, _rank_device(device, rank), options)
    finally:
        dist.destroy_process_group()


def run_worker(rank: int, size: int, device: str | None, options: dict[str, Any]) -> None:
    """A rank other than 0, in an initialised group: load its part, then run steps until told to stop."""
    loaded = load(device=device, tensor_parallel=(rank, size), **options)
    worker_loop(loaded.model, loaded.model.dtype)


@dataclass
class TensorParallelGroup:
    size: int
    rank: int
    device: str | None
    options: dict[str, Any]  # load() keywords: path, dtype, quantization
    processes: list[BaseProcess] = field(default_factory=list)  # the ranks spawned here
    runner: TensorParallelRunner | None = None
    _closing: bool = False

    @classmethod
    def start(cls, size: int, device: str | None, **options: Any) -> TensorParallelGroup:
        """Join torchrun's group, or spawn ranks 1..size-1 and become rank 0 of a new one."""
        if size < 1:
            raise ValueError(f"tensor_parallel_size must be at least 1, got {size}")
        if dist.is_initialized():
            raise TensorParallelError("a torch.distributed group already exists in this process")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:  # torchrun (or another launcher) made the processes: join them
            if world != size:
                raise TensorParallelError(f"tensor parallel size {size} but WORLD_SIZE is {world} (torchrun)")
            rank = int(os.environ["RANK"])
            dist.init_process_group(_backend(device), timeout=_COLLECTIVE_TIMEOUT)
            local = int(os.environ.get("LOCAL_RANK", rank))
            return cls(size, rank, _rank_device(device, local), options)
        port = _free_port()
        context = mp.get_context("spawn")
        processes = [
            context.Process(
                target=_worker_main, args=(r, size, port, device, options), name=f"tp-rank-{r}", daemon=True
            )
            for r in range(1, size)
        ]
        for process in processes:
            process.start()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group(_backend(device), rank=0, world_size=size, timeout=_COLLECTIVE_TIMEOUT)
        return cls(size, 0, _rank_device(device, 0), options, processes)

    def load(self) -> LoadedModel:
        """This rank's part of the model (every rank loads at the same time)."""
        return load(device=self.device, tensor_parallel=(self.rank, self.size), **self.options)

    def run_worker(self) -> None:
        """For a rank other than 0 under torchrun: load, serve steps until rank 0 stops, leave."""
        try:
            run_worker(self.rank, self.size, self.device, self.options)
        finally:
            dist.destroy_process_group()

    def attach(self, engine: LLMEngine, on_rank_lost: Callable[[str], None] | None = None) -> None:
        """Rank 0: give the other ranks the engine's cache shape and make its runner broadcast steps."""
        if engine.core.speculator is not None:
            raise TensorParallelError("speculative decoding with tensor parallelism is not supported yet")
        broadcast(("cache", CacheShape(engine.cache.num_blocks, engine.cache.block_size)))
        self.runner = TensorParallelRunner(engine.runner, on_rank_lost, self._ended_rank)
        engine.core.runner = self.runner  # type: ignore[assignment]
        if self.processes:
            threading.Thread(target=self._watch, name="tp-rank-monitor", daemon=True).start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the other ranks and leave the group."""
        if self._closing:
            return
        self._closing = True
        if self.runner is not None:
            self.runner.stop_workers()
        for process in self.processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
        if dist.is_initialized():
            dist.destroy_process_group()

    def _watch(self) -> None:
        sentinels = {p.sentinel: p for p in self.processes}
        ended = wait(list(sentinels))
        if self._closing or self.runner is None:
            return
        process = sentinels[ended[0]]  # type: ignore[index]
        process.join(5)  # its exit code
        self.runner.rank_lost(_ended(process))

    def _ended_rank(self) -> str | None:
        """Which rank process ended, if one did: when a step's collective fails first, this names
        the rank rather than the transport's error (the process may take a moment to be reaped)."""
        for process in self.processes:
            process.join(1.0)
            if not process.is_alive():
                return _ended(process)
        return None


def _ended(process: Any) -> str:
    return f"tensor-parallel {process.name} (pid {process.pid}) exited (code {process.exitcode})"
