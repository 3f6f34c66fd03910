"""Checkpoints in mistral-finetune's layout, plus what resuming needs.

    run_dir/checkpoints/checkpoint_{step:06d}/consolidated/lora.safetensors   the adapter
    run_dir/checkpoints/checkpoint_{step:06d}/consolidated/params.json        model args + "lora"
    run_dir/checkpoints/checkpoint_{step:06d}/consolidated/tekken.json        (or tokenizer.json ...)
    run_dir/checkpoints/checkpoint_{step:06d}/training_state.pt               optimizer, schedule, RNG

A checkpoint is written under a temporary name and renamed, so a crash never leaves half of one; only
the newest `num_ckpt_keep` are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.lora import lora_state_dict
from mistral_nemo.model.transformer import Transformer

ADAPTER_FILE = "lora.safetensors"
STATE_FILE = "training_state.pt"
_TOKENIZER_FILES = ("tekken.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model.v3")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"checkpoint_{step:06d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    found = []
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    for folder in root.iterdir():
        step_text = folder.name.removeprefix("checkpoint_")
        if folder.is_dir() and step_text.isdigit() and (folder / "consolidated" / ADAPTER_FILE).is_file():
            found.append((int(step_text), folder))
    return sorted(found)


def adapter_params(args: ModelArgs, rank: int, scaling: float, dropout: float) -> dict[str, Any]:
    return {**args.to_dict(), "lora": {"enable": True, "rank": rank, "dropout": dropout, "scaling": scaling}}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Transformer,
    lora: dict[str, Any],
    tokenizer_source: Path,
    training_state: dict[str, Any] | None,
    num_keep: int | None,
) -> Path:
    """Write the adapter (and the state to resume from); returns the consolidated folder."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(f"tmp.{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    consolidated = tmp / "consolidated"
    consolidated.mkdir(parents=True)
    dtype = torch.bfloat16 if model.dtype == torch.bfloat16 else torch.float32
    safetensors.torch.save_file(lora_state_dict(model, dtype), str(consolidated / ADAPTER_FILE))
    params = adapter_params(model.args, lora["rank"], lora["scaling"], lora["dropout"])
    (consolidated / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    _copy_tokenizer(tokenizer_source, consolidated)
    if training_state is not None:
        torch.save(training_state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if num_keep is not None:
        for _, old in list_checkpoints(run_dir)[:-num_keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final / "consolidated"


def _copy_tokenizer(source: Path, dest: Path) -> None:
    """The base model's tokenizer files (a GGUF carries its tokenizer inside: nothing to copy)."""
    folder = source if source.is_dir() else None
    if folder is None:
        return
    for name in _TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copy(folder / name, dest / name)


def load_training_state(folder: Path) -> dict[str, Any]:
    return torch.load(folder / STATE_FILE, weights_only=False)
