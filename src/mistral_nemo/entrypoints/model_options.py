"""Options shared by the commands that run a model, and loading it with a note on stderr."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterator, Sequence

import torch

from mistral_nemo.engine.config import EngineConfig, parse_size
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.loading import QUANTIZATIONS, LoadedModel, load

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        help="a Mistral folder, an HF folder or a GGUF file (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights dtype (default: by model size)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--quantization",
        choices=list(QUANTIZATIONS),
        default="auto",
        help="linear layers: auto (default) keeps what the file has (GGUF blocks and FP8 stay quantized, "
        "the rest float); none: all float; int8 / int4: weight-only quantization on load (CPU); "
        "fp8: FP8 on load",
    )
    parser.add_argument(
        "--lora",
        metavar="PATH",
        help="a LoRA adapter applied on load: mistral-finetune's lora.safetensors (or its checkpoint folder) "
        "or a PEFT folder",
    )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's limits: --kv-cache-memory SIZE, --max-model-len N (see engine_for_cli)."""
    parser.add_argument(
        "--kv-cache-memory",
        type=size_argument,
        metavar="SIZE",
        help="memory for the KV cache, e.g. 512MiB or 4GiB (default: 2GiB)",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        metavar="N",
        help="longest prompt + answer, in tokens (default: the model's context)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, temperature: float, max_tokens: int) -> None:
    parser.add_argument("--temperature", type=float, default=temperature, help=f"default {temperature}")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help=f"default {max_tokens}")
    parser.add_argument("--seed", type=int, help="make sampling repeatable")


def size_argument(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError("the size must be positive")
    return size


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
    loaded = load(
        args.model,
        dtype=DTYPES.get(args.dtype or ""),
        device=args.device,
        quantization=args.quantization,
        lora=args.lora,
    )
    print(
        f"Loaded {loaded.name} ({loaded.format}, {loaded.args.num_parameters() / 1e6:,.0f}M parameters) "
        f"in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return loaded


def engine_config_from_args(args: argparse.Namespace, **fields: int) -> EngineConfig:
    """An EngineConfig with the --kv-cache-memory / --max-model-len limits, plus `fields`."""
    config = EngineConfig(**fields)
    if args.kv_cache_memory is not None:
        config.kv_cache_memory = args.kv_cache_memory
    if args.max_model_len is not None:
        if args.max_model_len < 2:
            raise ValueError("--max-model-len must be at least 2")
        config.max_model_len = args.max_model_len
    return config


def engine_for_cli(args: argparse.Namespace, loaded: LoadedModel) -> LLMEngine:
    """An engine for one terminal user."""
    return LLMEngine(loaded, engine_config_from_args(args, max_num_seqs=1))


def stream_text(engine: LLMEngine, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[str]:
    """Run one request to the end, yielding each new piece of its text; stopping early aborts it.

    Like single-request generation, max_tokens is cut to the room left in the context and the cache.
    """
    room = engine.capacity_tokens - len(prompt_ids)
    if params.max_tokens is not None and 1 <= room < params.max_tokens:
        params = params.clone(max_tokens=room, min_tokens=min(params.min_tokens, room))
    request_id = f"cli-{uuid.uuid4().hex}"
    engine.add_request(request_id, list(prompt_ids), params)
    try:
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.request_id == request_id and output.outputs[0].delta_text:
                    yield output.outputs[0].delta_text
    finally:
        engine.abort_request(request_id)  # no-op once finished
