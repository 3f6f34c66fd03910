"""`mistral-nemo bench`: one JSON line of speed figures for a model on this machine.

latency: one request; prefill tokens/s and time to first token, then decode tokens/s at batch 1
and the memory bandwidth that implies (weight bytes read per token x tokens/s).
throughput: `--batch` requests at once through the engine; aggregate output tokens/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mistral_nemo import __version__
from mistral_nemo.entrypoints.model_options import add_engine_arguments, add_model_argument

if TYPE_CHECKING:
    from mistral_nemo.engine.llm_engine import EngineStats, LLMEngine
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.model.loading import LoadedModel


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="measure prefill/decode speed; prints one JSON line")
    add_model_argument(parser)
    add_engine_arguments(parser)
    parser.add_argument("--mode", choices=["latency", "throughput"], default="latency")
    parser.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per request (default 512)")
    parser.add_argument("--gen-len", type=int, default=128, help="generated tokens per request (default 128)")
    parser.add_argument(
        "--batch", type=int, default=16, help="requests at once in throughput mode (default 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.entrypoints.model_options import engine_config_from_args, load_for_cli

    if args.prompt_len < 1 or args.gen_len < 2 or args.batch < 1:
        raise ValueError("--prompt-len and --batch must be >= 1, --gen-len >= 2")
    loaded = load_for_cli(args)  # first: --threads must size numba's pool before anything imports numba
    from mistral_nemo.model.quant import weight_bytes as weight_bytes_read

    batch = 1 if args.mode == "latency" else args.batch
    engine = LLMEngine(loaded, engine_config_from_args(args, max_num_seqs=max(batch, 1)))
    prompts = _random_prompts(loaded, batch, args.prompt_len, args.seed)
    params = SamplingParams(max_tokens=args.gen_len, temperature=0, ignore_eos=True)
    _run_requests(
        engine, prompts[:1], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    )  # warm-up
    before = engine.stats()
    figures = _run_requests(engine, prompts, params)
    if engine.config.speculative_config is not None:
        figures.update(_speculation_figures(before, engine.stats()))
    weight_bytes = weight_bytes_read(loaded.model)
    result = {
        "bench": f"mistral-nemo-{args.mode}",
        "model": loaded.name,
        "format": loaded.format,
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "quantization": args.quantization,
        "device": str(loaded.model.device),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        **figures,
        "weight_bytes": weight_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "mistral_nemo": __version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if batch == 1:  # decode reads every weight once per token
        result["bandwidth_gb_s"] = round(weight_bytes * figures["decode_tok_s"] / 1e9, 2)
    print(json.dumps(result))
    return 0


def _speculation_figures(before: EngineStats, after: EngineStats) -> dict[str, float]:
    """Acceptance rate and mean accepted length over the measured run only."""
    drafts = after.spec_verifications - before.spec_verifications
    drafted = after.spec_draft_tokens - before.spec_draft_tokens
    accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
    return {
        "spec_acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "spec_mean_accepted_length": round(accepted / drafts, 3) if drafts else 0.0,
    }


def _random_prompts(loaded: LoadedModel, count: int, length: int, seed: int) -> list[list[int]]:
    import torch

    tokenizer = loaded.tokenizer
    first_text_id = getattr(tokenizer, "num_special_tokens", 0)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(first_text_id, loaded.args.vocab_size, (count, length), generator=generator)
    return ids.tolist()


def _run_requests(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> dict[str, float]:
    """Time prefill (until every request has its first token) and decode (the rest)."""
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"bench-{i}-{started}", prompt, params)
    first_token_at: float | None = None
    generated = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        generated += sum(len(o.delta_token_ids) for out in outputs for o in out.outputs)
        if first_token_at is None and generated >= len(prompts):
            first_token_at = time.perf_counter()
    ended = time.perf_counter()
    assert first_token_at is not None
    prefill_s, decode_s = first_token_at - started, ended - first_token_at
    prompt_tokens = sum(len(p) for p in prompts)
    decode_tokens = generated - len(prompts)
    return {
        "ttft_s": round(prefill_s, 4),
        "prefill_tok_s": round(prompt_tokens / prefill_s, 2),
        "decode_tok_s": round(decode_tokens / decode_s, 2) if decode_s > 0 else 0.0,
        "output_tok_s": round(generated / (ended - started), 2),
    }
