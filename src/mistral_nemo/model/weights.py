"""Shared weight plumbing: build on the meta device, assign loaded tensors, convert RoPE layouts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.transformer import Rotary, Transformer


class CheckpointError(ValueError):
    """A checkpoint is missing tensors, has unexpected ones, or tensors of the wrong shape."""


def safetensors_keys(path: Path) -> set[str]:
    """Tensor names in a safetensors file (reads only its header)."""
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows from interleaved-pair RoPE (Mistral, GGUF) to rotate-half (ours, HF)."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def build_model(
    args: ModelArgs,
    tensors: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device | str,
) -> Transformer:
    """Create the model without allocating, then assign each tensor as it is read (low peak memory)."""
    with torch.device("meta"):
        model = Transformer(args)
    expected = {name: p.shape for name, p in model.named_parameters()}
    if args.tied_embeddings:
        expected.pop("output.weight", None)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        if name == "output.weight" and args.tied_embeddings:
            continue  # some exports write the tied copy too
        if name not in expected:
            raise CheckpointError(f"unexpected tensor {name!r} in checkpoint")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensor.shape)}; the config implies {tuple(expected[name])}"
            )
        state[name] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensors: {shown}")
    if args.tied_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if args.tied_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.rotary = Rotary(args.head_dim, args.rope_theta).to(device)  # buffers are not in checkpoints
    return model.eval().requires_grad_(False)
