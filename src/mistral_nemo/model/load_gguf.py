"""A GGUF file (llama.cpp, architecture `llama`): quantized blocks, interleaved RoPE, tokenizer inside.

The header is parsed by tokenizer.gguf_metadata (fast; gguf.GGUFReader takes seconds to open a
file with a large vocabulary) and the tensor bytes are read from one read-only memory map.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.gguf_quants import block_size, dequantize
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
    path: Path, tensors: list[GgufTensorInfo], args: ModelArgs
) -> Iterator[tuple[str, torch.Tensor]]:
    """Dequantized float32 tensors under our names, q/k rows converted to rotate-half."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for info in tensors:
        ours = gguf_name(info.name)
        if ours is None:
            continue
        shape = tuple(reversed(info.dims))  # GGUF lists dims fastest-first
        elements_per_block, bytes_per_block = block_size(info.qtype)
        nbytes = prod(info.dims) // elements_per_block * bytes_per_block
        if info.offset + nbytes > data.shape[0]:
            raise CheckpointError(f"{path} is truncated: tensor {info.name} ends past the end of the file")
        weight = dequantize(data[info.offset : info.offset + nbytes], info.qtype, shape)
        if ours.endswith("attention.wq.weight"):
            weight = interleaved_to_half(weight, args.n_heads)
        elif ours.endswith("attention.wk.weight"):
            weight = interleaved_to_half(weight, args.n_kv_heads)
        yield ours, weight
