"""An HF folder: config.json + model*.safetensors (sharded with an index, or one file). Rotate-half RoPE."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.weights import (
    CheckpointError,
    Part,
    open_safetensors,
    read_json,
    read_part,
    safetensors_keys,
)

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_TOP_LEVEL = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_IN_LAYER = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def read_hf_args(folder: Path) -> ModelArgs:
    return ModelArgs.from_hf_config(_object(folder / "config.json"))


def hf_weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map object")
        shards = sorted(set(map(str, weight_map.values())))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index.name} lists shards that are not in {folder}: {', '.join(missing)}")
        return [folder / s for s in shards]
    files = sorted(
        p for p in folder.glob("*.safetensors") if "model.embed_tokens.weight" in safetensors_keys(p)
    )
    if not files:
        raise CheckpointError(f"{folder} has config.json but no safetensors file with HF tensor names")
    return files


def hf_name(name: str) -> str | None:
    """Our name for an HF tensor name; None for tensors we do not use (e.g. rotary buffers)."""
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    match = _LAYER.match(name)
    if match and match.group(2) in _IN_LAYER:
        return f"layers.{match.group(1)}.{_IN_LAYER[match.group(2)]}"
    if name.endswith("rotary_emb.inv_freq"):
        return None
    raise CheckpointError(f"unexpected tensor {name!r} in HF checkpoint")


def iter_hf_tensors(
    files: list[Path], part: Callable[[str], Part | None] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors under our names; part: the rows / columns to read of each (by our name; None: whole),
    through get_slice, so a tensor-parallel rank never touches the rest."""
    for file in files:
        with open_safetensors(file) as f:
            for name in sorted(f.keys()):
                ours = hf_name(name)
                if ours is not None:
                    yield ours, read_part(f, name, part(ours) if part is not None else None)


def _object(path: Path) -> dict:
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config
