"""One LoRA training step on the embedded SmolLM2: this project (QLoRA on the Q4 GGUF, and float)
vs peft + transformers (float, the same GGUF dequantized), same tokens, same rank, side by side.

Prints one JSON line: tokens/s of each (forward + backward + AdamW step, median of --repeat), the
ratios, and the peak RSS of this process. Usage: python bench/finetune.py [--tokens 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.gguf_fixture, as a script

from mistral_nemo.finetune.data.packing import Batch, Window
from mistral_nemo.finetune.forward import loss_sum
from mistral_nemo.finetune.trainer import quiet_numba_threads
from mistral_nemo.model.loading import load
from mistral_nemo.model.lora import add_lora, lora_parameters
from tests.gguf_fixture import fetch_smollm2_gguf


def _median_seconds(step: Callable[[], None], repeat: int) -> float:
    step()  # warm-up (numba compile / cache load, allocator)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(gguf: Path, quantization: str, ids: list[int], rank: int) -> Callable[[], None]:
    model = load(gguf, device="cpu", quantization=quantization).model
    add_lora(model, rank)
    params = lora_parameters(model)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95))
    n = len(ids) - 1
    batch = Batch.of([Window(ids[:-1], ids[1:], [True] * n, [n])])

    def step() -> None:
        loss, count = loss_sum(model, batch)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peft_transformers(gguf: Path, ids: list[int], rank: int) -> Callable[[], None]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95)
    )
    x = torch.tensor([ids])

    def step() -> None:
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_numba_threads()  # as `mistral-nemo finetune` does (see its docstring)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = fetch_smollm2_gguf()
    tokenizer = load(gguf, device="cpu").tokenizer
    ids = (tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 200))[: args.tokens + 1]
    seconds = {
        "ours_qlora_q4": _median_seconds(ours(gguf, "auto", ids, args.rank), args.repeat),
        "ours_float": _median_seconds(ours(gguf, "none", ids, args.rank), args.repeat),
        "peft_transformers_float": _median_seconds(peft_transformers(gguf, ids, args.rank), args.repeat),
    }
    tokens = len(ids) - 1
    result = {
        "bench": "finetune_step",
        "model": gguf.name,
        "tokens": tokens,
        "rank": args.rank,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        **{f"{k}_tokens_per_s": round(tokens / v, 2) for k, v in seconds.items()},
        "qlora_vs_peft": round(seconds["peft_transformers_float"] / seconds["ours_qlora_q4"], 3),
        "float_vs_peft": round(seconds["peft_transformers_float"] / seconds["ours_float"], 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
