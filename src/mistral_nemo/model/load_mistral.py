"""A Mistral folder: params.json + consolidated.safetensors (+ tekken.json). Interleaved RoPE."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.weights import (
    CheckpointError,
    Part,
    interleaved_to_half,
    open_safetensors,
    read_json,
    read_part,
    safetensors_keys,
)


def read_mistral_args(folder: Path) -> ModelArgs:
    params = read_json(folder / "params.json")
    if not isinstance(params, dict):
        raise CheckpointError(f"{folder / 'params.json'} must hold a JSON object")
    return ModelArgs.from_params_json(params)


def iter_mistral_tensors(
    files: list[Path],
    args: ModelArgs,
    keep_fp8: bool = False,
    part: Callable[[str], Part | None] | None = None,
) -> Iterator[tuple[str, torch.Tensor | nn.Module]]:
    """Tensors under our names (which are Mistral's), q/k rows converted to rotate-half.

    FP8 checkpoints store `<name>.weight` as float8_e4m3fn next to `<name>.qscale_weight` (w = fp8 x
    qscale_weight; one number, or one per output row) and `<name>.qscale_act` (the static activation
    scale: x_fp8 = x / qscale_act), as vLLM's Mistral loader reads them. keep_fp8=False dequantizes
    to float32; keep_fp8=True yields each such weight as an Fp8Linear holding the fp8 bytes as they are.

    part: the rows / columns of each tensor to read (a tensor-parallel rank's, by name; None: whole),
    read through get_slice so the rest is never touched. RoPE rows are converted per head, after the
    cut (a rank holds whole heads).
    """
    scales = _fp8_scales(files)
    for file in files:
        with open_safetensors(file) as f:
            for name in sorted(f.keys()):
                if name.endswith(_SCALE_SUFFIXES):
                    continue
                where = part(name) if part is not None else None
                base = name.removesuffix(".weight")
                w_scale = scales.get(base + ".qscale_weight") if name.endswith(".weight") else None
                if w_scale is not None and where is not None:
                    if keep_fp8:
                        raise CheckpointError(
                            f"{name}: Fp8Linear layers cannot be split across ranks yet; "
                            "load with quantization 'none', 'int8' or 'int4' for tensor parallelism"
                        )
                    if where[0] == 0 and w_scale.numel() > 1:  # per-row scales: this rank's rows
                        w_scale = w_scale.reshape(-1)[where[1] : where[2]]
                tensor = read_part(f, name, where)
                if w_scale is None:
                    yield name, _to_rotate_half(name, tensor, args)
                elif keep_fp8:
                    yield name, _fp8_linear(name, tensor, w_scale, scales.get(base + ".qscale_act"), args)
                else:
                    dequantized = tensor.float() * _row_scale(name, tensor, w_scale)
                    yield name, _to_rotate_half(name, dequantized, args)


_SCALE_SUFFIXES = (".qscale_weight", ".qscale_act")


def _fp8_scales(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every FP8 scale of the checkpoint (a few numbers per layer): a scale may sit in another shard."""
    scales = {}
    for file in files:
        with open_safetensors(file) as f:
            scales.update({k: f.get_tensor(k) for k in sorted(f.keys()) if k.endswith(_SCALE_SUFFIXES)})
    return scales


def _row_scale(name: str, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """qscale_weight shaped to broadcast over the weight: per tensor [], per output row [out, 1]."""
    if scale.numel() == 1:
        return scale.float().reshape(())
    if weight.dim() == 2 and scale.numel() == weight.shape[0]:
        return scale.float().reshape(-1, 1)
    raise CheckpointError(f"{name}: qscale_weight of shape {tuple(scale.shape)} is not per tensor or per row")


def _fp8_linear(
    name: str, weight: torch.Tensor, scale: torch.Tensor, act_scale: torch.Tensor | None, args: ModelArgs
) -> nn.Module:
    from mistral_nemo.model.quant.fp8 import Fp8Linear  # quant pulls in numba: only FP8 loads pay for it
    from mistral_nemo.model.quant.quantize import rope_row_perm

    if weight.dtype != torch.float8_e4m3fn:
        raise CheckpointError(f"{name} has a qscale_weight but dtype {weight.dtype}, not float8_e4m3fn")
    layer = Fp8Linear(weight, _row_scale(name, weight, scale).reshape(-1), act_scale)
    heads = _rope_heads(name, args)
    return layer.permute_rows(rope_row_perm(weight.shape[0], heads)) if heads else layer


def _rope_heads(name: str, args: ModelArgs) -> int | None:
    if name.endswith("attention.wq.weight"):
        return args.n_heads
    if name.endswith("attention.wk.weight"):
        return args.n_kv_heads
    return None


def _to_rotate_half(name: str, tensor: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    if not _rope_heads(name, args) or tensor.dim() != 2 or tensor.shape[0] % args.head_dim:
        return tensor  # not q / k, or a shape that build_model reports
    return interleaved_to_half(tensor, tensor.shape[0] // args.head_dim)  # the heads read: a rank's part


def _has_mistral_names(keys: set[str]) -> bool:
    return any(k == "tok_embeddings.weight" or k.startswith("layers.") for k in keys)


def mistral_weight_files(folder: Path) -> list[Path]:
    # Every shard holding Mistral names (consolidated-00001-of-00002... hold layers without the embedding).
    files = sorted(p for p in folder.glob("*.safetensors") if _has_mistral_names(safetensors_keys(p)))
    if not files:
        raise CheckpointError(f"{folder} has params.json but no safetensors file with Mistral tensor names")
    return files
