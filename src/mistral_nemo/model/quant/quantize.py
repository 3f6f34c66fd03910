"""Model-level helpers: swap a Transformer's linears for quantized ones, and count decode bytes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import nn

from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.model.weights import interleaved_to_half

QuantMode = Literal["int8", "int4"]
LoadMode = Literal["auto", "none", "int8", "int4", "fp8"]
# What load() makes of the linears: these modes produce compact layers (see quantize_on_load).
QUANTIZED_MODES = ("int8", "int4", "fp8")
_ATTN = ("wq", "wk", "wv", "wo")
_FFN = ("w1", "w2", "w3")
_LINEAR_SUFFIXES = tuple(f".attention.{n}.weight" for n in _ATTN) + tuple(
    f".feed_forward.{n}.weight" for n in _FFN
)
INT4_GROUP = 32  # load()'s int4: groups of 32 with an int8 output keep small models' answers right (measured)


def quantize_linear(linear: nn.Linear | torch.Tensor, mode: QuantMode, group_size: int = 64) -> nn.Module:
    """One layer: int8 per output channel, or int4 in groups of `group_size`."""
    if mode == "int8":
        return Int8Linear.from_float(linear)
    if mode == "int4":
        return Int4Linear.from_float(linear, group_size=group_size)
    raise ValueError(f"unknown quantization mode {mode!r}; expected 'int8' or 'int4'")


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
    from mistral_nemo.model.quant.fused_decode import FusedDecoder  # imports numba: on demand

    FusedDecoder.attach(model)
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


def is_linear_weight(name: str) -> bool:
    """Whether a checkpoint name (ours) is a linear layer's weight: attention, feed-forward, output."""
    return name == "output.weight" or name.endswith(_LINEAR_SUFFIXES)


def quantize_weight(weight: torch.Tensor, mode: str, is_output: bool = False) -> nn.Module:
    """load()'s choice per mode: int8 per channel; int4 in groups of 32 with an int8 output projection;
    fp8 per channel (Fp8Linear). Made where the weight is read (CPU); the loader moves it."""
    if mode == "int8" or (mode == "int4" and is_output):
        return Int8Linear.from_float(weight)
    if mode == "int4":
        return Int4Linear.from_float(weight, group_size=INT4_GROUP)
    if mode == "fp8":
        return _fp8_class().from_float(weight, per_channel=True)
    raise ValueError(f"unknown quantization mode {mode!r}; expected 'int8', 'int4' or 'fp8'")


def quantize_on_load(
    tensors: Iterable[tuple[str, torch.Tensor | nn.Module]],
    mode: LoadMode,
    tied_output: str | None = None,
) -> Iterator[tuple[str, torch.Tensor | nn.Module]]:
    """A loader's tensors with each linear converted as it arrives (peak: compact model + one tensor).

    auto keeps what the loader gives (float or compact); none dequantizes compact layers to float;
    int8 / int4 / fp8 quantize float linears, keep compact layers already in the asked form (no second
    rounding of GGUF blocks) and requantize the others: int8 asks every layer in int8 (the fast
    decode kernel); int4 asks int4 for the body and takes the output projection in int8 or int4.
    tied_output: with tied embeddings, the mode of the output projection's own compact copy: the
    file's compact copy if it has one (GGUF: the embedding's blocks), else made from the embedding at
    the end (None: the output stays tied to the float embedding). A float tied copy is dropped.
    """
    embedding: torch.Tensor | None = None
    has_output = False
    for name, item in tensors:
        if tied_output is not None and name == "output.weight":
            if isinstance(item, nn.Module):  # the file's compact copy wins over requantizing the embedding
                has_output = True
                yield name, _convert_linear(name, item, tied_output)
            continue
        if is_linear_weight(name):
            item = _convert_linear(name, item, mode)
        elif tied_output is not None and name == "tok_embeddings.weight":
            embedding = item  # type: ignore[assignment]
        yield name, item
    if embedding is not None and not has_output:
        yield "output.weight", quantize_weight(embedding, tied_output or "", is_output=True)


def _convert_linear(name: str, item: torch.Tensor | nn.Module, mode: str) -> torch.Tensor | nn.Module:
    compact = isinstance(item, nn.Module)
    if mode == "auto" or (mode == "none" and not compact):
        return item
    if compact and mode != "none" and isinstance(item, _kept_classes(mode, name == "output.weight")):
        return item
    weight = item.dequantize() if compact else item  # type: ignore[operator]
    if mode == "none":
        return weight
    return quantize_weight(weight, mode, is_output=name == "output.weight")


def _kept_classes(mode: str, is_output: bool) -> tuple[type, ...]:
    if mode == "fp8":
        return (_fp8_class(),)
    if mode == "int4":  # the output keeps more bits if the file gave it more (llama.cpp's Q4 files do)
        return (Int8Linear, Int4Linear) if is_output else (Int4Linear,)
    return (Int8Linear,)


def _fp8_class() -> type:
    try:
        from mistral_nemo.model.quant.fp8 import Fp8Linear
    except ImportError as exc:
        raise ValueError(f"fp8 quantization is not available in this build: {exc}") from None
    return Fp8Linear
