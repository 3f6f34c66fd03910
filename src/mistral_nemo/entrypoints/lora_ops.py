"""The work of `mistral-nemo lora merge|export` (lora_cmd.py parses the command line)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import safetensors.torch
import torch

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.loading import detect_format, load, read_checkpoint
from mistral_nemo.model.lora import LoraError, half_to_interleaved
from mistral_nemo.model.lora_files import is_peft_adapter, read_adapter, write_mistral, write_peft

_TOKENIZER_FILES = ("tekken.json", "tokenizer.json", "tokenizer_config.json")


def _base_args(adapter: Path, base: str | None) -> ModelArgs:
    folder = adapter if adapter.is_dir() else adapter.parent
    for params in (folder / "params.json", folder / "consolidated" / "params.json"):
        if params.is_file() and base is None:
            return ModelArgs.from_params_json(json.loads(params.read_text()))
    if base is None:
        raise LoraError(f"{adapter} has no params.json beside it: name the base model with --base MODEL")
    from mistral_nemo.model.embedded import embedded_model_path

    source = embedded_model_path() if base == "embedded" else Path(base).expanduser()
    return read_checkpoint(source, "auto", torch.device("cpu")).args


def run_export(args: argparse.Namespace) -> int:
    model_args = _base_args(args.adapter, args.base)
    tensors, scaling = read_adapter(args.adapter, model_args)
    if args.to == "peft":
        if is_peft_adapter(args.adapter):
            raise LoraError(f"{args.adapter} is a PEFT adapter already")
        write_peft(args.output, tensors, model_args, scaling, base_model=args.base)
    else:
        write_mistral(args.output, tensors, model_args, scaling)
    print(f"Wrote {args.output} ({args.to}, scaling {scaling:g})")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    if args.output.exists():
        raise ValueError(f"{args.output} exists; choose a new folder")
    if detect_format(Path(args.model).expanduser())[0] == "gguf":
        raise ValueError(
            "merging into a GGUF base is not supported (its tokenizer lives in the GGUF); run it with "
            "the adapter instead: mistral-nemo chat MODEL --lora ADAPTER"
        )
    loaded = load(args.model, quantization="none", device="cpu", lora=args.adapter, merge_lora=True)
    state = {}
    for name, tensor in loaded.model.state_dict().items():
        if name == "output.weight" and loaded.args.tied_embeddings:
            continue  # the tied copy; params.json says tied_embeddings
        heads = {"attention.wq.weight": loaded.args.n_heads, "attention.wk.weight": loaded.args.n_kv_heads}
        n = next((h for suffix, h in heads.items() if name.endswith(suffix)), None)
        state[name] = (half_to_interleaved(tensor, n) if n else tensor).contiguous()  # Mistral's RoPE layout
    tmp = args.output.with_name(args.output.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    safetensors.torch.save_file(state, str(tmp / "consolidated.safetensors"))
    (tmp / "params.json").write_text(json.dumps(loaded.args.to_dict(), indent=2) + "\n")
    source = loaded.source if loaded.source.is_dir() else loaded.source.parent
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, tmp / name)
    tmp.rename(args.output)
    print(f"Wrote {args.output} (Mistral folder, adapter merged)")
    return 0
