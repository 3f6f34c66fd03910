"""`mistral-nemo generate`: raw text completion (no chat format), streamed to stdout through the engine."""

from __future__ import annotations

import argparse
import sys

from mistral_nemo.entrypoints.model_options import (
    add_engine_arguments,
    add_model_argument,
    add_sampling_arguments,
)

GENERATE_MAX_TOKENS = 128


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("generate", help="complete a raw text prompt")
    add_model_argument(parser)
    parser.add_argument("--prompt", required=True, help="the text to continue ('-' reads standard input)")
    parser.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    parser.add_argument(
        "--include-stop", action="store_true", help="print the stop string that ended the text too"
    )
    parser.add_argument("--no-bos", action="store_true", help="do not start the prompt with the BOS token")
    parser.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    add_sampling_arguments(parser, max_tokens=GENERATE_MAX_TOKENS)
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mistral_nemo.entrypoints.model_options import (
        engine_for_cli,
        load_for_cli,
        sampling_params,
        stream_text,
    )

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    loaded = load_for_cli(args)
    params = sampling_params(
        args, loaded.generation_defaults, stop=args.stop, include_stop_str_in_output=args.include_stop
    )
    engine = engine_for_cli(args, loaded)
    ids = loaded.tokenizer.encode(prompt, bos=loaded.tokenizer.add_bos and not args.no_bos)
    if args.echo:
        print(prompt, end="", flush=True)
    for text in stream_text(engine, ids, params):
        print(text, end="", flush=True)
    print()
    return 0
