"""The quantized checkpoint format written by `mistral-nemo quantize`: a folder that loads directly.

    params.json        our ModelArgs (to_dict), so the model reads back identically
    model.safetensors  float tensors under our names (embedding, norms, float linears), and for each
                       compact linear its buffers under `<linear>.<buffer>` (layers.0.attention.wq.qweight,
                       layers.0.attention.wq.scale ...); metadata {"format": FORMAT, "version": VERSION,
                       "quantization": the mode, "layers": JSON {linear: {"class", "group_size"}}}
    tokenizer files    copied from the source folder (tekken.json or tokenizer.json + ...)

Weights are stored in our rotate-half RoPE row order, so nothing is permuted when they are read.
With tied embeddings the output projection's compact copy is stored like any linear (the embedding
stays float); a file without one gets it made from the embedding on load, in the recorded mode.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.weights import CheckpointError, Part, read_part

FORMAT = "mistral-nemo-quantized"
# 2: int4 nibbles pair values j and j + 16 of every 32-value block (was: of every group). Version 1
# files read the same unless they hold int4 layers with groups larger than 32.
VERSION = "2"
WEIGHTS = "model.safetensors"
PARAMS = "params.json"


@dataclass(frozen=True)
class LayerFormat:
    """How a compact linear class is rebuilt: its constructor takes these buffers, in this order."""

    cls: type[nn.Module]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()  # buffers that may be None (not stored then)

    def build(self, buffers: dict[str, torch.Tensor]) -> nn.Module:
        missing = [b for b in self.required if b not in buffers]
        unknown = sorted(set(buffers) - set(self.required) - set(self.optional))
        if missing or unknown:
            raise ValueError(f"missing buffers {missing}, unknown buffers {unknown}")
        return self.cls(*(buffers[b] for b in self.required), *(buffers.get(b) for b in self.optional))


def layer_formats() -> dict[str, LayerFormat]:
    """Class name -> how to rebuild it: Int8Linear, Int4Linear, and Fp8Linear when its module exists."""
    from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear

    formats = [
        LayerFormat(Int8Linear, ("qweight", "scale")),
        LayerFormat(Int4Linear, ("packed", "scale", "zero")),
    ]
    try:
        from mistral_nemo.model.quant.fp8 import Fp8Linear

        formats.append(LayerFormat(Fp8Linear, ("weight", "weight_scale"), ("act_scale",)))
    except ImportError:  # FP8 support not in this build: such files say so when read
        pass
    return {f.cls.__name__: f for f in formats}


def read_metadata(folder: Path) -> dict[str, str] | None:
    """The format metadata of folder/model.safetensors if it is our quantized format, else None."""
    path = folder / WEIGHTS
    if not (folder / PARAMS).is_file() or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError):
        return None
    return meta if meta.get("format") == FORMAT else None


def is_quantized_checkpoint(folder: Path) -> bool:
    return read_metadata(folder) is not None


def read_args(folder: Path) -> ModelArgs:
    return ModelArgs.from_params_json(json.loads((folder / PARAMS).read_text()))


def layer_classes(folder: Path) -> dict[str, str]:
    """Linear name -> class name of the compact layers a quantized folder holds."""
    meta = _checked_metadata(folder)
    return {name: spec["class"] for name, spec in _layers(meta, folder).items()}


def iter_quantized_tensors(
    folder: Path, part: Callable[[str], Part | None] | None = None
) -> Iterator[tuple[str, torch.Tensor | nn.Module]]:
    """Float tensors as they are and compact linears (under `<linear>.weight`), one read per tensor:
    no float copy of a quantized linear is ever made.

    part: the rows / columns of each weight to read (a tensor-parallel rank's; None: whole), through
    get_slice; a compact linear's scales are cut with it, on its group boundaries."""
    meta = _checked_metadata(folder)
    layers = _layers(meta, folder)
    formats = layer_formats()
    if meta.get("version") == "1" and any(
        s["class"] == "Int4Linear" and (s.get("group_size") or 32) > 32 for s in layers.values()
    ):
        raise CheckpointError(
            f"{folder} holds int4 layers with groups larger than 32 in the nibble order of {FORMAT} "
            f"version 1, which this build does not read; quantize the model again"
        )
    for spec in layers.values():
        if spec["class"] not in formats:
            raise CheckpointError(
                f"{folder} holds {spec['class']} layers, which this build cannot load "
                f"(known: {', '.join(sorted(formats))})"
            )
    with safe_open(str(folder / WEIGHTS), framework="pt") as f:
        grouped: dict[str, dict[str, str]] = {}
        floats: list[str] = []
        for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
            linear, _, buffer = key.rpartition(".")
            if linear in layers:
                grouped.setdefault(linear, {})[buffer] = key
            else:
                floats.append(key)
        for key in sorted(floats):
            yield key, read_part(f, key, part(key) if part is not None else None)
        for linear in sorted(layers):
            spec = layers[linear]
            keys = grouped.get(linear, {})
            where = part(f"{linear}.weight") if part is not None else None
            try:
                if where is None:
                    buffers = {b: f.get_tensor(k) for b, k in keys.items()}
                else:
                    from mistral_nemo.model.quant.shard import linear_part

                    known = formats[spec["class"]]
                    unknown = sorted(set(keys) - set(known.required) - set(known.optional))
                    if unknown:
                        raise ValueError(f"unknown buffers {unknown}")
                    slices = {b: f.get_slice(k) for b, k in keys.items()}
                    buffers = linear_part(f"{linear}.weight", spec["class"], slices, *where)
                module = formats[spec["class"]].build(buffers)
            except CheckpointError:
                raise
            except (TypeError, ValueError, RuntimeError, KeyError) as exc:
                raise CheckpointError(
                    f"{folder}: layer {linear} ({spec['class']}) is damaged: {exc}"
                ) from None
            if (
                spec.get("group_size") is not None
                and (where is None or where[0] == 0)  # a column cut narrows a per-row int8 "group"
                and getattr(module, "group_size", None) != spec["group_size"]
            ):
                raise CheckpointError(f"{folder}: layer {linear} does not have the group size it records")
            yield f"{linear}.weight", module


def write_checkpoint(
    folder: Path, args: ModelArgs, tensors: Iterable[tuple[str, torch.Tensor | nn.Module]], quantization: str
) -> None:
    """params.json and model.safetensors into `folder` (which must exist), from a loader's tensors.

    Memory: the compact tensors are gathered (the size of the quantized model) and each float linear
    is dropped once quantized; safetensors writes from the tensors' memory, without a second copy.
    """
    flat: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, object]] = {}
    known = layer_formats()
    for name, item in tensors:
        if isinstance(item, nn.Module):
            if type(item).__name__ not in known:  # never write what cannot be read back
                raise ValueError(
                    f"{name}: {type(item).__name__} layers cannot be stored in a {FORMAT} folder"
                )
            linear = name.removesuffix(".weight")
            for buffer, value in item.named_buffers(recurse=False):
                flat[f"{linear}.{buffer}"] = value.detach().cpu().contiguous()
            layers[linear] = {"class": type(item).__name__, "group_size": getattr(item, "group_size", None)}
        else:
            flat[name] = item.detach().cpu().contiguous()
    if args.tied_embeddings and "output" not in layers:
        flat.pop("output.weight", None)  # a float tied copy: the embedding is the output projection
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "quantization": quantization,
        "layers": json.dumps(layers, sort_keys=True),
    }
    (folder / PARAMS).write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    save_file(flat, str(folder / WEIGHTS), metadata=metadata)


def _checked_metadata(folder: Path) -> dict[str, str]:
    meta = read_metadata(folder)
    if meta is None:
        raise CheckpointError(f"{folder} is not a {FORMAT} checkpoint")
    if meta.get("version") not in ("1", VERSION):
        raise CheckpointError(
            f"{folder} is {FORMAT} version {meta.get('version')!r}; this build reads versions 1 and {VERSION}"
        )
    return meta


def _layers(meta: dict[str, str], folder: Path) -> dict[str, dict]:
    try:
        layers = json.loads(meta.get("layers", "{}"))
    except json.JSONDecodeError:
        layers = None
    if not isinstance(layers, dict) or not all(isinstance(s, dict) and "class" in s for s in layers.values()):
        raise CheckpointError(f"{folder}/{WEIGHTS} has damaged metadata: 'layers'")
    return layers
