"""`mistral-nemo finetune CONFIG.yaml`: LoRA / QLoRA training from a mistral-finetune YAML.

`--validate` checks the data (errors by file and line, token counts, an epoch estimate) and exits.
Under `torchrun --nproc-per-node N` the processes train data-parallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mistral_nemo.finetune.config import ConfigError, TrainConfig, load_config
from mistral_nemo.finetune.data.samples import DataError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "finetune",
        help="train a LoRA adapter from a mistral-finetune YAML config",
        description=(
            "Example: mistral-nemo finetune examples/finetune/facts.yaml. Checkpoints go to "
            "run_dir/checkpoints/checkpoint_NNNNNN/consolidated/lora.safetensors; a run_dir that "
            "holds checkpoints is resumed from the newest."
        ),
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.yaml", help="mistral-finetune's YAML")
    parser.add_argument(
        "--validate", action="store_true", help="only check the data and estimate epochs (no training)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except OSError as exc:
        raise ValueError(f"cannot read {args.config}: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise ValueError(f"{args.config}: {exc}") from None
    for note in config.ignored:
        print(f"ignoring config key {note}", file=sys.stderr)
    try:
        return _validate(config) if args.validate else _train(config)
    except DataError as exc:
        raise ValueError(str(exc)) from None


def _validate(config: TrainConfig) -> int:
    from mistral_nemo.finetune.validate import validate_data
    from mistral_nemo.model.embedded import embedded_model_path
    from mistral_nemo.model.loading import detect_format
    from mistral_nemo.tokenizer import load_tokenizer

    path = config.model_path
    source = detect_format(Path(path).expanduser())[1] if path else embedded_model_path()
    report = validate_data(config, load_tokenizer(source), int(os.environ.get("WORLD_SIZE", "1")))
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def _train(config: TrainConfig) -> int:
    import torch.distributed as dist

    from mistral_nemo.finetune.trainer import train

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        result = train(config)
    finally:
        if distributed:
            dist.destroy_process_group()
    if result.last_checkpoint is not None:
        print(f"adapter: {result.last_checkpoint / 'lora.safetensors'}")
    print(f"metrics: {result.metrics}" + (f", loss curve: {result.plot}" if result.plot else ""))
    return 0
