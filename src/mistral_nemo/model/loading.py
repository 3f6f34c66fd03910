"""`load(path)`: recognise a checkpoint by its contents and return model, tokenizer and args."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.embedded import embedded_model_path
from mistral_nemo.model.load_gguf import is_gguf, iter_gguf_tensors, read_gguf_args
from mistral_nemo.model.load_hf import hf_weight_files, iter_hf_tensors, read_hf_args
from mistral_nemo.model.load_mistral import iter_mistral_tensors, mistral_weight_files, read_mistral_args
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.model.weights import CheckpointError, build_model
from mistral_nemo.tokenizer import load_tokenizer
from mistral_nemo.tokenizer.gguf_metadata import read_gguf_header

# Above this many parameters a CPU model is kept in bfloat16 (NeMo 12B: 24.5 GB instead of 49 GB).
_BF16_ON_CPU_ABOVE = 2_000_000_000


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Any  # TekkenTokenizer or BpeTokenizer: the interface of mistral_nemo.tokenizer
    args: ModelArgs
    source: Path
    format: str  # "mistral", "hf" or "gguf"
    name: str


def detect_format(path: Path) -> tuple[str, Path]:
    """("mistral" | "hf" | "gguf", the folder or file to read), from the contents."""
    if path.is_file():
        if is_gguf(path):
            return "gguf", path
        raise CheckpointError(f"{path} is not a model: expected a GGUF file or a model folder")
    if not path.is_dir():
        raise CheckpointError(f"model not found: {path}")
    if (path / "params.json").is_file() and any(path.glob("*.safetensors")):
        mistral_weight_files(path)  # raises if the safetensors hold other names
        return "mistral", path
    if (path / "config.json").is_file():
        return "hf", path
    ggufs = [p for p in sorted(path.iterdir()) if p.is_file() and is_gguf(p)]
    if len(ggufs) == 1:
        return "gguf", ggufs[0]
    if len(ggufs) > 1:
        raise CheckpointError(f"{path} holds several GGUF files; name the one to load")
    raise CheckpointError(
        f"{path} is not a model folder: expected params.json + consolidated.safetensors (Mistral), "
        "config.json + model*.safetensors (HF), or a GGUF file"
    )


QUANTIZATIONS = ("none", "int8", "int4")


def load(
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Load a Mistral folder, an HF folder or a GGUF file; None loads the embedded default model.

    quantization "int8" (per-channel) or "int4" (groups of 32, output projection in int8) replaces the
    linear layers with weight-only quantized ones after loading (CPU kernels).
    """
    if (quantization or "none") not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    source = embedded_model_path() if path is None else Path(path).expanduser()
    kind, target = detect_format(source)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if kind == "gguf":
        meta, infos = read_gguf_header(target)
        args = read_gguf_args(meta, infos)
        tensors = iter_gguf_tensors(target, infos, args)
        name = target.stem  # the file name: usable as a model id (general.name may hold spaces)
    elif kind == "mistral":
        args = read_mistral_args(target)
        tensors = iter_mistral_tensors(mistral_weight_files(target), args)
        name = target.name
    else:
        args = read_hf_args(target)
        tensors = iter_hf_tensors(hf_weight_files(target))
        name = _hf_name(target)
    dtype = dtype or _default_dtype(args, device)
    model = build_model(args, tensors, dtype=dtype, device=device)
    if quantization in ("int8", "int4"):
        _quantize(model, quantization)
    tokenizer = load_tokenizer(target)
    if tokenizer.vocab_size > args.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model only {args.vocab_size}"
        )
    return LoadedModel(model=model, tokenizer=tokenizer, args=args, source=target, format=kind, name=name)


def _quantize(model: Transformer, mode: str) -> None:
    if model.device.type != "cpu":
        raise ValueError(f"{mode} quantization has CPU kernels only; load with device='cpu'")
    import numba

    from mistral_nemo.model.quant import quantize_model

    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))  # its own pool
    if mode == "int4":  # groups of 32 with an int8 output keep small models' answers right (measured)
        quantize_model(model, "int4", group_size=32, output_mode="int8")
    else:
        quantize_model(model, "int8")


def _default_dtype(args: ModelArgs, device: torch.device) -> torch.dtype:
    if device.type == "cuda" or args.num_parameters() > _BF16_ON_CPU_ABOVE:
        return torch.bfloat16
    return torch.float32


def _hf_name(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    return str(config.get("_name_or_path") or folder.name)
