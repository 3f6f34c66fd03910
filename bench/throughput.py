"""Generation throughput on one GGUF: our batched engine, one request at a time, llama.cpp, transformers.

N chat prompts of mixed lengths, max_tokens each, greedy with ignore_eos (every run writes N * max_tokens
tokens). Runs, all on the same weights with the same thread count, timed end to end (prefill included):
  batched      LLM.generate(all prompts)
  one_by_one   LLM.generate(prompt) for each prompt
  llama_cpp    llama-cpp-python, one prompt at a time (a subprocess in the interpreter that has it)
  transformers AutoModelForCausalLM from the same GGUF (fp32), greedy generate, one prompt at a time
Prints one JSON line. Usage: python bench/throughput.py [--n 16] [--max-tokens 64] [--model PATH] ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mistral_nemo.engine.llm import LLM
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.embedded import embedded_model_path
from mistral_nemo.model.loading import QUANTIZATIONS, LoadedModel, load
from mistral_nemo.model.quant import weight_bytes
from mistral_nemo.model.quant.simd import host_isa

QUESTIONS = [
    "What is the capital of France?",
    "Explain in a few sentences why the sky is blue, and why sunsets are red.",
    "Write a short poem about the sea.",
    "List three uses of baking soda around the house.",
    "What is 17 times 23?",
    "Summarise the plot of Romeo and Juliet for a ten-year-old, in a friendly tone, without spoilers "
    "about the very end if you can avoid them.",
    "How do I reverse a list in Python?",
    "Give me a recipe for pancakes.",
    "Why do cats purr?",
    "Compare the advantages and disadvantages of living in a big city versus a small village, considering "
    "cost of living, jobs, schools, transport, culture, and access to nature.",
    "Translate 'good morning' into Spanish, French and German.",
    "What causes the seasons on Earth?",
    "Name five planets.",
    "Describe how a bicycle works to someone who has never seen one.",
    "What should I pack for a weekend hiking trip in the mountains in early autumn?",
    "Hi!",
]
DEFAULT_LLAMA_PYTHONS = ["/tmp/llamavenv/bin/python"]

LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
job = json.load(sys.stdin)
llm = Llama(model_path=job["model"], n_threads=job["threads"], n_threads_batch=job["threads"],
            n_ctx=job["n_ctx"], verbose=False)
def run(prompt, n):
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == n:
            return out
run(job["prompts"][0], 4)  # warm-up
start = time.perf_counter()
tokens = [run(p, job["max_tokens"]) for p in job["prompts"]]
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens,
                  "version": __import__("llama_cpp").__version__}))
"""


def time_ours(loaded: LoadedModel, prompts: list[list[int]], params: SamplingParams, batched: bool) -> Any:
    llm = LLM(loaded, kv_cache_memory="512MiB")  # fresh: no prefix cache from another run
    start = time.perf_counter()
    if batched:
        outputs = llm.generate(prompts, params, use_tqdm=False)
    else:
        outputs = [llm.generate(p, params, use_tqdm=False)[0] for p in prompts]
    return time.perf_counter() - start, [o.outputs[0].token_ids for o in outputs]


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the JSON line: figures differ across machine kinds."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def note(text: str) -> None:
    print(f"[throughput] {text}", file=sys.stderr, flush=True)


def llama_python(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [os.environ.get("LLAMA_CPP_PYTHON"), *DEFAULT_LLAMA_PYTHONS]
    candidates.append(sys.executable)
    for python in filter(None, candidates):
        if not Path(python).is_file():
            continue
        check = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True, timeout=120)
        if check.returncode == 0:
            return python
    return None


def time_llama_cpp(python: str, model: Path, prompts: list[list[int]], max_tokens: int, threads: int) -> Any:
    n_ctx = max(len(p) for p in prompts) + max_tokens + 16
    job = {"model": str(model), "threads": threads, "n_ctx": n_ctx, "prompts": prompts}
    job["max_tokens"] = max_tokens
    proc = subprocess.run(
        [python, "-c", LLAMA_SCRIPT], input=json.dumps(job), capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_transformers(model: Path, prompts: list[list[int]], max_tokens: int) -> Any:
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf = AutoModelForCausalLM.from_pretrained(str(model.parent), gguf_file=model.name, dtype=torch.float32)
    hf.eval()

    def run(ids: list[int], n: int) -> list[int]:
        with torch.inference_mode():
            out = hf.generate(
                torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )
        return out[0, len(ids) :].tolist()

    run(prompts[0], 4)  # warm-up
    start = time.perf_counter()
    tokens = [run(p, max_tokens) for p in prompts]
    return time.perf_counter() - start, tokens


def agreement(ours: list[list[int]], theirs: list[list[int]], first: int = 16) -> float:
    """Share of prompts whose first `first` greedy tokens are identical."""
    return sum(a[:first] == b[:first] for a, b in zip(ours, theirs, strict=True)) / len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="number of prompts (default 16)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the embedded SmolLM2-135M)")
    parser.add_argument("--threads", type=int, help="torch and llama.cpp threads (default: torch's)")
    parser.add_argument("--llama-python", help="a Python with llama_cpp (default: $LLAMA_CPP_PYTHON, ...)")
    parser.add_argument("--skip-llama-cpp", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS, default=QUANTIZATIONS[0], help="ours only (default: first)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model_path = args.model or embedded_model_path()
    loaded = load(model_path, dtype=torch.float32, device="cpu", quantization=args.quantization)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.n)]
    prompts = [loaded.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    total = args.n * args.max_tokens
    read_per_token = weight_bytes(loaded.model)  # what one decode step reads (tied weights once)

    time_ours(loaded, prompts[:2], SamplingParams(max_tokens=4, temperature=0), batched=True)  # warm-up
    record: dict[str, Any] = {
        "bench": "throughput",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": loaded.name,
        "file": model_path.name,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "ours_dtype": str(loaded.model.dtype).removeprefix("torch."),
        "ours_quantization": args.quantization,
        "ours_fused_decode": loaded.model.fused_decoder is not None,
        "ours_simd": host_isa(),
        "cpu": cpu_name(),
        "ours_weight_bytes": read_per_token,
    }
    tok_s: dict[str, float] = {}
    seconds, batched_tokens = time_ours(loaded, prompts, params, batched=True)
    tok_s["batched"] = total / seconds
    note(f"batched: {tok_s['batched']:.1f} tok/s")
    seconds, single_tokens = time_ours(loaded, prompts, params, batched=False)
    tok_s["one_by_one"] = total / seconds
    note(f"one by one: {tok_s['one_by_one']:.1f} tok/s")
    record["batched_equals_one_by_one"] = agreement(batched_tokens, single_tokens, first=args.max_tokens)
    # Decode is memory-bound: one request at a time reads every weight once per token.
    record["one_by_one_weight_GBps"] = round(read_per_token * tok_s["one_by_one"] / 1e9, 2)

    python = None if args.skip_llama_cpp else llama_python(args.llama_python)
    if python is None:
        record["llama_cpp"] = "skipped: no Python with llama_cpp (see bench/README.md)"
    else:
        try:
            result = time_llama_cpp(python, model_path, prompts, args.max_tokens, threads)
            tok_s["llama_cpp"] = total / result["seconds"]
            note(f"llama.cpp: {tok_s['llama_cpp']:.1f} tok/s")
            record["llama_cpp_version"] = result["version"]
            record["llama_cpp_first16_agree"] = agreement(single_tokens, result["tokens"])
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            record["llama_cpp"] = f"failed: {exc}"
    if args.skip_transformers:
        record["transformers"] = "skipped"
    else:
        seconds, hf_tokens = time_transformers(model_path, prompts, args.max_tokens)
        tok_s["transformers"] = total / seconds
        note(f"transformers: {tok_s['transformers']:.1f} tok/s")
        record["transformers_first16_agree"] = agreement(single_tokens, hf_tokens)

    record["output_tok_s"] = {k: round(v, 2) for k, v in tok_s.items()}
    record["ratios"] = {
        f"{a}/{b}": round(tok_s[a] / tok_s[b], 3)
        for a in ("batched", "one_by_one")
        for b in ("one_by_one", "llama_cpp", "transformers")
        if a != b and b in tok_s
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
