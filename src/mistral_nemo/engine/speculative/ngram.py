"""Prompt-lookup drafting: find the sequence's latest suffix earlier in it, propose what followed.

Vectorised with numpy: one comparison over the context finds where the last token occurred,
then at most prompt_lookup_max - 1 comparisons over those candidates measure how far back
each match reaches. No Python loop per context token.
"""

from __future__ import annotations

import numpy as np


class TokenBuffer:
    """A sequence's tokens as a growing int64 array, so a step converts only the new tokens."""

    def __init__(self) -> None:
        self._data = np.empty(256, dtype=np.int64)
        self.size = 0

    def sync(self, token_ids: list[int]) -> np.ndarray:
        """The array view of `token_ids` (which only ever grew since the last call, or was replaced)."""
        n = len(token_ids)
        if n < self.size:
            self.size = 0
        if n > self._data.shape[0]:
            grown = np.empty(max(n, 2 * self._data.shape[0]), dtype=np.int64)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        if n > self.size:
            self._data[self.size : n] = token_ids[self.size : n]
            self.size = n
        return self._data[:n]


def propose_ngram(tokens: np.ndarray, num_tokens: int, min_n: int, max_n: int) -> list[int]:
    """Up to `num_tokens` tokens that followed the longest suffix match (min_n..max_n tokens long).

    Among equally long matches the latest wins (recent context predicts best). [] when none.
    """
    length = tokens.shape[0]
    if length < min_n + 1 or num_tokens < 1:
        return []
    # Candidate ends p (< length - 1, so something follows) where tokens[p] equals the last token.
    candidates = np.flatnonzero(tokens[:-1] == tokens[-1])
    if candidates.size == 0:
        return []
    matched = np.ones(candidates.shape[0], dtype=np.int64)
    alive = np.ones(candidates.shape[0], dtype=bool)
    for back in range(1, min(max_n, length - 1)):
        before = candidates - back
        ok = alive & (before >= 0)
        ok[ok] = tokens[before[ok]] == tokens[length - 1 - back]
        matched += ok
        alive = ok
        if not alive.any():
            break
    best = int(matched.max())
    if best < min_n:
        return []
    end = int(candidates[np.flatnonzero(matched == best)[-1]])
    return tokens[end + 1 : end + 1 + num_tokens].tolist()
