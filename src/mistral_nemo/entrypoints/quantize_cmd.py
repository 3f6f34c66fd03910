"""`mistral-nemo quantize IN OUT --to int8|int4|fp8`: write a quantized folder that loads directly
(the work is model/quant/convert.py's quantize_checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mistral_nemo.model.load_options import QUANTIZE_TARGETS as TARGETS


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quantize",
        help="write an int8 / int4 / fp8 copy of a Mistral or HF folder that loads directly",
        description=(
            "Example: mistral-nemo quantize ~/mistral_models/Nemo-Instruct ~/mistral_models/Nemo-int8 "
            "--to int8. GGUF files need no conversion: they load quantized as they are."
        ),
    )
    parser.add_argument("input", type=Path, metavar="IN", help="a Mistral or HF model folder")
    parser.add_argument("output", type=Path, metavar="OUT", help="the folder to write")
    parser.add_argument(
        "--to",
        required=True,
        choices=TARGETS,
        help="int8 (per channel), int4 (groups of 32, output projection int8) or fp8 (per channel)",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists and is not empty")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mistral_nemo.model.quant.convert import quantize_checkpoint

    summary = quantize_checkpoint(args.input, args.output, args.to, force=args.force)
    print(
        f"Wrote {summary.output} ({args.to}): {summary.bytes_before / 1e9:.2f} GB -> "
        f"{summary.bytes_after / 1e9:.2f} GB of weights in {summary.seconds:.1f}s"
    )
    return 0
