"""A GGUF file (llama.cpp, architecture `llama`): quantized blocks, interleaved RoPE, tokenizer inside."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.gguf_quants import dequantize
from mistral_nemo.model.weights import CheckpointError, interleaved_to_half

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


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def open_gguf(path: Path) -> GGUFReader:
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable GGUF file (truncated?): {exc}") from exc


def read_gguf_args(reader: GGUFReader, meta: dict) -> ModelArgs:
    names = {t.name for t in reader.tensors}
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


def iter_gguf_tensors(reader: GGUFReader, args: ModelArgs) -> Iterator[tuple[str, torch.Tensor]]:
    """Dequantized float32 tensors under our names, q/k rows converted to rotate-half."""
    for tensor in reader.tensors:
        ours = gguf_name(tensor.name)
        if ours is None:
            continue
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims fastest-first
        weight = dequantize(np.asarray(tensor.data), tensor.tensor_type, shape)
        if ours.endswith("attention.wq.weight"):
            weight = interleaved_to_half(weight, args.n_heads)
        elif ours.endswith("attention.wk.weight"):
            weight = interleaved_to_half(weight, args.n_kv_heads)
        yield ours, weight
