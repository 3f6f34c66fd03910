"""The training forward pass on a packed batch: block-diagonal causal attention, loss on masked rows.

The model's own layers run unchanged; attention goes through the `KVCache` hook the model offers
(`attend`), here one causal attention per block, so no token ever sees another sample and no
[T, T] mask is built. Logits are computed only for the rows the loss uses (a 131k vocabulary over
every token would dominate memory). loss = sum(CE over trained tokens) / their count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as checkpointed

from mistral_nemo.finetune.data.packing import Batch
from mistral_nemo.model.lora import frozen_linear
from mistral_nemo.model.transformer import Transformer, causal_attention


class BlockCausalAttention:
    """Attention within each block of `sizes` tokens (the model calls attend once per layer)."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if len(self.sizes) == 1:
            return causal_attention(q, k, v)
        parts = zip(q.split(self.sizes), k.split(self.sizes), v.split(self.sizes), strict=True)
        return torch.cat([causal_attention(qb, kb, vb) for qb, kb, vb in parts])


def hidden_states(
    model: Transformer,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    sizes: list[int],
    checkpoint: bool = False,
) -> torch.Tensor:
    """Final hidden states [T, dim] before the norm (activation checkpointing per layer if asked)."""
    attention = BlockCausalAttention(sizes)
    h = model.embed(tokens.to(model.device))
    cos, sin = model.rotary.cos_sin(positions.to(model.device), h.dtype)
    for layer in model.layers:
        if checkpoint and torch.is_grad_enabled():
            h = checkpointed(layer, h, cos, sin, attention, use_reentrant=False)
        else:
            h = layer(h, cos, sin, attention)
    return h


def packed_logits(model: Transformer, batch: Batch) -> torch.Tensor:
    """float32 logits [T, vocab] of every token of a packed batch (for tests and evaluation)."""
    h = hidden_states(model, batch.x, batch.positions, batch.sizes)
    return frozen_linear(model.output, model.norm(h)).float()


def loss_sum(model: Transformer, batch: Batch, checkpoint: bool = False) -> tuple[torch.Tensor, int]:
    """(sum of the cross-entropy over trained tokens, their count)."""
    h = hidden_states(model, batch.x, batch.positions, batch.sizes, checkpoint)
    rows = batch.mask.to(h.device).nonzero().squeeze(1)
    logits = frozen_linear(model.output, model.norm(h[rows])).float()
    loss = F.cross_entropy(logits, batch.y.to(h.device)[rows], reduction="sum")
    return loss, int(rows.numel())
