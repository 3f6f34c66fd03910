"""Quantized linears vs fp32 nn.Linear (and torch's int8pack kernel), plus SmolLM2 decode tokens/s.

Prints one JSON line. Usage: python bench/quant_linear.py [--threads 2] [--repeat 10] [--no-e2e]
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
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    import numba

    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    result: dict = {"bench": "quant_linear", "threads": a.threads, "layers": bench_layers(a.repeat)}
    if not a.no_e2e:
        result["smollm2_decode"] = bench_decode(a.gen_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
