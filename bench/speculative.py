"""Speculative decoding (n-gram prompt lookup) vs plain decode, batch 1, greedy: this project and
llama.cpp on the same GGUF, in one run. Prints one JSON line.

Two sets of chat requests: input-grounded (quote, edit, summarise a given text or code; a
multi-turn chat that repeats its context), where the answer repeats the input and drafts are
accepted, and open-ended (stories), where lookup finds little and speculation must cost nothing.
Ours plain and ours speculative run each request back to back (interleaved, so load drifts hit
both) and must give identical tokens. llama-cpp-python decodes the same prompt ids for as many
tokens as ours produced: plain, and with its prompt-lookup draft (LlamaPromptLookupDecoding)
where the installed version has it. Decode tokens/s: tokens after the first / time after the first.

    .venv/bin/python bench/speculative.py [--model FILE.gguf] [--threads 2] [--tokens 7] [--gen-len 128]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CODE = '''def load_orders(path):
    """Read the orders file and return the paid orders, newest first."""
    orders = []
    with open(path) as handle:
        for line in handle:
            order_id, customer, amount, status = line.strip().split(",")
            if status == "paid":
                orders.append({"id": order_id, "customer": customer, "amount": float(amount)})
    orders.sort(key=lambda order: order["id"], reverse=True)
    return orders
'''
TEXT = (
    "The Rhine rises in the Swiss Alps and flows north through Germany and the Netherlands to the North "
    "Sea. For centuries it carried timber, coal and grain, and the towns along its banks grew rich on "
    "tolls. Today it is one of the busiest waterways in Europe, and its valley, with its castles and "
    "vineyards, draws millions of visitors every year."
)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


GROUNDED = [
    user(f"Rename the function load_orders to read_paid_orders and show the whole code:\n{CODE}"),
    user(f"Add type hints to this function and show the whole code:\n{CODE}"),
    user(f"Quote the second and third sentences of this text exactly:\n{TEXT}"),
    user(f"Summarise this text in two sentences, reusing its words:\n{TEXT}"),
    user(f"Repeat this text, replacing 'Rhine' with 'river':\n{TEXT}"),
    [
        {"role": "user", "content": f"Here is my code:\n{CODE}\nWhat does it do?"},
        {"role": "assistant", "content": "It reads a file of orders, keeps the paid ones, newest first."},
        {"role": "user", "content": "Now show the code again with a docstring that names the file format."},
    ],
]
OPEN_ENDED = [
    user("Write a short story about a lighthouse keeper who finds a message in a bottle."),
    user("Tell a bedtime story about a dragon who is afraid of the dark."),
    user("Write a story about two friends building a raft to cross a lake."),
    user("Invent a fable about a fox, a crow and a clever snail."),
]

LLAMA_SCRIPT = r"""
import json, sys, time
import llama_cpp
from llama_cpp import Llama
job = json.load(sys.stdin)
def decode(draft):
    kwargs = {"draft_model": draft} if draft is not None else {}
    llm = Llama(model_path=job["model"], n_threads=job["threads"], n_threads_batch=job["threads"],
                n_ctx=job["n_ctx"], verbose=False, **kwargs)
    tokens, seconds = 0, 0.0
    for prompt, n in zip(job["prompts"], job["lengths"]):
        count, first = 0, None
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            count += 1
            if first is None:
                first = time.perf_counter()
            if count == n:
                break
        seconds += time.perf_counter() - first
        tokens += count - 1
    return tokens / seconds
result = {"version": llama_cpp.__version__, "plain_tok_s": decode(None)}
try:
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    result["lookup_tok_s"] = decode(LlamaPromptLookupDecoding(num_pred_tokens=job["k"]))
except ImportError:
    result["lookup_tok_s"] = None
print(json.dumps(result))
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=7, help="num_speculative_tokens K (default 7)")
    parser.add_argument("--gen-len", type=int, default=128)
    parser.add_argument("--llama-python", help="a Python with llama_cpp (default: this one, if it has it)")
    args = parser.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)  # before anything imports numba
    import torch

    torch.set_num_threads(args.threads)
    from mistral_nemo.engine.config import EngineConfig
    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.model.embedded import embedded_model_path
    from mistral_nemo.model.loading import load

    model = Path(args.model) if args.model else embedded_model_path()
    loaded = load(model, dtype=torch.float32, device="cpu")
    speculative = {"method": "ngram", "num_speculative_tokens": args.tokens}
    engines = {
        "plain": LLMEngine(loaded, EngineConfig(max_num_seqs=1)),
        "speculative": LLMEngine(loaded, EngineConfig(max_num_seqs=1, speculative_config=speculative)),
    }
    params = SamplingParams(max_tokens=args.gen_len, temperature=0)
    for engine in engines.values():  # warm-up: kernels compiled, pools touched
        _decode(engine, loaded.tokenizer.encode_chat(GROUNDED[0]), params.clone(max_tokens=8))
    llama = _llama_python(args.llama_python)
    load_before = os.getloadavg()
    sets: dict[str, Any] = {}
    for name, chats in (("input_grounded", GROUNDED), ("open_ended", OPEN_ENDED)):
        prompts = [loaded.tokenizer.encode_chat(chat) for chat in chats]
        sets[name] = _measure(engines, prompts, params)
        if llama is not None:
            lengths = sets[name].pop("_lengths")
            figures = _llama(llama, model, prompts, lengths, args)
            sets[name]["llama_cpp_plain_tok_s"] = round(figures["plain_tok_s"], 2)
            if figures["lookup_tok_s"] is not None:
                sets[name]["llama_cpp_lookup_tok_s"] = round(figures["lookup_tok_s"], 2)
            sets[name]["speculative_vs_llama_cpp_plain"] = round(
                sets[name]["speculative_tok_s"] / figures["plain_tok_s"], 3
            )
            sets[name]["llama_cpp_version"] = figures["version"]
        else:
            sets[name].pop("_lengths")
    result = {
        "bench": "speculative",
        "model": loaded.name,
        "threads": args.threads,
        "num_speculative_tokens": args.tokens,
        "gen_len": args.gen_len,
        **sets,
        "llama_cpp": "measured" if llama is not None else "skipped: no Python with llama_cpp",
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))
    return 0


def _measure(engines: dict[str, Any], prompts: list[list[int]], params: Any) -> dict[str, Any]:
    """Each prompt through plain then speculative; decode tok/s over the set, identical tokens checked."""
    tokens = {name: 0 for name in engines}
    seconds = {name: 0.0 for name in engines}
    identical, lengths = True, []
    spec = engines["speculative"]
    before = spec.stats()
    for prompt in prompts:
        outputs = {}
        for name, engine in engines.items():
            ids, decode_s = _decode(engine, prompt, params)
            tokens[name] += len(ids) - 1
            seconds[name] += decode_s
            outputs[name] = ids
        identical &= outputs["plain"] == outputs["speculative"]
        lengths.append(len(outputs["plain"]))
    after = spec.stats()
    drafted = after.spec_draft_tokens - before.spec_draft_tokens
    accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
    drafts = after.spec_verifications - before.spec_verifications
    plain_tok_s = tokens["plain"] / seconds["plain"]
    spec_tok_s = tokens["speculative"] / seconds["speculative"]
    return {
        "requests": len(prompts),
        "output_tokens": sum(lengths),
        "plain_tok_s": round(plain_tok_s, 2),
        "speculative_tok_s": round(spec_tok_s, 2),
        "speedup": round(spec_tok_s / plain_tok_s, 3),
        "acceptance_rate": round(accepted / drafted, 4) if drafted else 0.0,
        "mean_accepted_length": round(accepted / drafts, 3) if drafts else 0.0,
        "identical_tokens": identical,
        "_lengths": lengths,
    }


def _decode(engine: Any, prompt: list[int], params: Any) -> tuple[list[int], float]:
    """(output ids, seconds from the first token to the last) of one request alone."""
    request_id = f"bench-{time.perf_counter_ns()}"
    engine.add_request(request_id, prompt, params)
    first: float | None = None
    ids: list[int] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            ids = output.outputs[0].token_ids
            if first is None and ids:
                first = time.perf_counter()
    assert first is not None
    return ids, time.perf_counter() - first


def _llama_python(explicit: str | None) -> str | None:
    for python in filter(None, [explicit, os.environ.get("LLAMA_CPP_PYTHON"), sys.executable]):
        if Path(python).is_file():
            check = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True, timeout=120)
            if check.returncode == 0:
                return python
    return None


def _llama(python: str, model: Path, prompts: list[list[int]], lengths: list[int], args: Any) -> Any:
    job = {
        "model": str(model),
        "threads": args.threads,
        "n_ctx": max(len(p) for p in prompts) + args.gen_len + 16,
        "prompts": prompts,
        "lengths": lengths,
        "k": args.tokens,
    }
    proc = subprocess.run(
        [python, "-c", LLAMA_SCRIPT], input=json.dumps(job), capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:] or "llama_cpp failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
