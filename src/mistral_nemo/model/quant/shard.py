"""A rank's part of a quantized linear for tensor parallelism, cut together with its scales.

Rows (column-parallel layers) take their own scales. Input columns (row-parallel wo / w2) are cut
on group boundaries, so each group's scale moves whole; a per-channel scale (one per row) stays as
it is, since it still describes every kept column of that row.

The buffers may be tensors (a layer already built) or safetensors slices (a quantized folder read
with get_slice): either way only the rank's part is copied, the rest is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mistral_nemo.model.quant.kernels import BLOCK
from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear
from mistral_nemo.model.weights import CheckpointError


def shard_linear(name: str, layer: nn.Module, dim: int, start: int, end: int) -> nn.Module:
    """Rows (dim 0) or input columns (dim 1) [start, end) of an Int8Linear / Int4Linear."""
    buffers = dict(layer.named_buffers(recurse=False))
    parts = linear_part(name, type(layer).__name__, buffers, dim, start, end)
    if isinstance(layer, Int8Linear):
        return Int8Linear(parts["qweight"], parts["scale"])
    return Int4Linear(parts["packed"], parts["scale"], parts["zero"])


def linear_part(
    name: str, kind: str, buffers: Mapping[str, Any], dim: int, start: int, end: int
) -> dict[str, torch.Tensor]:
    """The buffers of rows / input columns [start, end) of a `kind` layer (its class name), as
    private contiguous copies; `buffers` are tensors or safetensors slices (indexable, get_shape())."""
    if kind == "Int8Linear":
        qweight, scale = buffers["qweight"], buffers["scale"]
        if dim == 0:
            return {"qweight": _copy(qweight[start:end]), "scale": _copy(scale[start:end])}
        groups = _shape(scale)[1]
        size = _shape(qweight)[1] // groups
        kept = scale[:, :] if groups == 1 else _group_columns(name, scale, size, start, end)
        return {"qweight": _copy(qweight[:, start:end]), "scale": _copy(kept)}
    if kind == "Int4Linear":
        packed, scale, zero = buffers["packed"], buffers["scale"], buffers["zero"]
        if dim == 0:
            return {
                "packed": _copy(packed[start:end]),
                "scale": _copy(scale[start:end]),
                "zero": _copy(zero[start:end]),
            }
        if start % BLOCK or end % BLOCK:
            raise CheckpointError(f"{name}: columns {start}..{end} are not on int4 block boundaries")
        size = _shape(packed)[1] * 2 // _shape(scale)[1]
        # Two values per byte inside each block of 32 columns: whole blocks are whole bytes.
        return {
            "packed": _copy(packed[:, start // 2 : end // 2]),
            "scale": _copy(_group_columns(name, scale, size, start, end)),
            "zero": _copy(_group_columns(name, zero, size, start, end)),
        }
    raise CheckpointError(
        f"{name}: {kind} layers cannot be split across ranks yet; "
        "load with quantization 'none', 'int8' or 'int4' for tensor parallelism"
    )


def _group_columns(name: str, groups: Any, size: int, start: int, end: int) -> Any:
    if start % size or end % size:
        raise CheckpointError(f"{name}: columns {start}..{end} do not fall on its groups of {size}")
    return groups[:, start // size : end // size]


def _shape(buffer: Any) -> tuple[int, ...]:
    return tuple(buffer.shape) if isinstance(buffer, torch.Tensor) else tuple(buffer.get_shape())


def _copy(part: torch.Tensor) -> torch.Tensor:
    """A copy owning its memory (a file slice may still be a view of the file's map)."""
    return part.clone(memory_format=torch.contiguous_format)
