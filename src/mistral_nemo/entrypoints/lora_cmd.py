"""`mistral-nemo lora merge|export`: fold an adapter into a model, or convert it between layouts.

mistral-nemo lora merge MODEL ADAPTER OUT            a Mistral folder with the adapter merged
mistral-nemo lora export ADAPTER --to peft OUT       adapter_config.json + adapter_model.safetensors
mistral-nemo lora export ADAPTER --to mistral OUT    lora.safetensors + params.json (from PEFT)
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The work lives in lora_ops.py, imported when the command runs: it needs torch, and the CLI's other
# commands must start without it.


def run_merge(args: argparse.Namespace) -> int:
    from mistral_nemo.entrypoints.lora_ops import run_merge as merge

    return merge(args)


def run_export(args: argparse.Namespace) -> int:
    from mistral_nemo.entrypoints.lora_ops import run_export as export

    return export(args)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "lora", help="merge a LoRA adapter into a model, or convert it (PEFT <-> mistral)"
    )
    actions = parser.add_subparsers(dest="lora_action", metavar="ACTION", required=True)
    merge = actions.add_parser(
        "merge",
        help="write MODEL with ADAPTER merged, as a Mistral folder",
        description="Example: mistral-nemo lora merge ~/models/Nemo run/checkpoints/checkpoint_000100 "
        "~/models/Nemo-tuned",
    )
    merge.add_argument("model", help="the base: a Mistral or HF folder (float weights)")
    merge.add_argument(
        "adapter", type=Path, help="lora.safetensors, its folder, a checkpoint folder or a PEFT folder"
    )
    merge.add_argument("output", type=Path, metavar="OUT", help="the folder to write (must not exist)")
    merge.set_defaults(run=run_merge)
    export = actions.add_parser(
        "export",
        help="convert an adapter to PEFT (transformers, vLLM) or back to mistral-finetune's layout",
        description="Example: mistral-nemo lora export run/checkpoints/checkpoint_000100 --to peft "
        "my-peft-adapter",
    )
    export.add_argument("adapter", type=Path, help="the adapter to convert")
    export.add_argument("--to", required=True, choices=("peft", "mistral"), help="the layout to write")
    export.add_argument("output", type=Path, metavar="OUT", help="the folder to write")
    export.add_argument(
        "--base",
        help="the base model (read for its head counts) when the adapter has no params.json beside it; "
        "'embedded' for the embedded model",
    )
    export.set_defaults(run=run_export)
