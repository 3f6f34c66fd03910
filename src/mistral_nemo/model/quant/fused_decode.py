"""`FusedDecoder`: decode steps of a quantized CPU model run as one numba call for all layers.

Attached to a Transformer whose attention and feed-forward linears are all Int8Linear / Int4Linear
(any mix), with float32 activations on CPU. The model uses it when the KV cache reports a pure
decode step (every sequence adds one token); prefill keeps the per-layer PyTorch path, which is
compute-bound and faster through torch's GEMM. Attach again after replacing any layer.
"""

from __future__ import annotations

import numpy as np
import torch
from numba.typed import List

from mistral_nemo.model.quant import decode_kernels
from mistral_nemo.model.quant.decode_kernels import KIND_INT4, KIND_INT8, LINEARS
from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear
from mistral_nemo.model.transformer import DecodeSlots, Transformer


def _linear_of(block: torch.nn.Module, name: str) -> torch.nn.Module:
    parent = block.attention if name in ("wq", "wk", "wv", "wo") else block.feed_forward
    return getattr(parent, name)


class FusedDecoder:
    def __init__(self, model: Transformer) -> None:
        args = model.args
        self.eps = float(args.norm_eps)
        self.n_heads, self.n_kv_heads = args.n_heads, args.n_kv_heads
        empty_i8 = np.empty((0, 0), dtype=np.int8)
        empty_u8 = np.empty((0, 0), dtype=np.uint8)
        empty_f32 = np.empty((0, 0), dtype=np.float32)
        kinds, out_dims = [], []
        # (the submodule dict holding each linear, its name, the linear): checked before every step
        self._held = [
            ((block.attention if name in ("wq", "wk", "wv", "wo") else block.feed_forward)._modules, name,
             _linear_of(block, name))
            for block in model.layers
            for name in LINEARS
        ]  # fmt: skip
        self._q8s, self._p4s, self._scales, self._zeros = List(), List(), List(), List()
        for block in model.layers:
            for name in LINEARS:
                layer = _linear_of(block, name)
                out_dims.append(layer.out_features)
                self._scales.append(layer.scale.numpy())
                if isinstance(layer, Int8Linear):
                    kinds.append(KIND_INT8)
                    self._q8s.append(layer.qweight.numpy())
                    self._p4s.append(empty_u8)
                    self._zeros.append(empty_f32)
                else:
                    kinds.append(KIND_INT4)
                    self._q8s.append(empty_i8)
                    self._p4s.append(layer.packed.numpy())
                    self._zeros.append(layer.zero.numpy())
        self._kinds = np.array(kinds, dtype=np.int64)
        self._out_dims = np.array(out_dims, dtype=np.int64)
        self._attn_norms = torch.stack([b.attention_norm.weight.float() for b in model.layers]).numpy()
        self._ffn_norms = torch.stack([b.ffn_norm.weight.float() for b in model.layers]).numpy()

    def _current(self) -> bool:
        """Whether the model still holds the layers whose arrays were gathered: dict lookups and identity
        checks (~20 us per step; going through nn.Module attribute access cost ~0.5 ms)."""
        return all(modules.get(name) is layer for modules, name, layer in self._held)

    @staticmethod
    def layers_supported(model: Transformer) -> bool:
        """True for a CPU model whose every attention / feed-forward linear is int8 or int4 (whatever
        its activations' dtype: supports() also needs float32)."""
        if model.device.type != "cpu":
            return False
        return all(
            isinstance(_linear_of(block, name), Int8Linear | Int4Linear)
            for block in model.layers
            for name in LINEARS
        )

    @staticmethod
    def supports(model: Transformer) -> bool:
        """True for a CPU float32 model whose every attention / feed-forward linear is int8 or int4."""
        return model.dtype == torch.float32 and FusedDecoder.layers_supported(model)

    @classmethod
    def attach(cls, model: Transformer) -> bool:
        """Use fused decode steps for this model when it supports them; returns whether it does."""
        model.fused_decoder = cls(model) if cls.supports(model) else None
        return model.fused_decoder is not None

    def __call__(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: DecodeSlots
    ) -> torch.Tensor:
        """h [B, dim] float32 -> hidden states after every layer; K/V of the new tokens are cached."""
        if not self._current():
            raise RuntimeError("the model's layers changed after FusedDecoder.attach(model); attach again")
        out = decode_kernels.decode_layers(
            h.contiguous().numpy(),
            cos.reshape(h.shape[0], -1).contiguous().numpy(),
            sin.reshape(h.shape[0], -1).contiguous().numpy(),
            self._attn_norms,
            self._ffn_norms,
            self.eps,
            self.n_heads,
            self.n_kv_heads,
            self._kinds,
            self._q8s,
            self._p4s,
            self._scales,
            self._zeros,
            self._out_dims,
            slots.keys.numpy(),
            slots.values.numpy(),
            slots.write_slots.numpy(),
            slots.block_tables.numpy(),
            slots.block_size,
            slots.ctx_lens.numpy(),
        )
        return torch.from_numpy(out)
