"""Writing a quantized copy of a Mistral or HF folder (int8 / int4 / fp8) that `load` reads directly.

Each linear is quantized as it is read (peak memory: the quantized model plus one float tensor), the
folder is written under a temporary name and renamed into place, so the output is never half written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from mistral_nemo.model.load_options import QUANTIZE_TARGETS as TARGETS
from mistral_nemo.model.loading import detect_format, read_checkpoint
from mistral_nemo.model.quant.checkpoint import WEIGHTS, write_checkpoint
from mistral_nemo.tokenizer import load_tokenizer

# Not copied beside the new weights: the source's weights, and configs that params.json replaces.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
_REPLACED = {"params.json", "config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


@dataclass
class QuantizeSummary:
    output: Path
    bytes_before: int
    bytes_after: int
    seconds: float


def quantize_checkpoint(source: Path, output: Path, to: str, force: bool = False) -> QuantizeSummary:
    """Quantize the Mistral or HF folder `source` into the folder `output` (see the module docstring)."""
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    started = time.perf_counter()
    source, output = source.expanduser(), output.expanduser()
    kind, target = detect_format(source)
    if kind == "gguf":
        raise ValueError(
            f"{target} is a GGUF file: GGUF files already load quantized as they are (--quantization auto, "
            "the default); quantize reads Mistral or HF folders"
        )
    if kind == "quantized":
        raise ValueError(f"{target} is already quantized; quantize the float (or FP8) folder it came from")
    _check_output(target, output, force)
    load_tokenizer(target)  # before any work: a folder without a tokenizer cannot be loaded
    reader = read_checkpoint(target, to, torch.device("cpu"))
    partial = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        _copy_tokenizer_files(target, partial)
        if load_tokenizer(partial).vocab_size != load_tokenizer(target).vocab_size:
            raise ValueError(f"the tokenizer of {target} did not survive the copy into {output}")
        write_checkpoint(partial, reader.args, reader.tensors, to)
        _move_into_place(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return QuantizeSummary(
        output=output,
        bytes_before=sum(f.stat().st_size for f in reader.weight_files),
        bytes_after=(output / WEIGHTS).stat().st_size,
        seconds=time.perf_counter() - started,
    )


def _check_output(source: Path, output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a folder")
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise ValueError(f"OUT must be a folder outside IN ({source})")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ValueError(f"{output} is not empty; pass --force to replace it")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write {output}: {exc.strerror or exc}") from None
    if not os.access(output.parent, os.W_OK):
        raise ValueError(f"cannot write {output}: {output.parent} is not writable")


def _copy_tokenizer_files(source: Path, folder: Path) -> None:
    """Every small file of the source folder but its weights and configs: the tokenizer files
    (tekken.json, or tokenizer.json + tokenizer_config.json + chat template ...), licence, readme."""
    for path in sorted(source.iterdir()):
        weights_or_config = path.name in _REPLACED or path.name.endswith(_WEIGHT_SUFFIXES)
        if path.is_file() and not path.name.startswith(".") and not weights_or_config:
            shutil.copy2(path, folder / path.name)


def _move_into_place(partial: Path, output: Path) -> None:
    if not output.exists() or not any(output.iterdir()):
        os.replace(partial, output)  # atomic; replaces an empty folder
        return
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(output, old)  # --force: the old folder goes only once the new one is in place
    os.replace(partial, output)
    shutil.rmtree(old, ignore_errors=True)
