"""Constrained decoding: a per-sequence object that says which tokens may come next.

The server builds these (JSON schema, forced tool calls) from a grammar library; the engine
only masks logits with them and tells them which token was chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class DecodingConstraint(Protocol):
    def allowed_tokens(self) -> torch.Tensor | None:
        """A bool mask [vocab] of the tokens allowed next, or None for no restriction."""
        ...

    def accept(self, token_id: int) -> None:
        """The token that was chosen (always one the last mask allowed)."""
        ...


# A factory, so that each sequence (n > 1 samples) gets its own state.
ConstraintFactory = Callable[[], DecodingConstraint]


def apply_constraints(logits: torch.Tensor, constraints: list[DecodingConstraint | None]) -> torch.Tensor:
    """Rows of `logits` [B, V] with disallowed tokens set to -inf (a copy only when needed)."""
    masks = [(row, c.allowed_tokens()) for row, c in enumerate(constraints) if c is not None]
    masks = [(row, m) for row, m in masks if m is not None]
    if not masks:
        return logits
    logits = logits.clone()
    for row, allowed in masks:
        vocab = min(allowed.shape[0], logits.shape[1])
        logits[row, :vocab].masked_fill_(~allowed[:vocab].to(logits.device), float("-inf"))
        logits[row, vocab:] = float("-inf")
    return logits
