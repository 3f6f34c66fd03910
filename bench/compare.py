"""Decode at batch 1 and prefill of a long prompt: this project vs llama.cpp vs transformers, one run.

Same GGUF (the embedded SmolLM2-135M-Instruct Q4_1 unless --model), same prompt tokens, same
thread count. Prints one JSON line with each figure and the ratios. Aggregate throughput of 16
concurrent requests is `bench/throughput.py`.

    .venv/bin/python bench/compare.py [--model FILE.gguf] [--prompt-len 512] [--gen-len 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import llama_python, note

from mistral_nemo.engine.generate import generate
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.model.embedded import embedded_model_path
from mistral_nemo.model.loading import load

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


def ours(model: Path, prompt: list[int], gen_len: int, quantization: str) -> dict[str, float]:
    loaded = load(model, dtype=torch.float32, device="cpu", quantization=quantization)
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
    parser.add_argument("--quantization", choices=["none", "int8", "int4"], default="none", help="ours only")
    args = parser.parse_args()
    model = args.model or embedded_model_path()
    threads = torch.get_num_threads()
    vocab = load(model, dtype=torch.float32, device="cpu").args.vocab_size
    prompt = torch.randint(
        100, vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(0)
    ).tolist()

    figures: dict[str, dict[str, float]] = {}
    note("ours")
    figures["ours"] = ours(model, prompt, args.gen_len, args.quantization)
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
        f"{kind}_vs_{other}": round(rates["ours"][kind] / rates[other][kind], 3)
        for other in rates
        if other != "ours"
        for kind in ("prefill_tok_s", "decode_tok_s")
    }
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
                "llama_cpp_version": llama_version,
                "rates": rates,
                "ratios": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
