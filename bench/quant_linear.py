"""Quantized linears vs fp32 nn.Linear (and torch's int8pack kernel), plus SmolLM2 decode tokens/s, and
the cost of a call over 1-16 tokens relative to one token (speculative verification, small batches).

Prints one JSON line. Usage: python bench/quant_linear.py [--threads 2] [--repeat 10] [--no-e2e]
[--sweep-only] [--sweep-tokens 1,2,4,5,8,16]. Timings are best-of-repeat, wall clock and process CPU
time (on a shared machine the CPU time is the steadier of the two).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mistral_nemo.model.quant import Int4Linear, Int8Linear, quantize_model, weight_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.gguf_fixture as a script

SHAPES = [(576, 1536), (5120, 14336)]  # (in, out): SmolLM2 FFN, NeMo FFN


def _time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (and numba compile / cache load)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def _layer_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])


def bench_layers(repeat: int) -> list[dict]:
    rows = []
    for k, n in SHAPES:
        lin = nn.Linear(k, n, bias=False)
        mods: dict[str, nn.Module] = {
            "fp32": lin,
            "int8": Int8Linear.from_float(lin),
            "int4_g64": Int4Linear.from_float(lin, group_size=64),
        }
        if k % 128 == 0:  # 576 is not a multiple of 128
            mods["int4_g128"] = Int4Linear.from_float(lin, group_size=128)
        w8 = mods["int8"]
        for tokens in (1, 8):
            x = torch.randn(tokens, k)
            row: dict = {"shape": [n, k], "tokens": tokens}
            with torch.inference_mode():
                for name, m in mods.items():
                    sec = _time(lambda m=m, x=x: m(x), repeat)
                    row[f"{name}_ms"] = round(sec * 1e3, 3)
                    row[f"{name}_GBps"] = round(_layer_bytes(m) / sec / 1e9, 2)
                if hasattr(torch, "_weight_int8pack_mm"):
                    sec = _time(
                        lambda x=x, w=w8: torch._weight_int8pack_mm(x, w.qweight, w.scale[:, 0]), repeat
                    )
                    row["torch_int8pack_ms"] = round(sec * 1e3, 3)
            for name in [m for m in mods if m != "fp32"]:
                row[f"fp32_over_{name}"] = round(row["fp32_ms"] / row[f"{name}_ms"], 2)
            rows.append(row)
    return rows


def bench_token_sweep(repeat: int, token_counts: list[int]) -> list[dict]:
    """NeMo's FFN shapes with Q8_0-like int8 (G = 32) and int4 (G = 32) weights: ms per call for each token
    count and its cost relative to one token (what a speculative step of 1 + K tokens pays)."""
    rows = []
    torch.manual_seed(0)
    for k, n in ((5120, 14336), (14336, 5120)):
        w = torch.randn(n, k) * 0.02
        for name, make in (("int8_g32", Int8Linear.from_float), ("int4_g32", Int4Linear.from_float)):
            layer = make(w, group_size=32)
            row: dict = {"shape": [n, k], "weights": name, "tokens": token_counts}
            wall, cpu = [], []
            with torch.inference_mode():
                for tokens in token_counts:
                    x = torch.randn(tokens, k)
                    layer(x)  # warm-up (and numba compile / cache load)
                    best_wall = best_cpu = float("inf")
                    for _ in range(repeat):
                        c0, t0 = time.process_time(), time.perf_counter()
                        layer(x)
                        best_wall = min(best_wall, time.perf_counter() - t0)
                        best_cpu = min(best_cpu, time.process_time() - c0)
                    wall.append(best_wall)
                    cpu.append(best_cpu)
            row["ms"] = [round(t * 1e3, 2) for t in wall]
            row["cost_vs_1_token"] = [round(t / wall[0], 2) for t in wall]
            row["cpu_ms"] = [round(t * 1e3, 2) for t in cpu]
            row["cpu_cost_vs_1_token"] = [round(t / cpu[0], 2) for t in cpu]
            row["GMAC_per_s"] = [
                round(t * n * k / sec / 1e9, 1) for t, sec in zip(token_counts, wall, strict=True)
            ]
            rows.append(row)
    return rows


def bench_decode(gen_tokens: int) -> dict:
    from mistral_nemo.engine.generate import generate
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.model.loading import load
    from tests.gguf_fixture import fetch_smollm2_gguf

    path = fetch_smollm2_gguf()
    params = SamplingParams(max_tokens=gen_tokens, temperature=0, ignore_eos=True)
    out: dict = {}
    for mode in ("fp32", "int8", "int4"):
        loaded = load(path, dtype=torch.float32, device="cpu", quantization="none")
        model = loaded.model
        if mode != "fp32":
            model = quantize_model(model, mode, group_size=32, output_mode="int8")
        ids = loaded.tokenizer.encode_chat([{"role": "user", "content": "Tell me about Paris."}])
        generate(model, loaded.tokenizer, ids, SamplingParams(max_tokens=4, temperature=0))  # warm-up
        # Prefill is one forward of a short prompt: tokens/s below is dominated by the decode steps.
        start = time.perf_counter()
        generate(model, loaded.tokenizer, ids, params)
        tps = gen_tokens / (time.perf_counter() - start)
        wb = weight_bytes(model)
        out[mode] = {
            "decode_tok_s": round(tps, 1),
            "weight_MB": round(wb / 1e6, 1),
            "GBps": round(wb * tps / 1e9, 2),
        }
    for mode in ("int8", "int4"):
        out[f"{mode}_over_fp32"] = round(out[mode]["decode_tok_s"] / out["fp32"]["decode_tok_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--sweep-only", action="store_true", help="only the 1-16 token cost sweep")
    parser.add_argument("--sweep-tokens", default="1,2,4,5,8,16", help="token counts of the sweep")
    a = parser.parse_args()
    try:
        token_counts = [int(t) for t in a.sweep_tokens.split(",")]
    except ValueError:
        parser.error(f"--sweep-tokens: expected comma-separated integers, got {a.sweep_tokens!r}")
    if not token_counts or min(token_counts) < 1:
        parser.error("--sweep-tokens: token counts must be >= 1")
    torch.set_num_threads(a.threads)
    import numba

    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    result: dict = {"bench": "quant_linear", "threads": a.threads}
    if not a.sweep_only:
        result["layers"] = bench_layers(a.repeat)
    result["token_sweep"] = bench_token_sweep(a.repeat, token_counts)
    if not a.no_e2e and not a.sweep_only:
        result["smollm2_decode"] = bench_decode(a.gen_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
