"""Decode at batch 1, prefill of a long prompt and the throughput of 16 concurrent requests: this
project vs llama.cpp vs transformers, in one run.

Ours is measured twice, interleaved: `ours` is the kernel-only path (engine/generate.py: one
sequence, dense cache), `ours_llm` the public API (`LLM.generate`: scheduler, paged cache, sampler,
detokenizer), so `ours_llm_decode_tok_s_vs_ours` is what the engine costs per step on top of the model.

Same GGUF (the embedded SmolLM2-135M-Instruct Q4_1 unless --model), same prompt tokens, same
thread count. Prints one JSON line with each figure and the ratios. Throughput: our engine runs the
16 chat prompts of bench/throughput.py together (continuous batching); llama-cpp-python, which has
no batching, runs them one after the other, as its users do.

    .venv/bin/python bench/compare.py [--model FILE.gguf] [--prompt-len 512] [--gen-len 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import QUESTIONS, cpu_name, llama_python, note, time_llama_cpp, time_ours

from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.llm import LLM
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.embedded import embedded_model_path
from mistral_nemo.model.loading import QUANTIZATIONS, LoadedModel, load
from mistral_nemo.model.quant import weight_bytes
from mistral_nemo.model.quant.simd import host_isa

LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
job = json.load(sys.stdin)
llm = Llama(model_path=job["model"], n_threads=job["threads"], n_threads_batch=job["threads"],
            n_ctx=len(job["prompt"]) + job["gen_len"] + 8, n_batch=512, verbose=False)
def prefill():
    llm.reset()
    start = time.perf_counter()
    llm.eval(job["prompt"])
    return time.perf_counter() - start
prefill()  # warm-up
prefill_s = min(prefill() for _ in range(2))
start = time.perf_counter()
for _ in range(job["gen_len"]):
    llm.eval([llm.sample(top_k=1, temp=0.0)])
decode_s = time.perf_counter() - start
version = __import__("llama_cpp").__version__
print(json.dumps({"prefill_s": prefill_s, "decode_s": decode_s, "version": version}))
"""


def ours(loaded: LoadedModel, prompt: list[int], gen_len: int) -> dict[str, float]:
    """The kernel-only path: engine/generate.py (dense cache, one sequence, no scheduler)."""
    params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    generate(loaded.model, loaded.tokenizer, prompt[:32], params)  # warm-up
    prefill_s = min(
        _timed(lambda: generate(loaded.model, loaded.tokenizer, prompt, params)) for _ in range(2)
    )
    # Decode time: a short prompt, gen_len tokens, minus the prefill of that prompt.
    short = prompt[:16]
    short_prefill = _timed(lambda: generate(loaded.model, loaded.tokenizer, short, params))
    decode = SamplingParams(max_tokens=gen_len + 1, temperature=0, ignore_eos=True)
    decode_s = _timed(lambda: generate(loaded.model, loaded.tokenizer, short, decode)) - short_prefill
    return {"prefill_s": prefill_s, "decode_s": decode_s}


def ours_llm(llm: LLM, prompt: list[int], gen_len: int) -> dict[str, float]:
    """The same figures through the public API users (and the server) take: LLM.generate, batch 1."""
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    llm.generate(prompt[:32], one, use_tqdm=False)  # warm-up
    prefill_s = min(_timed(lambda: llm.generate(prompt, one, use_tqdm=False)) for _ in range(2))
    short = prompt[:16]
    short_prefill = _timed(lambda: llm.generate(short, one, use_tqdm=False))
    decode = SamplingParams(max_tokens=gen_len + 1, temperature=0, ignore_eos=True)
    decode_s = _timed(lambda: llm.generate(short, decode, use_tqdm=False)) - short_prefill
    return {"prefill_s": prefill_s, "decode_s": decode_s}


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The least disturbed of several runs (shortest time per figure): the machine may be shared."""
    return {key: min(r[key] for r in runs) for key in runs[0]}


def transformers_figures(model: Path, prompt: list[int], gen_len: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        str(model.parent), gguf_file=model.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        hf(ids[:, :32])  # warm-up
        prefill_s = min(_timed(lambda: hf(ids)) for _ in range(2))
        short = ids[:, :16]
        args = {"do_sample": False, "pad_token_id": 0}
        one = _timed(lambda: hf.generate(short, max_new_tokens=1, min_new_tokens=1, **args))
        full = _timed(
            lambda: hf.generate(short, max_new_tokens=gen_len + 1, min_new_tokens=gen_len + 1, **args)
        )
    return {"prefill_s": prefill_s, "decode_s": full - one}


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--llama-python", help="a Python with llama_cpp installed (default: auto)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS, default=QUANTIZATIONS[0], help="ours only (default: first)"
    )
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests (0: skip)")
    parser.add_argument("--request-tokens", type=int, default=64, help="tokens each request generates")
    parser.add_argument("--repeats", type=int, default=3, help="our runs, interleaved; the best is kept")
    args = parser.parse_args()
    model = args.model or embedded_model_path()
    threads = torch.get_num_threads()
    loaded = load(model, dtype=torch.float32, device="cpu", quantization=args.quantization)
    prompt = torch.randint(
        100, loaded.args.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
    chats = [loaded.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in questions]
    per_request = SamplingParams(max_tokens=args.request_tokens, temperature=0, ignore_eos=True)
    throughput: dict[str, float] = {}

    figures: dict[str, dict[str, float]] = {}
    # No prefix cache: every repeat prefills the whole prompt, as the kernel-only path does.
    llm = LLM(loaded, kv_cache_memory="512MiB", enable_prefix_caching=False)
    kernel_runs, llm_runs, batched_s = [], [], []
    for repeat in range(args.repeats):  # interleaved, so both paths see the same machine load
        note(f"ours, repeat {repeat + 1}/{args.repeats}: kernel-only, then LLM.generate")
        kernel_runs.append(ours(loaded, prompt, args.gen_len))
        llm_runs.append(ours_llm(llm, prompt, args.gen_len))
        if chats:
            time_ours(loaded, chats[:2], SamplingParams(max_tokens=4, temperature=0), batched=True)  # warm-up
            batched_s.append(time_ours(loaded, chats, per_request, batched=True)[0])
    figures["ours"], figures["ours_llm"] = best_of(kernel_runs), best_of(llm_runs)
    if chats:
        throughput["ours_batched"] = len(chats) * args.request_tokens / min(batched_s)
    python = llama_python(args.llama_python)
    llama_version = None
    if python is not None:
        note(f"llama.cpp via {python}")
        job = {"model": str(model), "threads": threads, "prompt": prompt, "gen_len": args.gen_len}
        proc = subprocess.run(
            [python, "-c", LLAMA_SCRIPT], input=json.dumps(job), capture_output=True, text=True
        )
        if proc.returncode == 0:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            llama_version = result.pop("version")
            figures["llama_cpp"] = result
        else:
            note(f"llama.cpp failed: {proc.stderr.strip()[-300:]}")
        if chats:
            result = time_llama_cpp(python, model, chats, args.request_tokens, threads)
            throughput["llama_cpp_one_by_one"] = len(chats) * args.request_tokens / result["seconds"]
    if not args.skip_transformers:
        note("transformers")
        figures["transformers"] = transformers_figures(model, prompt, args.gen_len)

    rates = {
        name: {
            "prefill_tok_s": round(args.prompt_len / f["prefill_s"], 2),
            "decode_tok_s": round(args.gen_len / f["decode_s"], 2),
        }
        for name, f in figures.items()
    }
    ratios = {
        f"{mine}_{kind}_vs_{other}": round(rates[mine][kind] / rates[other][kind], 3)
        for mine in ("ours", "ours_llm")
        for other in rates
        if other not in ("ours", "ours_llm")
        for kind in ("prefill_tok_s", "decode_tok_s")
    }
    for kind in ("prefill_tok_s", "decode_tok_s"):  # the engine's own cost per step: 1.0 is none
        ratios[f"ours_llm_{kind}_vs_ours"] = round(rates["ours_llm"][kind] / rates["ours"][kind], 3)
    # Each repeat on its own (same load within a repeat): how steady the LLM / kernel ratio is.
    ratios["ours_llm_decode_vs_ours_per_repeat"] = [
        round(k["decode_s"] / m["decode_s"], 3) for k, m in zip(kernel_runs, llm_runs, strict=True)
    ]
    if len(throughput) == 2:
        ratios["throughput_vs_llama_cpp"] = round(
            throughput["ours_batched"] / throughput["llama_cpp_one_by_one"], 3
        )
    print(
        json.dumps(
            {
                "bench": "compare",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "model": model.name,
                "threads": threads,
                "prompt_len": args.prompt_len,
                "gen_len": args.gen_len,
                "ours_quantization": args.quantization,
                "ours_fused_decode": loaded.model.fused_decoder is not None,
                "ours_simd": host_isa(),
                "cpu": cpu_name(),
                "ours_weight_bytes": weight_bytes(loaded.model),
                "requests": args.requests,
                "request_tokens": args.request_tokens,
                "repeats": args.repeats,
                "machine_load_1min": round(os.getloadavg()[0], 2),
                "command": " ".join(["python", *sys.argv]),
                "throughput_tok_s": {k: round(v, 2) for k, v in throughput.items()},
                "llama_cpp_version": llama_version,
                "rates": rates,
                "ratios": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
