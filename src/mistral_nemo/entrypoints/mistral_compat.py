"""`mistral-chat` and `mistral-demo`: drop-ins for the commands of the archived mistral-inference.

Same positional model folder, same flags (`--max_tokens`, `--temperature`, `--instruct`; the
dashed spellings work too), the same output: answers followed by a line of
"=====================". Differences: Ctrl-D ends the chat cleanly instead of a traceback,
LoRA adapters are refused with a clear message, `--seed N` makes sampling repeatable, and
mistral-chat samples at the model's own defaults (NeMo: 0.3) rather than 0.7 unless --temperature says.
Generation goes through the engine, as every other command's does (same penalties, stops, seeds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mistral_nemo.entrypoints.interrupts import route_ctrl_c_to_main_thread
from mistral_nemo.entrypoints.model_options import single_request_engine, stream_text
from mistral_nemo.entrypoints.tensor_parallel_options import TensorParallelLaunch
from mistral_nemo.model.generation_defaults import GenerationDefaults

if TYPE_CHECKING:  # torch loads inside the commands, after Ctrl-C is routed to the main thread
    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.model.loading import LoadedModel

SEPARATOR = "====================="
DEMO_PROMPTS = (
    "This is a test",
    "This is another great test",
    "This is a third test, mistral AI is very good at testing. ",
)


def _parser(prog: str, temperature: float | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument(
        "model_path", help="a model folder (params.json, consolidated.safetensors, tekken.json)"
    )
    parser.add_argument("--max_tokens", "--max-tokens", dest="max_tokens", type=int, default=35)
    parser.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"default {temperature}" if temperature is not None else "default: the model's (NeMo: 0.3)",
    )
    parser.add_argument("--seed", type=int, help="make sampling repeatable (not in mistral-inference)")
    parser.add_argument(
        "--lora_path", "--lora-path", dest="lora_path", help="a LoRA adapter (lora.safetensors or its folder)"
    )
    parser.add_argument(
        "--num_pipeline_ranks",
        "--num-pipeline-ranks",
        type=int,
        default=1,
        help="split the model over N ranks (tensor parallelism here, not pipeline stages): spawned by this "
        "command, or torchrun's (torchrun --nproc-per-node N ... --num_pipeline_ranks N)",
    )
    return parser


def _params(args: argparse.Namespace, defaults: GenerationDefaults) -> SamplingParams:
    """The model's sampling defaults, under the flags the user gave."""
    from mistral_nemo.engine.sampling_params import SamplingParams

    fields = {**defaults.sampling_fields(), "max_tokens": args.max_tokens, "seed": args.seed}
    if args.temperature is not None:
        fields["temperature"] = args.temperature
    return SamplingParams(**fields)


def complete(engine: LLMEngine, ids: list[int], params: SamplingParams) -> str:
    """The whole answer to `ids`, through the engine."""
    return "".join(stream_text(engine, ids, params))


def _run(main: Any, argv: Sequence[str] | None) -> int:
    try:
        return main(argv)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def mistral_chat(argv: Sequence[str] | None = None) -> int:
    """Interactive loop: `Prompt: `, then the answer. --instruct keeps a chat; otherwise raw text grows."""
    return _run(_mistral_chat, argv)


def _mistral_chat(argv: Sequence[str] | None) -> int:
    parser = _parser("mistral-chat", temperature=None)
    parser.add_argument("--instruct", action="store_true", help="use the chat format")
    args = parser.parse_args(argv)
    route_ctrl_c_to_main_thread()  # before torch starts its threads
    started = _engine(args)
    if started is None:  # a torchrun rank other than 0: it ran the model's steps until rank 0 ended
        return 0
    loaded, engine = started
    tokenizer, params = loaded.tokenizer, _params(args, loaded.generation_defaults)
    messages: list[dict[str, str]] = []
    prompt = ""
    while True:
        try:
            user_input = input("Prompt: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if args.instruct:
            messages.append({"role": "user", "content": user_input})
            ids = tokenizer.encode_chat(messages)
        else:
            prompt += user_input
            ids = tokenizer.encode(prompt, bos=True)
        answer = complete(engine, ids, params)
        print(answer)
        print(SEPARATOR)
        if args.instruct:
            messages.append({"role": "assistant", "content": answer or " "})
        else:
            prompt += answer


def _engine(args: argparse.Namespace) -> tuple[LoadedModel, LLMEngine] | None:
    """The model and a one-sequence engine; with --num_pipeline_ranks N > 1 (or under torchrun) the
    model is split over N tensor-parallel ranks (mistral-inference split it by layers; the answers are
    the same, the memory per rank likewise ~1/N). None on torchrun's ranks other than 0."""
    if args.num_pipeline_ranks < 1:
        raise ValueError(f"--num_pipeline_ranks must be at least 1, got {args.num_pipeline_ranks}")
    options = argparse.Namespace(
        tensor_parallel_size=args.num_pipeline_ranks if args.num_pipeline_ranks > 1 else None,
        model=args.model_path,
        lora=args.lora_path,
        quantization="auto",
    )
    launch = TensorParallelLaunch.from_args(options)
    if launch is None:
        from mistral_nemo.model.loading import load

        loaded = load(args.model_path, lora=args.lora_path)  # a mistral-finetune (or PEFT) adapter
        return loaded, single_request_engine(loaded)
    if launch.is_worker:
        launch.run_worker()
        return None
    from mistral_nemo.engine.config import EngineConfig

    def rank_lost(reason: str) -> None:
        print(f"error: {reason}", file=sys.stderr)

    return launch.build(EngineConfig(max_num_seqs=1), rank_lost)


def mistral_demo(argv: Sequence[str] | None = None) -> int:
    """Complete three fixed prompts and print prompt + completion for each."""
    return _run(_mistral_demo, argv)


def _mistral_demo(argv: Sequence[str] | None) -> int:
    args = _parser("mistral-demo", temperature=0.0).parse_args(argv)
    started = _engine(args)
    if started is None:  # a torchrun rank other than 0: it ran the model's steps until rank 0 ended
        return 0
    loaded, engine = started
    for prompt in DEMO_PROMPTS:
        ids = loaded.tokenizer.encode(prompt, bos=True)
        completion = complete(engine, ids, _params(args, GenerationDefaults(temperature=0.0)))
        print(prompt + completion)
        print(SEPARATOR)
    return 0
