"""Options shared by the commands that run a model, and loading it with a note on stderr."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import LoadedModel, load

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        help="a Mistral folder, an HF folder or a GGUF file (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: by model size)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def add_sampling_arguments(parser: argparse.ArgumentParser, temperature: float, max_tokens: int) -> None:
    parser.add_argument("--temperature", type=float, default=temperature, help=f"default {temperature}")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help=f"default {max_tokens}")
    parser.add_argument("--seed", type=int, help="make sampling repeatable")


def sampling_params(args: argparse.Namespace, **extra: object) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        **extra,  # type: ignore[arg-type]
    )


def load_for_cli(args: argparse.Namespace) -> LoadedModel:
    started = time.perf_counter()
    loaded = load(args.model, dtype=DTYPES.get(args.dtype or ""), device=args.device)
    print(
        f"Loaded {loaded.name} ({loaded.format}, {loaded.args.num_parameters() / 1e6:,.0f}M parameters) "
        f"in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return loaded
