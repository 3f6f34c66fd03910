"""Per-step cost of the engine outside the model: the model's forward is replaced by a stub that returns
fixed logits, so what is timed is the scheduler, runner bookkeeping, sampler and detokenizer alone.
Kernel-only (engine/generate.py) vs LLM.generate at batch 1 and 16, 200 greedy tokens, 200-token prompts.

    OMP_NUM_THREADS=1 python bench/engine_overhead.py
"""

import json
import time

import torch

from mistral_nemo import LLM, SamplingParams
from mistral_nemo.engine.generate import stream_generate

llm = LLM(dtype=torch.float32, device="cpu")
model, tok = llm.loaded.model, llm.loaded.tokenizer
V = model.args.vocab_size
base = torch.randn(2048, V)


def stub(tokens, positions, cache=None, output_rows=None):
    if hasattr(cache, "decode_slots"):
        cache.decode_slots(tokens.shape[0])
    n = output_rows.shape[0] if output_rows is not None else tokens.shape[0]
    return base[:n]


model.forward = stub
prompt = list(range(1000, 1200))
N = 200
p = SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)


def kernel() -> float:
    start = time.perf_counter()
    for _ in stream_generate(model, tok, prompt, p):
        pass
    return (time.perf_counter() - start) / N


def engine(batch: int) -> float:
    start = time.perf_counter()
    llm.generate([[t + i for t in prompt] for i in range(batch)], p, use_tqdm=False)
    return (time.perf_counter() - start) / N


kernel(), engine(1)  # warm-up
ms = {"kernel_only_ms_per_step": kernel() * 1e3, "llm_b1_ms_per_step": engine(1) * 1e3}
ms["llm_b16_ms_per_step"] = engine(16) * 1e3
print(json.dumps({"bench": "engine_overhead", **{k: round(v, 3) for k, v in ms.items()}}))
