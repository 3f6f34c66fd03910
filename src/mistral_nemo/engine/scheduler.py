"""Which sequences run in the next step, and how many of their tokens.

Every step has a token budget. Running sequences go first, oldest first: one token for a
sequence that is decoding, a chunk of the prompt for one still prefilling. Then waiting
sequences are admitted in order while the budget, the sequence limit and free blocks allow,
starting after their prefix-cache hits. When blocks run out, the newest running sequence is
preempted: its blocks are released and it waits to be recomputed (prompt + what it generated).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mistral_nemo.engine.block_manager import BlockManager
from mistral_nemo.engine.errors import ContextLengthError, NeverFitsError, QueueFullError, RequestError
from mistral_nemo.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens to compute this step, from seq.num_computed on


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_queue: int,
    ) -> None:
        self.blocks = blocks
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_queue = max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ---- admission -----------------------------------------------------------------------------

    def check(self, prompt_len: int, max_tokens: int | None, n: int) -> None:
        """Refuse a request that can never run, or that the queue has no room for."""
        if prompt_len == 0:
            raise RequestError("the prompt is empty")
        wanted = prompt_len + (max_tokens or 1)
        if prompt_len >= self.max_model_len or wanted > self.max_model_len:
            raise ContextLengthError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request has "
                f"{prompt_len} prompt tokens and asks for {max_tokens if max_tokens is not None else 1} more "
                f"({wanted} in total)"
            )
        longest = prompt_len + max_tokens if max_tokens is not None else self.max_model_len
        if self.blocks.blocks_for(longest) > self.blocks.num_blocks:
            capacity = self.blocks.num_blocks * self.blocks.block_size
            raise NeverFitsError(
                f"the request needs up to {longest} tokens of KV cache but the whole cache holds {capacity}; "
                "lower max_tokens or give the engine more KV cache memory (kv_cache_memory)"
            )
        # Free running slots are not queue places: requests added in one burst all wait until the
        # next step moves up to max_num_seqs of them to running.
        free_slots = max(0, self.max_num_seqs - len(self.running))
        if len(self.waiting) + n > self.max_queue + free_slots:
            raise QueueFullError(f"the engine is overloaded: {len(self.waiting)} requests are waiting")

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    # ---- one step ------------------------------------------------------------------------------

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_num_batched_tokens
        batch: list[ScheduledSeq] = []
        preempted = False
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or budget == 0:
                continue
            count = min(seq.num_uncomputed, budget)
            while not self.blocks.ensure_capacity(seq, seq.num_computed + count):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                batch.append(ScheduledSeq(seq, count))
                budget -= count
        if not preempted:
            budget = self._admit(batch, budget)
        return batch

    def _admit(self, batch: list[ScheduledSeq], budget: int) -> int:
        skipped: list[Sequence] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            if _sibling_still_prefilling(seq):
                skipped.append(seq)  # wait to share its prompt blocks through the prefix cache
                continue
            use_cache = seq.params.prompt_logprobs is None  # cached rows have no logits to report
            cached = self.blocks.cached_prefix(seq.all_ids) if use_cache else []
            start = len(cached) * self.blocks.block_size
            count = min(len(seq) - start, budget)
            if not self.blocks.can_admit(cached, start + count):
                self.waiting.appendleft(seq)
                break
            self.blocks.admit(seq, cached)
            assert self.blocks.ensure_capacity(seq, start + count)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.append(ScheduledSeq(seq, count))
            budget -= count
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.status = SequenceStatus.WAITING
        self.running.remove(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    # ---- leaving -------------------------------------------------------------------------------

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence wherever it is, freeing its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = SequenceStatus.FINISHED

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)


def _sibling_still_prefilling(seq: Sequence) -> bool:
    first = seq.first_sibling
    return (
        first is not None
        and first.status is not SequenceStatus.FINISHED
        and first.num_computed < len(first.prompt_ids)
    )
