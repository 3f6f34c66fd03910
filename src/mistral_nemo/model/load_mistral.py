"""A Mistral folder: params.json + consolidated.safetensors (+ tekken.json). Interleaved RoPE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.weights import CheckpointError, interleaved_to_half, safetensors_keys


def read_mistral_args(folder: Path) -> ModelArgs:
    return ModelArgs.from_params_json(json.loads((folder / "params.json").read_text()))


def iter_mistral_tensors(files: list[Path], args: ModelArgs) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors under our names (which are Mistral's), q/k rows converted to rotate-half."""
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            for name in sorted(keys):
                if name.endswith((".qscale_weight", ".qscale_act")):
                    continue
                tensor = f.get_tensor(name)
                scale_name = name.removesuffix(".weight") + ".qscale_weight"
                if scale_name in keys:  # FP8 checkpoint: weight = fp8 values x per-tensor scale
                    tensor = tensor.float() * f.get_tensor(scale_name).float()
                yield name, _to_rotate_half(name, tensor, args)


def _to_rotate_half(name: str, tensor: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    if name.endswith("attention.wq.weight"):
        return interleaved_to_half(tensor, args.n_heads)
    if name.endswith("attention.wk.weight"):
        return interleaved_to_half(tensor, args.n_kv_heads)
    return tensor


def mistral_weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.safetensors") if "tok_embeddings.weight" in safetensors_keys(p))
    if not files:
        raise CheckpointError(f"{folder} has params.json but no safetensors file with Mistral tensor names")
    return files
