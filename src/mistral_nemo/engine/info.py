"""EngineInfo: the public facts of a running engine, in one object (what a server reports and checks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineInfo:
    model_name: str  # the loaded model's name (a server may answer to other names too)
    max_model_len: int  # tokens of context one sequence may use
    vocab_size: int  # the model's vocabulary: token ids the engine accepts are 0..vocab_size - 1
    block_size: int  # tokens per KV-cache block
    kv_cache_blocks: int  # blocks in the whole KV pool
    max_num_seqs: int  # sequences running at once
    max_queue: int  # sequences waiting before new requests are refused as overloaded
    prefix_caching: bool = True  # whether requests sharing a prompt's start reuse its KV blocks

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens the whole KV pool holds (all sequences together)."""
        return self.kv_cache_blocks * self.block_size

    @property
    def capacity_tokens(self) -> int:
        """The most tokens one sequence can ever hold: the context, or the whole KV pool if smaller."""
        return min(self.max_model_len, self.kv_cache_tokens)

    @property
    def max_sequences(self) -> int:
        """Sequences the engine ever holds at once: running slots plus the waiting queue."""
        return self.max_num_seqs + self.max_queue
