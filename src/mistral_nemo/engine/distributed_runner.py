"""The model runner across tensor-parallel ranks: rank 0 broadcasts each step, every rank runs it.

Rank 0 runs the whole engine (scheduler, block manager, sampler, outputs). Before each forward it
broadcasts the step as plain data: per sequence its new token ids, first position, block table and
the rows the engine wants. The other ranks rebuild the same batch and run the same ModelRunner over
their own paged KV cache (their KV heads, the same block numbers), so the all-reduces inside the
model meet in the same order on every rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist

from mistral_nemo.engine.model_runner import ModelRunner, StepLogits
from mistral_nemo.engine.paged_cache import PagedKVCache
from mistral_nemo.engine.scheduler import ScheduledSeq
from mistral_nemo.model.tensor_parallel import TensorParallelError
from mistral_nemo.model.transformer import Transformer


@dataclass(frozen=True)
class SeqStep:
    """What a rank needs of one scheduled sequence (no text, no sampling state)."""

    seq_id: int
    start: int  # num_computed before the step
    new_ids: list[int]  # all_ids[start : start + num_tokens]
    block_table: list[int]
    prompt_len: int
    total_len: int  # len(seq)
    prompt_logprobs: bool
    prompt_logprobs_from: int  # the first prompt position whose logprob is wanted
    lora_slot: int  # the adapter slot of its tokens (0: the base)


@dataclass(frozen=True)
class CacheShape:
    """Sent once after loading: every rank's pool must have the same block numbers."""

    num_blocks: int
    block_size: int


class _Window:
    """seq.all_ids as the runner reads it (an index or a slice inside this step's tokens)."""

    def __init__(self, start: int, ids: list[int]) -> None:
        self.start, self.ids = start, ids

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            return self.ids[key.start - self.start : key.stop - self.start]
        return self.ids[key - self.start]


class _RemoteSeq:
    """The fields of engine.sequence.Sequence that ModelRunner reads, rebuilt from a SeqStep."""

    def __init__(self, step: SeqStep) -> None:
        self.seq_id, self.num_computed, self.block_table = step.seq_id, step.start, step.block_table
        self.all_ids = _Window(step.start, step.new_ids)
        self.prompt_ids = range(step.prompt_len)  # only its length is read
        self.params = SimpleNamespace(
            prompt_logprobs=0 if step.prompt_logprobs else None,
            prompt_logprobs_from=step.prompt_logprobs_from,
        )
        self.lora_slot = step.lora_slot
        self._len = step.total_len

    def __len__(self) -> int:
        return self._len


def describe(batch: list[ScheduledSeq]) -> list[SeqStep]:
    steps = []
    for item in batch:
        seq, start = item.seq, item.seq.num_computed
        steps.append(
            SeqStep(
                seq.seq_id,
                start,
                list(seq.all_ids[start : start + item.num_tokens]),
                list(seq.block_table),
                len(seq.prompt_ids),
                len(seq),
                seq.params.prompt_logprobs is not None,
                seq.params.prompt_logprobs_from,
                seq.lora_slot,
            )
        )
    return steps


def rebuild(steps: list[SeqStep]) -> list[ScheduledSeq]:
    return [ScheduledSeq(_RemoteSeq(s), len(s.new_ids)) for s in steps]  # type: ignore[arg-type]


class TensorParallelRunner:
    """Rank 0's runner: broadcast the step, then run it here like any ModelRunner.

    A failed collective means a rank is gone: `on_rank_lost` is told once (the server stops), and
    this and every later step raise TensorParallelError.
    """

    def __init__(
        self,
        local: ModelRunner,
        on_rank_lost: Callable[[str], None] | None = None,
        ended_rank: Callable[[], str | None] | None = None,
    ) -> None:
        self.local = local
        self.device = local.device
        self.on_rank_lost = on_rank_lost
        self.ended_rank = ended_rank  # names a rank process that ended, where rank 0 started them
        self.lost: str | None = None

    def run(self, batch: list[ScheduledSeq]) -> StepLogits:
        if self.lost is not None:
            raise TensorParallelError(self.lost)
        try:
            broadcast(("step", describe(batch)))
            return self.local.run(batch)
        except (RuntimeError, dist.DistBackendError) as exc:
            ended = self.ended_rank() if self.ended_rank is not None else None
            self.rank_lost(ended or f"a tensor-parallel rank stopped answering ({exc})")
            raise TensorParallelError(self.lost) from None

    def rank_lost(self, reason: str) -> None:
        """Record the loss once and tell the owner (also called by the process monitor)."""
        if self.lost is not None:
            return
        self.lost = reason
        if self.on_rank_lost is not None:
            self.on_rank_lost(reason)

    def stop_workers(self) -> None:
        """Tell the other ranks to leave their loop (best effort: a lost rank cannot hear it)."""
        if self.lost is None:
            with contextlib.suppress(RuntimeError, dist.DistBackendError):
                broadcast(("stop", None))
            self.lost = "the tensor-parallel group was closed"


def broadcast(message: tuple[str, Any]) -> tuple[str, Any]:
    """Rank 0 sends, every other rank receives and returns the message."""
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def worker_loop(model: Transformer, dtype: torch.dtype) -> None:
    """A rank other than 0: wait for the cache shape, then run every step rank 0 sends until "stop".
    Returns when rank 0 stops or disappears (a failed collective)."""
    try:
        kind, shape = broadcast(("", None))
        if kind != "cache":
            return
        cache = PagedKVCache(model.args, shape.num_blocks, shape.block_size, dtype, model.device)
        runner = ModelRunner(model, cache)
        while True:
            kind, payload = broadcast(("", None))
            if kind != "step":
                return
            runner.run(rebuild(payload))
    except (RuntimeError, dist.DistBackendError):
        return  # rank 0 or a peer is gone: nothing left to serve
