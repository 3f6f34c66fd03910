"""Model-level helpers: swap a Transformer's linears for quantized ones, and count decode bytes."""

from __future__ import annotations

from typing import Literal

import torch
from gguf import GGMLQuantizationType
from torch import nn

from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.model.weights import interleaved_to_half

QuantMode = Literal["int8", "int4"]
# GGML types that load straight into a compact linear (others: dequantize, then quantize_linear).
GGUF_DIRECT = {"Q8_0": Int8Linear, "Q4_0": Int4Linear, "Q4_1": Int4Linear}
_ATTN = ("wq", "wk", "wv", "wo")
_FFN = ("w1", "w2", "w3")


def quantize_linear(linear: nn.Linear | torch.Tensor, mode: QuantMode, group_size: int = 64) -> nn.Module:
    """One layer: int8 per output channel, or int4 in groups of `group_size`."""
    if mode == "int8":
        return Int8Linear.from_float(linear)
    if mode == "int4":
        return Int4Linear.from_float(linear, group_size=group_size)
    raise ValueError(f"unknown quantization mode {mode!r}; expected 'int8' or 'int4'")


def linear_from_gguf(
    raw: object, qtype: int | str, shape: tuple[int, int], rope_heads: int | None = None
) -> nn.Module | None:
    """A compact linear from one GGUF tensor's raw bytes (Q8_0 / Q4_0 / Q4_1), None for other types.

    rope_heads: for attn_q / attn_k, the head count whose interleaved-pair rows become rotate-half.
    """
    name = GGMLQuantizationType(int(qtype)).name if not isinstance(qtype, str) else qtype.strip().upper()
    cls = GGUF_DIRECT.get(name)
    if cls is None:
        return None
    layer = cls.from_gguf_blocks(raw, name, shape)
    if rope_heads:
        layer.permute_rows(rope_row_perm(shape[0], rope_heads))
    return layer


def rope_row_perm(rows: int, n_heads: int) -> torch.Tensor:
    """Row order that interleaved_to_half applies, as indices (to permute compact weights)."""
    return interleaved_to_half(torch.arange(rows)[:, None], n_heads)[:, 0]


@torch.no_grad()
def quantize_model(
    model: Transformer,
    mode: QuantMode,
    group_size: int = 64,
    include_output: bool = True,
    output_mode: QuantMode | None = None,
) -> Transformer:
    """Replace every attention / feed-forward linear (and the output projection) in place.

    The embedding stays as it is (a lookup reads one row per token). With tied embeddings the output
    projection gets its own quantized copy and the embedding keeps the float weight. Each float weight
    is dropped as soon as its replacement exists, so peak memory grows by one layer at most.
    `output_mode` (default: `mode`) lets the output projection keep more precision, as llama.cpp's Q4
    files do (int4 body + int8 output: small models keep their answers, see tests/test_quant.py).
    """
    for block in model.layers:
        for parent, names in ((block.attention, _ATTN), (block.feed_forward, _FFN)):
            for name in names:
                old = getattr(parent, name)
                if isinstance(old, nn.Linear):
                    setattr(parent, name, quantize_linear(old, mode, group_size))
                    del old
    if include_output and isinstance(model.output, nn.Linear):
        model.output = quantize_linear(model.output.weight, output_mode or mode, group_size)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers one decode step reads: all of them, counted once, except that
    an embedding table only contributes the one row it looks up (unless a linear reads it whole)."""
    seen: set[int] = set()
    embed_rows: dict[int, int] = {}
    total = 0
    for module in model.modules():
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        for t in tensors:
            key = t.data_ptr()
            if isinstance(module, nn.Embedding):
                embed_rows.setdefault(key, t.shape[1] * t.element_size())
                continue
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()
    return total + sum(row for key, row in embed_rows.items() if key not in seen)
