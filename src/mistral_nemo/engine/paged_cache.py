"""The paged KV cache: one preallocated pool of blocks for all sequences, and attention over it.

A step's batch is flattened: the tokens of every scheduled sequence one after the other
(prefill chunks and single decode tokens alike). `begin_step` receives, per sequence, where
its query tokens sit in that flat batch and which cache slots hold its whole context; `attend`
(the KVCache protocol the model calls) writes the new keys/values into their slots and lets
each sequence's queries attend to its own context. Pure PyTorch, so it runs on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.transformer import DecodeSlots


@dataclass
class SeqSlice:
    """One sequence's part of a step."""

    query_start: int  # first row of its queries in the flat batch
    query_len: int  # tokens computed this step
    context_slots: torch.Tensor  # cache slots of its whole context after this step (oldest first)


class PagedKVCache:
    def __init__(
        self,
        args: ModelArgs,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        slots = num_blocks * block_size
        shape = (args.n_layers, slots, args.n_kv_heads, args.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks, self.block_size = num_blocks, block_size
        self._slot_mapping: torch.Tensor | None = None
        self._seqs: list[SeqSlice] = []
        self._decode: DecodeSlots | None = None
        # Whether pure decode steps run through the numba kernel (float32 CPU pools), see begin_decode.
        self.has_decode_kernel = dtype == torch.float32 and self.keys.device.type == "cpu"

    @staticmethod
    def bytes_per_block(args: ModelArgs, block_size: int, dtype: torch.dtype) -> int:
        return 2 * args.n_layers * block_size * args.kv_dim * torch.empty((), dtype=dtype).element_size()

    def slots_for(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        """Cache slots of token positions start..end-1 of a sequence with this block table."""
        positions = torch.arange(start, end)
        blocks = torch.tensor(block_table, dtype=torch.long)[positions // self.block_size]
        return blocks * self.block_size + positions % self.block_size

    def begin_step(self, slot_mapping: torch.Tensor, seqs: list[SeqSlice]) -> None:
        """Describe the next forward: the slot of each new token, and each sequence's slice."""
        device = self.keys.device
        self._slot_mapping = slot_mapping.to(device)
        self._seqs = [SeqSlice(s.query_start, s.query_len, s.context_slots.to(device)) for s in seqs]
        self._decode = None

    def begin_decode(
        self, write_slots: list[int], block_tables: list[list[int]], ctx_lens: list[int]
    ) -> None:
        """Describe a pure decode step (one new token per sequence, row b = sequence b) by block tables,
        for the decode kernel (only when has_decode_kernel): no per-token slot list is built."""
        width = max(len(t) for t in block_tables)
        padded = [t + [0] * (width - len(t)) for t in block_tables] if len(block_tables) > 1 else block_tables
        self._slot_mapping = torch.tensor(write_slots)
        self._seqs = []
        self._decode = DecodeSlots(
            self.keys,
            self.values,
            self._slot_mapping,
            torch.tensor(padded, dtype=torch.long),
            self.block_size,
            torch.tensor(ctx_lens),
        )

    def decode_slots(self, num_tokens: int) -> DecodeSlots | None:
        """The step as slots when every sequence adds exactly one token (for a fused decoder)."""
        assert self._slot_mapping is not None, "begin_step() must describe the batch first"
        decode = self._decode
        return decode if decode is not None and num_tokens == decode.write_slots.shape[0] else None

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        assert self._slot_mapping is not None, "begin_step() must describe the batch first"
        layer_keys, layer_values = self.keys[layer], self.values[layer]
        layer_keys.index_copy_(0, self._slot_mapping, k)
        layer_values.index_copy_(0, self._slot_mapping, v)
        if self._decode is not None:  # one query per sequence: every sequence in one kernel call
            return decode_attention(layer, q, self._decode)
        out = torch.empty_like(q)
        for s in self._seqs:
            rows = slice(s.query_start, s.query_start + s.query_len)
            keys = layer_keys[s.context_slots].transpose(0, 1)  # [kv_heads, context, head_dim]
            values = layer_values[s.context_slots].transpose(0, 1)
            out[rows] = _attend_one(q[rows].transpose(0, 1), keys, values).transpose(0, 1)
        return out


def decode_attention(layer: int, q: torch.Tensor, slots: DecodeSlots) -> torch.Tensor:
    """q [B, n_heads, head_dim], one query per sequence, over cached slots (new K/V already written)."""
    from mistral_nemo.model.quant.decode_kernels import decode_attention as kernel  # numba: on demand

    batch, n_heads, head_dim = q.shape
    out = torch.empty(batch, n_heads * head_dim, dtype=torch.float32)
    kernel(
        q.reshape(batch, -1).contiguous().numpy(),
        slots.keys[layer].numpy(),
        slots.values[layer].numpy(),
        slots.block_tables.numpy(),
        slots.block_size,
        slots.ctx_lens.numpy(),
        n_heads,
        out.numpy(),
    )
    return out.view(batch, n_heads, head_dim)


def _attend_one(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """q [heads, n, d] are the last n positions of a context of len(keys): causal within them."""
    n, context = q.shape[1], keys.shape[1]
    mask = None
    if n > 1:
        mask = (
            torch.arange(context, device=q.device)[None, :]
            <= torch.arange(context - n, context, device=q.device)[:, None]
        )
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
