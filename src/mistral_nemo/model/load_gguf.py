"""A GGUF file (llama.cpp, architecture `llama`): quantized blocks, interleaved RoPE, tokenizer inside.

The header is parsed by tokenizer.gguf_metadata (fast; gguf.GGUFReader takes seconds to open a
file with a large vocabulary). Each tensor's bytes are read (pread-style) into a fresh buffer that is
dropped once the tensor is decoded: pages of a memory map would count in RSS for as long as it is
mapped, so the peak stays near the loaded model's own size plus one tensor.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from torch import nn

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.gguf_quants import UnsupportedQuantizationError, block_size, dequantize
from mistral_nemo.model.weights import CheckpointError, interleaved_to_half
from mistral_nemo.tokenizer.gguf_metadata import GgufTensorInfo, is_gguf_file

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
_TOP_LEVEL = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_IN_LAYER = {
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}

_FLOAT_TYPES = frozenset({QT.F32, QT.F16, QT.BF16})

is_gguf = is_gguf_file


def read_gguf_args(meta: dict[str, Any], tensors: list[GgufTensorInfo]) -> ModelArgs:
    names = {t.name for t in tensors}
    return ModelArgs.from_gguf_metadata(meta, tied_embeddings="output.weight" not in names)


def gguf_name(name: str) -> str | None:
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    match = _LAYER.match(name)
    if match and match.group(2) in _IN_LAYER:
        return f"layers.{match.group(1)}.{_IN_LAYER[match.group(2)]}"
    if name == "rope_freqs.weight":
        return None
    raise CheckpointError(f"unexpected tensor {name!r} in GGUF file")


def iter_gguf_tensors(
    path: Path, tensors: list[GgufTensorInfo], args: ModelArgs, compact: bool = False
) -> Iterator[tuple[str, torch.Tensor | nn.Module]]:
    """Tensors under our names, q/k rows converted to rotate-half.

    compact=False: every tensor dequantized to float32.
    compact=True: each quantized linear weight (attention, feed-forward, output) comes as a compact
    Int8Linear / Int4Linear built from its blocks (quant/gguf_blocks.py: exact for Q8_0, Q4_0, Q4_1,
    Q4_K, Q6_K; other types requantized to int8). With tied embeddings and a quantized token_embd, a
    compact `output.weight` made from the same blocks follows the float `tok_embeddings.weight`.
    Embeddings, norms and F32/F16/BF16 weights stay float32 tensors.
    """
    with open(path, "rb", buffering=0) as f:
        file_size = f.seek(0, io.SEEK_END)
        for info in tensors:
            ours = gguf_name(info.name)
            if ours is None:
                continue
            shape = tuple(reversed(info.dims))  # GGUF lists dims fastest-first
            raw = _read_tensor(f, info, file_size, path)
            try:
                decoded = _decode(raw, info.qtype, shape, ours, args, compact)
            except UnsupportedQuantizationError as e:
                raise UnsupportedQuantizationError(f"{path}: tensor {info.name}: {e}") from e
            except ValueError as e:
                raise CheckpointError(f"{path}: tensor {info.name} {shape}: {e}") from e
            del raw  # only the decoded form stays alive while the caller holds it
            yield from decoded
            del decoded


def _decode(
    raw: np.ndarray, qtype: int, shape: tuple[int, ...], ours: str, args: ModelArgs, compact: bool
) -> list[tuple[str, torch.Tensor | nn.Module]]:
    heads = _rope_heads(ours, args)
    quantized = QT(qtype) not in _FLOAT_TYPES
    if compact and quantized and _is_linear(ours):
        layer = _compact(raw, qtype, shape)
        if heads:
            from mistral_nemo.model.quant.quantize import rope_row_perm

            layer.permute_rows(rope_row_perm(shape[0], heads))
        return [(ours, layer)]
    weight = dequantize(raw, qtype, shape)
    if heads:
        weight = interleaved_to_half(weight, heads)
    if compact and quantized and ours == "tok_embeddings.weight" and args.tied_embeddings:
        # The output projection reads the same blocks: a compact copy, the lookup table stays float.
        return [(ours, weight), ("output.weight", _compact(raw, qtype, shape))]
    return [(ours, weight)]


def _compact(raw: np.ndarray, qtype: int, shape: tuple[int, ...]) -> nn.Module:
    # Imported here: it loads numba (the compact kernels), which float loads do not need.
    from mistral_nemo.model.quant.gguf_blocks import compact_linear

    rows, cols = shape
    return compact_linear(raw, qtype, (rows, cols))


def _is_linear(ours: str) -> bool:
    return ours == "output.weight" or ours.endswith(_LINEAR_SUFFIXES)


_LINEAR_SUFFIXES = tuple(f"{name}.weight" for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"))


def _rope_heads(ours: str, args: ModelArgs) -> int | None:
    """The head count whose interleaved-pair RoPE rows become rotate-half, for q / k; else None."""
    if ours.endswith("attention.wq.weight"):
        return args.n_heads
    if ours.endswith("attention.wk.weight"):
        return args.n_kv_heads
    return None


def _read_tensor(f: io.FileIO, info: GgufTensorInfo, file_size: int, path: Path) -> np.ndarray:
    """The tensor's raw bytes, read into a fresh buffer (uint8)."""
    elements_per_block, bytes_per_block = block_size(info.qtype)
    numel = prod(info.dims)
    if numel % elements_per_block:
        raise CheckpointError(
            f"{path}: tensor {info.name} has {numel} values, not a whole number of "
            f"{QT(info.qtype).name} blocks of {elements_per_block}"
        )
    nbytes = numel // elements_per_block * bytes_per_block
    if info.offset + nbytes > file_size:
        raise CheckpointError(f"{path} is truncated: tensor {info.name} ends past the end of the file")
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)
    f.seek(info.offset)
    done = 0
    while done < nbytes:  # a raw read may return less than asked
        got = f.readinto(view[done:])
        if not got:
            raise CheckpointError(f"{path} is truncated: tensor {info.name} ends past the end of the file")
        done += got
    return buf
