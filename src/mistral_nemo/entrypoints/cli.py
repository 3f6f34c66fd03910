"""The `mistral-nemo` command: one subcommand per job, each in its own module.

Each module's top level is light (argparse, no torch): a command imports what it runs inside its
`run`, so `--help`, `tokenize`, `download` and `chat --url` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mistral_nemo import __version__
from mistral_nemo.engine.errors import QueueFullError
from mistral_nemo.entrypoints import (
    bench_cmd,
    chat_cmd,
    download_cmd,
    eval_cmd,
    finetune_cmd,
    generate_cmd,
    lora_cmd,
    quantize_cmd,
    serve_cmd,
    tokenize_cmd,
)
from mistral_nemo.model.embedded import EmbeddedModelError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mistral-nemo", description="Run the Mistral NeMo 12B model family on your own hardware."
    )
    parser.add_argument("--version", action="version", version=f"mistral-nemo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (
        chat_cmd, generate_cmd, serve_cmd, bench_cmd, download_cmd, quantize_cmd, tokenize_cmd,
        finetune_cmd, lora_cmd, eval_cmd,
    ):  # fmt: skip
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError, EmbeddedModelError, QueueFullError) as exc:
        # Users get the reason, not a traceback.
        print(f"mistral-nemo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
