"""A contiguous KV cache for one sequence: the simple generation path and the reference for paging."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistral_nemo.engine.paged_cache import decode_attention
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.transformer import DecodeSlots


class DenseKVCache:
    """Keys and values for positions 0..capacity-1 of one sequence, for every layer.

    Call `model(tokens, positions, cache)` with positions starting at `cache.length`, then
    `cache.advance(len(tokens))`. The new tokens attend to everything cached and causally to
    each other.
    """

    def __init__(
        self, args: ModelArgs, capacity: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ):
        shape = (args.n_layers, capacity, args.n_kv_heads, args.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, new = self.length, q.shape[0]
        end = start + new
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} tokens; {end} needed")
        self.keys[layer, start:end] = k
        self.values[layer, start:end] = v
        if new == 1 and (slots := self.decode_slots(1)) is not None:
            return decode_attention(layer, q, slots)
        keys = self.keys[layer, :end].transpose(0, 1)
        values = self.values[layer, :end].transpose(0, 1)
        mask = None
        if new > 1:  # token i (at position start + i) sees cache slots 0 .. start + i
            slots = torch.arange(end, device=q.device)
            mask = slots[None, :] <= (start + torch.arange(new, device=q.device))[:, None]
        out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask, enable_gqa=True)
        return out.transpose(0, 1)

    def decode_slots(self, num_tokens: int) -> DecodeSlots | None:
        """One new token at slot `length`, attending to slots 0..length (for a fused decoder)."""
        if num_tokens != 1 or self.keys.dtype != torch.float32 or self.keys.device.type != "cpu":
            return None
        if self.length + 1 > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} tokens; {self.length + 1} needed")
        # One block as long as the cache: position j is slot j.
        return DecodeSlots(
            self.keys,
            self.values,
            torch.tensor([self.length]),
            torch.zeros((1, 1), dtype=torch.long),
            self.capacity,
            torch.tensor([self.length + 1]),
        )

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens

    def truncate(self, length: int) -> None:
        """Forget everything from `length` on (e.g. to re-run a prompt's last token)."""
        self.length = min(self.length, length)
