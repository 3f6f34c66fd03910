"""Shared weight plumbing: build on the meta device, assign loaded tensors, convert RoPE layouts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.transformer import Rotary, Transformer


class CheckpointError(ValueError):
    """A checkpoint is missing tensors, has unexpected ones, or tensors of the wrong shape."""


def safetensors_keys(path: Path) -> set[str]:
    """Tensor names in a safetensors file (reads only its header)."""
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def _check_linear_module(name: str, module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    if not name.endswith(".weight") or name == "tok_embeddings.weight" or name.endswith("norm.weight"):
        raise CheckpointError(f"{name!r} is not a linear layer's weight; it cannot be a compact module")
    got = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    if got != shape:
        raise CheckpointError(f"layer {name!r} has shape {got}; the config implies {shape}")
    return module


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from interleaved-pair RoPE (Mistral, GGUF) to rotate-half (ours, HF)."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def build_model(
    args: ModelArgs,
    tensors: Iterable[tuple[str, torch.Tensor | nn.Module]],
    dtype: torch.dtype,
    device: torch.device | str,
) -> Transformer:
    """Create the model without allocating, then assign each tensor as it is read (low peak memory).

    A loader may yield a compact linear module (a quantized layer: anything with `in_features` and
    `out_features`) under a linear's weight name instead of a tensor; it replaces that nn.Linear as is.
    """
    with torch.device("meta"):
        model = Transformer(args)
    expected = {name: p.shape for name, p in model.named_parameters()}
    if args.tied_embeddings:
        expected.pop("output.weight", None)
    state: dict[str, torch.Tensor] = {}
    replaced: dict[str, nn.Module] = {}
    for name, tensor in tensors:
        if name == "output.weight" and args.tied_embeddings:
            continue  # some exports write the tied copy too
        if name not in expected:
            raise CheckpointError(f"unexpected tensor {name!r} in checkpoint")
        if isinstance(tensor, nn.Module):
            replaced[name] = _check_linear_module(name, tensor, tuple(expected[name]))
            continue
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}; the config implies {tuple(expected[name])}"
            )
        state[name] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state) - set(replaced))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensors: {shown}")
    for name, module in replaced.items():
        parent, _, child = name.removesuffix(".weight").rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.to(device))
    if args.tied_embeddings and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True, strict=False)
    if args.tied_embeddings and isinstance(model.output, nn.Linear):
        model.output.weight = model.tok_embeddings.weight
    model.rotary = Rotary(args.head_dim, args.rope_theta).to(device)  # buffers are not in checkpoints
    return model.eval().requires_grad_(False)
