"""Prompt logprobs kept per block of tokens, so echo + logprobs requests can use the prefix cache.

A completion with `echo` and `logprobs` must return every prompt token's logprob, but rows served
from the engine's prefix cache have no logits. lm-eval's `local-completions` sends exactly such
requests (a question's context with each choice; MMLU's five worked examples before every
question), and reads only the continuation's logprobs, which the server cannot know. So the
server keeps the prompt logprobs it has already returned, block by block: token i's logprob (and
its top-k) depends only on tokens 0..i, the model and the adapter, so a block identified by a
chained hash of every token up to its end (with the adapter and k) always has the same entries.
A request whose first `j` blocks are known asks the engine for logprobs from position
`j * block_size` on only (`SamplingParams.prompt_logprobs_from`), which lets the engine serve the
context before it from the prefix cache, and takes the first positions from here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from mistral_nemo.engine.outputs import TokenLogprob

Entries = tuple[TokenLogprob | None, ...]  # one block's entries; only position 0 of a prompt is None


class PromptLogprobMemo:
    """A bounded LRU of (block hash) -> (the block's tokens, their prompt logprob entries)."""

    def __init__(self, block_size: int, max_blocks: int = 8192) -> None:
        if block_size < 1 or max_blocks < 1:
            raise ValueError("block_size and max_blocks must be positive")
        self.block_size = block_size
        self.max_blocks = max_blocks  # 8192 blocks of 16 tokens with top-1: tens of MB at most
        self._blocks: OrderedDict[int, tuple[tuple[int, ...], Entries]] = OrderedDict()
        self._lock = threading.Lock()  # requests are handled on the event loop and in worker threads

    def __len__(self) -> int:
        return len(self._blocks)

    def _hashes(self, ids: Sequence[int], scope: Hashable) -> list[tuple[int, tuple[int, ...]]]:
        """(chained hash, tokens) of each full block of `ids`; `scope` (adapter, k) seeds the chain."""
        out = []
        previous = hash(scope)
        for start in range(0, len(ids) - self.block_size + 1, self.block_size):
            tokens = tuple(ids[start : start + self.block_size])
            previous = hash((previous, tokens))
            out.append((previous, tokens))
        return out

    def lookup(self, ids: Sequence[int], scope: Hashable) -> list[TokenLogprob | None]:
        """The entries of the longest known run of leading blocks (a multiple of block_size long)."""
        found: list[TokenLogprob | None] = []
        used: list[int] = []
        with self._lock:
            for key, tokens in self._hashes(ids, scope):
                hit = self._blocks.get(key)
                if hit is None or hit[0] != tokens:  # tokens compared: a hash collision never serves
                    break
                used.append(key)
                found += hit[1]
            self._touch(used)
        return found

    def _touch(self, keys: list[int]) -> None:
        """Most recently used, the first block last: a chain is evicted from its end, never its start
        (a later block is useless without the ones before it)."""
        for key in reversed(keys):
            self._blocks.move_to_end(key)

    def store(self, ids: Sequence[int], scope: Hashable, entries: Sequence[TokenLogprob | None]) -> None:
        """Keep the entries of every full block whose entries are all there (position 0 may be None)."""
        kept: list[int] = []
        with self._lock:
            for index, (key, tokens) in enumerate(self._hashes(ids, scope)):
                start = index * self.block_size
                block = tuple(entries[start : start + self.block_size])
                complete = len(block) == self.block_size and all(
                    e is not None for e in block[1 if start == 0 else 0 :]
                )
                if not complete:
                    break
                self._blocks[key] = (tokens, block)
                kept.append(key)
            self._touch(kept)
            while len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)
