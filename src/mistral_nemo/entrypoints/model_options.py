"""Options shared by the commands that run a model, loading it with a note on stderr, and streaming
one request through the engine.

Importing this module is cheap (no torch): `mistral-nemo --help`, `tokenize`, `download` and
`chat --url` never load what they do not use. Defaults shown in help texts come from EngineConfig
and the model's GenerationDefaults, never restated here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mistral_nemo.model.load_options import DTYPE_NAMES, QUANTIZATIONS

if TYPE_CHECKING:
    from mistral_nemo.engine.config import EngineConfig
    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.entrypoints.repetition_guard import RepetitionGuard
    from mistral_nemo.model.generation_defaults import GenerationDefaults
    from mistral_nemo.model.loading import LoadedModel

# flag dest -> SamplingParams field; every one defaults to None, meaning "the model's default".
SAMPLING_FLAGS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
    "max_tokens",
    "seed",
)


def add_model_argument(parser: argparse.ArgumentParser, lora: bool = True) -> None:
    """MODEL, --dtype, --device, --quantization, --threads and (unless lora=False: `serve` has its own)
    --lora PATH."""
    parser.add_argument(
        "model",
        nargs="?",
        help="a Mistral folder, an HF folder or a GGUF file (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help="embedding, norms and activations (default: by size and device; float32 for int8 / int4 on CPU)",
    )
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
        "-t",
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads for the model (torch and numba; default: torch's choice, one per core)",
    )
    if lora:
        parser.add_argument(
            "--lora",
            metavar="PATH",
            help="a LoRA adapter applied on load: mistral-finetune's lora.safetensors (or its checkpoint "
            "folder) or a PEFT folder",
        )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's limits: --kv-cache-memory SIZE, --max-model-len N (see engine_config_from_args)."""
    parser.add_argument(
        "--kv-cache-memory",
        type=size_argument,
        metavar="SIZE",
        help="memory for the KV cache, e.g. 512MiB or 4GiB (default: the engine's, 2GiB on CPU)",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        metavar="N",
        help="longest prompt + answer, in tokens (default: the model's context)",
    )
    parser.add_argument(
        "--speculative",
        choices=["ngram"],
        help="speculative decoding: ngram drafts the next tokens from the prompt and output so far (prompt "
        "lookup) and verifies them in one pass; output is unchanged, faster when answers repeat the input",
    )
    parser.add_argument(
        "--speculative-tokens",
        type=positive_int,
        metavar="K",
        help="most tokens drafted per step with --speculative (default 7; fewer when acceptance is low)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser, max_tokens: int) -> None:
    """Sampling flags; any left out takes the model's default (see model/generation_defaults.py)."""
    group = parser.add_argument_group("sampling (default: the model's own settings; a flag always wins)")
    group.add_argument("--temperature", type=float, help="0 is greedy (embedded model: 0; NeMo: 0.3)")
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=int, help="0: no cut")
    group.add_argument("--min-p", type=float)
    group.add_argument("--repetition-penalty", type=float, help="1: none (HF / vLLM meaning)")
    group.add_argument("--presence-penalty", type=float)
    group.add_argument("--frequency-penalty", type=float)
    group.add_argument("--min-tokens", type=int, help="generate at least this many tokens")
    group.add_argument("--max-tokens", type=int, help=f"default: the model's, else {max_tokens}")
    group.add_argument("--seed", type=int, help="make sampling repeatable")
    parser.set_defaults(default_max_tokens=max_tokens)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def size_argument(text: str) -> int:
    from mistral_nemo.engine.config import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError("the size must be positive")
    return size


def sampling_params(args: argparse.Namespace, defaults: GenerationDefaults, **extra: Any) -> SamplingParams:
    """The model's defaults, the command's max_tokens default, then every flag the user gave."""
    from mistral_nemo.engine.sampling_params import SamplingParams

    fields: dict[str, Any] = {"max_tokens": args.default_max_tokens, **defaults.sampling_fields()}
    fields.update({name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None})
    return SamplingParams(**fields, **extra)


def apply_threads(threads: int | None) -> None:
    """--threads N: torch's intra-op pool and numba's pool. Call it before numba is imported: numba's
    kernels (decode attention, quantized layers) share OpenMP with torch, and its first launch sets
    OpenMP's count, torch's included, to the size of numba's pool, which numba fixes at import."""
    if threads is None:
        return
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if "numba" in sys.modules:  # too late to size its pool; at least cap what it uses
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def load_for_cli(args: argparse.Namespace) -> LoadedModel:
    import torch

    from mistral_nemo.model.loading import load

    apply_threads(args.threads)
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype) if args.dtype else None
    loaded = load(args.model, dtype=dtype, device=args.device, quantization=args.quantization, lora=args.lora)
    print(
        f"Loaded {loaded.name} ({loaded.format}, {loaded.args.num_parameters() / 1e6:,.0f}M parameters) "
        f"in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return loaded


def engine_config_from_args(args: argparse.Namespace, **fields: int) -> EngineConfig:
    """An EngineConfig with the --kv-cache-memory / --max-model-len limits, plus `fields`."""
    from mistral_nemo.engine.config import EngineConfig

    config = EngineConfig(**fields)
    if args.kv_cache_memory is not None:
        config.kv_cache_memory = args.kv_cache_memory
    if args.max_model_len is not None:
        if args.max_model_len < 2:
            raise ValueError("--max-model-len must be at least 2")
        config.max_model_len = args.max_model_len
    speculative = getattr(args, "speculative", None)
    tokens = getattr(args, "speculative_tokens", None)
    if tokens is not None and speculative is None:
        raise ValueError("--speculative-tokens needs --speculative ngram")
    if speculative is not None:
        from mistral_nemo.engine.speculative.config import SpeculativeConfig

        config.speculative_config = (
            SpeculativeConfig(method=speculative)
            if tokens is None
            else SpeculativeConfig(method=speculative, num_speculative_tokens=tokens)
        )
    return config


def single_request_engine(loaded: LoadedModel, config: EngineConfig | None = None) -> LLMEngine:
    """An engine for one terminal user: one sequence at a time, the engine's other limits."""
    from dataclasses import replace

    from mistral_nemo.engine.config import EngineConfig
    from mistral_nemo.engine.llm_engine import LLMEngine

    return LLMEngine(loaded, replace(config or EngineConfig(), max_num_seqs=1))


def engine_for_cli(args: argparse.Namespace, loaded: LoadedModel) -> LLMEngine:
    return single_request_engine(loaded, engine_config_from_args(args))


def stream_text(
    engine: LLMEngine,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    guard: RepetitionGuard | None = None,
) -> Iterator[str]:
    """Run one request through the engine to the end, yielding each new piece of its text.

    Stopping early (the caller closes the generator, Ctrl-C, or `guard` sees a loop) aborts the
    request. Like the server, max_tokens is cut to the room left in the context and the cache.
    """
    room = engine.capacity_tokens - len(prompt_ids)
    if params.max_tokens is not None and 1 <= room < params.max_tokens:
        params = params.clone(max_tokens=room, min_tokens=min(params.min_tokens, room))
    request_id = f"cli-{uuid.uuid4().hex}"
    engine.add_request(request_id, list(prompt_ids), params)
    try:
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.request_id != request_id:
                    continue
                completion = output.outputs[0]
                if completion.delta_text:
                    yield completion.delta_text
                if guard is not None and guard.add(list(completion.delta_token_ids)):
                    return
    finally:
        engine.abort_request(request_id)  # no-op once finished
