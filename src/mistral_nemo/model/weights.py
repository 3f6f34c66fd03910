"""Shared weight plumbing: build on the meta device, assign loaded tensors, convert RoPE layouts."""

from __future__ import annotations

import ctypes
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.transformer import Rotary, Transformer


class CheckpointError(ValueError):
    """A checkpoint is missing tensors, has unexpected ones, or tensors of the wrong shape."""


def safetensors_keys(path: Path) -> set[str]:
    """Tensor names in a safetensors file (reads only its header)."""
    with open_safetensors(path) as f:
        return set(f.keys())


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """safe_open, with a corrupt or truncated file reported as a CheckpointError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from None


# (dim, start, end) of the part of a tensor to read: rows (dim 0) or columns (dim 1) [start, end).
Part = tuple[int, int, int]


def read_part(f: Any, name: str, part: Part | None) -> torch.Tensor:
    """Tensor `name` of an open safetensors file, or only its rows / columns `part`, read through
    get_slice: the rest of the tensor is never touched (may be a view of the file's map)."""
    if part is None:
        return f.get_tensor(name)
    dim, start, end = part
    piece = f.get_slice(name)
    return piece[start:end] if dim == 0 else piece[:, start:end]


def read_json(path: Path) -> Any:
    """A JSON config file; an unreadable one is a CheckpointError naming the file and the place."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not valid JSON: it is not UTF-8 text") from None


def _check_linear_module(name: str, module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    if not name.endswith(".weight") or name == "tok_embeddings.weight" or name.endswith("norm.weight"):
        raise CheckpointError(f"{name!r} is not a linear layer's weight; it cannot be a compact module")
    got = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    if got != shape:
        raise CheckpointError(f"layer {name!r} has shape {got}; the config implies {shape}")
    return module


_MADV_DONTNEED = 4  # Linux


def private_file_maps(files: Iterable[Path]) -> set[tuple[int, int]]:
    """Address ranges of this process's private memory maps of `files` (Linux; empty elsewhere)."""
    if not sys.platform.startswith("linux"):
        return set()
    targets = {str(Path(f).resolve()) for f in files}
    try:
        with open("/proc/self/maps") as maps:
            return {r for r in (_private_map_range(line, targets) for line in maps) if r is not None}
    except OSError:
        return set()


def drop_mapped_pages(ranges: Iterable[tuple[int, int]]) -> None:
    """Take the pages of these file maps out of this process's resident set (madvise DONTNEED).

    safetensors maps a whole file and hands out views into it: the pages a quantized linear was read
    from stay resident (and counted in RSS) while any view, such as the kept embedding, holds the
    map. Only call this on maps whose views were never written (a loader's own, while it reads): their
    pages are clean copies of the file, so a later read of a view faults them back from the page cache.
    """
    ranges = list(ranges)
    if not ranges:
        return
    madvise = _libc_madvise()
    for start, end in ranges:
        madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def copy_out_of_maps(tensor: torch.Tensor, maps: set[tuple[int, int]], chunk_bytes: int) -> torch.Tensor:
    """`tensor` itself if its memory is its own; if it is a view into one of the file `maps`, a
    private contiguous copy made chunk_bytes at a time, the file pages of each chunk dropped after
    it (so a large part, such as a vocabulary share of the embedding, never sits twice in RSS)."""
    address = tensor.untyped_storage().data_ptr()
    inside = [m for m in maps if m[0] <= address < m[1]]
    if not inside:
        return tensor
    out = torch.empty(tensor.shape, dtype=tensor.dtype)
    if tensor.dim() == 0 or tensor.nbytes <= chunk_bytes:
        return out.copy_(tensor)
    step = max(1, chunk_bytes // max(1, tensor[0].nbytes))
    for row in range(0, tensor.shape[0], step):
        out[row : row + step] = tensor[row : row + step]
        drop_mapped_pages(inside)
    return out


def _private_map_range(line: str, targets: set[str]) -> tuple[int, int] | None:
    fields = line.rstrip("\n").split(maxsplit=5)  # address perms offset dev inode path
    if len(fields) < 6 or fields[5] not in targets or not fields[1].endswith("p"):
        return None
    start, end = (int(x, 16) for x in fields[0].split("-"))
    return start, end


def _libc_madvise() -> Callable[..., int]:
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


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
    With tied embeddings a compact `output.weight` becomes the output projection and the embedding
    stays float (a float `output.weight` is the tied copy and is skipped).
    """
    with torch.device("meta"):
        model = Transformer(args)
    expected = {name: p.shape for name, p in model.named_parameters()}
    expected["output.weight"] = torch.Size((args.vocab_size, args.dim))  # named_parameters() skips tied ones
    state: dict[str, torch.Tensor] = {}
    replaced: dict[str, nn.Module] = {}
    for name, tensor in tensors:
        if name == "output.weight" and args.tied_embeddings and not isinstance(tensor, nn.Module):
            continue  # some exports write the tied copy too; a compact output unties it (quantized copy)
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
    if args.tied_embeddings:
        expected.pop("output.weight")
    missing = sorted(set(expected) - set(state) - set(replaced))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensors: {shown}")
    for name, module in replaced.items():
        parent, _, child = name.removesuffix(".weight").rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.to(device))
    if args.tied_embeddings and "tok_embeddings.weight" in state and "output.weight" not in replaced:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True, strict=False)
    if args.tied_embeddings and isinstance(model.output, nn.Linear):
        model.output.weight = model.tok_embeddings.weight
    model.rotary = Rotary(args.head_dim, args.rope_theta).to(device)  # buffers are not in checkpoints
    return model.eval().requires_grad_(False)
