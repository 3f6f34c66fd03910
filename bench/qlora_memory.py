"""Peak memory of `mistral-nemo finetune`: QLoRA (int4 / int8 frozen base) vs the float base.

On the embedded 135M model the runtime (torch, numba, activations) outweighs the weights, so the
saving of a quantized frozen base cannot show there. This writes a random bf16 Mistral folder whose
layers have NeMo's width (dim 4096 here, hidden 14336, 32 / 8 heads of 128) and a small Tekken
vocabulary, then runs the same short finetune on it with `quantization: none`, `int8` and `int4`,
each in a fresh process under `/usr/bin/time -v`, and prints one JSON line: peak RSS of each run
beside the size of the float weights.

    python bench/qlora_memory.py [--layers 4] [--dim 4096] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mistral_common
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"
VOCAB = 1000 + 3072  # the 1000 control ids + the first 3072 Tekken ranks


def write_model(folder: Path, layers: int, dim: int, hidden: int) -> int:
    """A random bf16 Mistral folder; returns the bytes of its weights."""
    folder.mkdir(parents=True)
    n_heads, n_kv, head_dim = 32, 8, 128
    params = {
        "dim": dim, "n_layers": layers, "head_dim": head_dim, "hidden_dim": hidden, "n_heads": n_heads,
        "n_kv_heads": n_kv, "norm_eps": 1e-5, "rope_theta": 1_000_000.0, "vocab_size": VOCAB,
    }  # fmt: skip

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape) * 0.02).to(torch.bfloat16)

    weights = {"tok_embeddings.weight": rand(VOCAB, dim), "output.weight": rand(VOCAB, dim)}
    weights["norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    for i in range(layers):
        p = f"layers.{i}."
        weights |= {
            p + "attention.wq.weight": rand(n_heads * head_dim, dim),
            p + "attention.wk.weight": rand(n_kv * head_dim, dim),
            p + "attention.wv.weight": rand(n_kv * head_dim, dim),
            p + "attention.wo.weight": rand(dim, n_heads * head_dim),
            p + "feed_forward.w1.weight": rand(hidden, dim),
            p + "feed_forward.w2.weight": rand(dim, hidden),
            p + "feed_forward.w3.weight": rand(hidden, dim),
            p + "attention_norm.weight": torch.ones(dim, dtype=torch.bfloat16),
            p + "ffn_norm.weight": torch.ones(dim, dtype=torch.bfloat16),
        }
    save_file(weights, str(folder / "consolidated.safetensors"))
    (folder / "params.json").write_text(json.dumps(params))
    tekken = json.loads(TEKKEN.read_text())
    tekken["vocab"] = tekken["vocab"][: VOCAB - 1000]
    tekken["config"]["default_vocab_size"] = VOCAB
    tekken["config"]["num_vocab_tokens"] = VOCAB - 1000
    (folder / "tekken.json").write_text(json.dumps(tekken))
    return sum(t.numel() * t.element_size() for t in weights.values())


def run_finetune(work: Path, model: Path, quantization: str, steps: int) -> dict[str, float]:
    config = work / f"{quantization}.yaml"
    config.write_text(
        f"model_id_or_path: {model}\nrun_dir: {work / ('run-' + quantization)}\n"
        f"data:\n  instruct_data: {ROOT / 'examples/finetune/facts.jsonl'}\n"
        f"lora:\n  rank: 16\nseq_len: 64\nbatch_size: 1\nmax_steps: {steps}\n"
        f"no_eval: true\nckpt_freq: 1000\nlog_freq: 1\nquantization: {quantization}\n"
    )
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "mistral_nemo.entrypoints.cli", "finetune"]
    started = time.perf_counter()
    done = subprocess.run([*command, str(config)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"finetune ({quantization}) failed:\n{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"peak_rss_gb": round(peak_kb / 1e6, 3), "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=14336)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quantizations", default="none,int8,int4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weight_bytes = write_model(work / "model", args.layers, args.dim, args.hidden)
        runs = {q: run_finetune(work, work / "model", q, args.steps) for q in args.quantizations.split(",")}
    print(
        json.dumps(
            {
                "bench": "qlora_memory",
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "layers": args.layers,
                "dim": args.dim,
                "hidden": args.hidden,
                "steps": args.steps,
                "float_weights_gb": {
                    "bf16": round(weight_bytes / 1e9, 3),
                    "fp32": round(2 * weight_bytes / 1e9, 3),
                },
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
