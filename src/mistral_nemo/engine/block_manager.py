"""Fixed-size KV blocks: allocation, reference counts, and the prefix cache.

A full block is identified by a chained hash of its tokens and of every block before it, so
equal hashes mean equal prefixes (the tokens are kept and compared too, so a hash collision can
never serve wrong keys). Blocks nobody uses stay cached and are evicted least-recently-used,
only when a fresh block is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq

from mistral_nemo.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._refs = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        # Blocks with no user, oldest first: the first is the one to evict.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._seq_hashes: dict[int, list[int]] = {}  # seq_id -> hashes of its full, computed blocks
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # of those, tokens found in the cache

    # ---- accounting ----------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out (cached but unused blocks count: they can be evicted)."""
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- admission: prefix-cache lookup --------------------------------------------------------

    def cached_prefix(self, token_ids: Seq[int], salt: int = 0) -> list[int]:
        """Blocks holding the longest cached prefix (whole blocks, always leaving one token to compute).

        `salt` seeds the hash chain: blocks computed under a LoRA adapter (its salt) never match the
        base model's (salt 0) or another adapter's, even for equal tokens.
        """
        if not self.enable_prefix_caching:
            return []
        blocks: list[int] = []
        previous = salt
        for start in range(0, len(token_ids) - 1 - self.block_size + 1, self.block_size):
            tokens = tuple(token_ids[start : start + self.block_size])
            previous = hash((previous, tokens))
            block = self._by_hash.get(previous)
            if block is None or self._tokens[block] != tokens:
                break
            blocks.append(block)
        return blocks

    def can_admit(self, cached: list[int], num_tokens: int) -> bool:
        """Whether the cached blocks plus fresh ones for `num_tokens` tokens fit right now."""
        fresh = self.blocks_for(num_tokens) - len(cached)
        reclaimed = sum(1 for b in cached if self._refs[b] == 0)  # leave the free list when reused
        return fresh <= self.num_free - reclaimed

    def admit(self, seq: Sequence, cached: list[int]) -> None:
        """Give a waiting sequence its cached prefix blocks; its first tokens count as computed."""
        assert not seq.block_table
        for block in cached:
            self._acquire(block)
        seq.block_table = list(cached)
        seq.num_computed = len(cached) * self.block_size
        self._seq_hashes[seq.seq_id] = [self._hash[b] for b in cached]  # type: ignore[misc]
        self.prefix_queries += len(seq.prompt_ids)
        self.prefix_hits += seq.num_computed
        seq.num_cached_prompt = seq.num_computed

    # ---- growth, registration, release ---------------------------------------------------------

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Give `seq` enough blocks for `num_tokens` tokens; False (nothing taken) if too few are free."""
        missing = self.blocks_for(num_tokens) - len(seq.block_table)
        if missing > self.num_free:
            return False
        for _ in range(missing):
            seq.block_table.append(self._take_fresh())
        return True

    def register_computed(self, seq: Sequence) -> None:
        """Enter the sequence's newly completed full blocks into the prefix cache."""
        if not self.enable_prefix_caching:
            return
        hashes = self._seq_hashes.setdefault(seq.seq_id, [])
        full = min(seq.num_computed, len(seq)) // self.block_size
        tokens = seq.all_ids
        previous = hashes[-1] if hashes else seq.cache_salt
        for index in range(len(hashes), full):
            block_tokens = tuple(tokens[index * self.block_size : (index + 1) * self.block_size])
            previous = hash((previous, block_tokens))
            hashes.append(previous)
            block = seq.block_table[index]
            if previous not in self._by_hash and self._hash[block] is None:
                self._by_hash[previous] = block
                self._hash[block] = previous
                self._tokens[block] = block_tokens

    def release(self, seq: Sequence) -> None:
        """Drop the sequence's claim on its blocks (finish, abort or preemption)."""
        for block in reversed(seq.block_table):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
                if self._hash[block] is None:
                    self._free.move_to_end(block, last=False)  # holds nothing reusable: hand out first
        seq.block_table = []
        seq.num_computed = 0
        self._seq_hashes.pop(seq.seq_id, None)

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Give back the blocks past the first `num_tokens` tokens (taken for drafts that were rejected)."""
        keep = self.blocks_for(num_tokens)
        while len(seq.block_table) > keep:
            block = seq.block_table.pop()
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
                if self._hash[block] is None:
                    self._free.move_to_end(block, last=False)

    def reset_prefix_cache(self) -> None:
        """Forget every cached block that nobody uses."""
        for block in self._free:
            self._forget(block)

    # ---- internals -----------------------------------------------------------------------------

    def _acquire(self, block: int) -> None:
        if self._refs[block] == 0:
            del self._free[block]
        self._refs[block] += 1

    def _take_fresh(self) -> int:
        block, _ = self._free.popitem(last=False)
        self._forget(block)
        self._refs[block] = 1
        return block

    def _forget(self, block: int) -> None:
        block_hash = self._hash[block]
        if block_hash is not None and self._by_hash.get(block_hash) == block:
            del self._by_hash[block_hash]
        self._hash[block] = None
        self._tokens[block] = None
