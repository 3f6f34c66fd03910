"""The server's per-block memo of prompt logprobs: what it keeps, what it serves, what it forgets."""

from __future__ import annotations

import pytest

from mistral_nemo.engine.outputs import TokenLogprob
from mistral_nemo.entrypoints.server.prompt_logprob_memo import PromptLogprobMemo


def entries(ids: list[int]) -> list[TokenLogprob | None]:
    """Made-up entries whose values identify their position, None for the first token."""
    return [None] + [TokenLogprob(t, -float(i), [(t, -float(i))]) for i, t in enumerate(ids) if i > 0]


def test_serves_whole_leading_blocks_of_the_same_scope_only() -> None:
    memo = PromptLogprobMemo(block_size=4)
    ids = list(range(100, 111))  # two full blocks and three tokens
    memo.store(ids, "k1", entries(ids))
    assert len(memo) == 2
    assert memo.lookup(ids, "k1") == entries(ids)[:8]
    assert memo.lookup([*ids[:6], 7, 7, 7], "k1") == entries(ids)[:4]  # the second block differs
    assert memo.lookup(ids, "k2") == []  # another adapter or top-k
    assert memo.lookup([1, *ids[1:]], "k1") == []  # the first token differs: nothing after it holds


def test_keeps_only_complete_blocks_and_forgets_the_oldest() -> None:
    memo = PromptLogprobMemo(block_size=4, max_blocks=3)
    ids = list(range(12))
    partial = entries(ids)
    partial[5] = None  # a position the engine did not score: its block and every later one are left out
    memo.store(ids, "s", partial)
    assert len(memo) == 1 and len(memo.lookup(ids, "s")) == 4
    memo.store(ids, "s", entries(ids))
    other = list(range(50, 58))
    memo.store(other, "s", entries(other))  # two more blocks: two go, from the end of the older chain
    assert len(memo) == 3
    assert memo.lookup(other, "s") == entries(other)
    assert memo.lookup(ids, "s") == entries(ids)[:4]  # its first block stays usable
    with pytest.raises(ValueError, match="positive"):
        PromptLogprobMemo(block_size=0)
