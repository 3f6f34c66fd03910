"""A rank's part of a quantized linear for tensor parallelism, cut together with its scales.

Rows (column-parallel layers) take their own scales. Input columns (row-parallel wo / w2) are cut
on group boundaries, so each group's scale moves whole; a per-channel scale (one per row) stays as
it is, since it still describes every kept column of that row.
"""

from __future__ import annotations

import torch
from torch import nn

from mistral_nemo.model.quant.kernels import BLOCK
from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear
from mistral_nemo.model.weights import CheckpointError


def shard_linear(name: str, layer: nn.Module, dim: int, start: int, end: int) -> nn.Module:
    """Rows (dim 0) or input columns (dim 1) [start, end) of an Int8Linear / Int4Linear."""
    if isinstance(layer, Int8Linear):
        if dim == 0:
            return Int8Linear(layer.qweight[start:end].clone(), layer.scale[start:end].clone())
        scale = layer.scale if layer.scale.shape[1] == 1 else _group_columns(name, layer, start, end)
        return Int8Linear(layer.qweight[:, start:end].clone(), scale.clone())
    if isinstance(layer, Int4Linear):
        if dim == 0:
            return Int4Linear(
                layer.packed[start:end].clone(), layer.scale[start:end].clone(), layer.zero[start:end].clone()
            )
        if start % BLOCK or end % BLOCK:
            raise CheckpointError(f"{name}: columns {start}..{end} are not on int4 block boundaries")
        groups = _group_columns(name, layer, start, end)
        g0, g1 = start // layer.group_size, end // layer.group_size
        # Two values per byte inside each block of 32 columns: whole blocks are whole bytes.
        return Int4Linear(
            layer.packed[:, start // 2 : end // 2].clone(), groups.clone(), layer.zero[:, g0:g1].clone()
        )
    raise CheckpointError(
        f"{name}: {type(layer).__name__} layers cannot be split across ranks yet; "
        "load with quantization 'none', 'int8' or 'int4' for tensor parallelism"
    )


def _group_columns(name: str, layer: nn.Module, start: int, end: int) -> torch.Tensor:
    size = layer.group_size
    if start % size or end % size:
        raise CheckpointError(f"{name}: columns {start}..{end} do not fall on its groups of {size}")
    return layer.scale[:, start // size : end // size]
