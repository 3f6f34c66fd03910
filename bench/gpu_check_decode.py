"""The decode-speed part of bench/gpu_check.py, and the random NeMo-shaped models both parts build.

Decode tokens/s through the public LLM API (engine, paged KV cache) with random bf16 or FP8 weights,
beside transformers' MistralForCausalLM of the same geometry; achieved weight bandwidth from
quant.weight_bytes. Random weights: speed does not depend on their values, only on their dtypes.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mistral_nemo import LLM, SamplingParams
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.loading import LoadedModel
from mistral_nemo.model.quant import weight_bytes
from mistral_nemo.model.quant.fp8 import FP8, Fp8Linear
from mistral_nemo.model.transformer import RMSNorm, Rotary, Transformer


def random_model(
    args: ModelArgs, device: str, dtype: torch.dtype, fp8: bool = False, seed: int = 0
) -> Transformer:
    """Transformer with random weights made where they live (no full-size CPU copy, no fp32 detour).

    Linear weights ~ N(0, 1 / in_features) so activations keep their scale through the layers; norms
    ~ U(0.8, 1.2). With fp8, every linear is an Fp8Linear of random e4m3 codes with per-row scales.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(args)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, _random_linear(child, device, dtype, fp8, gen))
    model.tok_embeddings = nn.Embedding(args.vocab_size, args.dim, device=device, dtype=dtype)
    model.tok_embeddings.weight.data.normal_(0.0, 1.0, generator=gen)
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.weight = nn.Parameter(torch.empty(args.dim, device=device, dtype=dtype))
            module.weight.data.uniform_(0.8, 1.2, generator=gen)
    model.rotary = Rotary(args.head_dim, args.rope_theta).to(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a module this builder does not know yet (the transformer grew a part): say which
        raise RuntimeError(f"random_model left these tensors unmade: {left[:5]}")
    return model.eval()


def _random_linear(
    meta: nn.Linear, device: str, dtype: torch.dtype, fp8: bool, gen: torch.Generator
) -> nn.Module:
    out_f, in_f = meta.out_features, meta.in_features
    if fp8:  # codes spread over e4m3's range, scaled so the weights are ~ N(0, 1 / in_f) as in bf16
        codes = (torch.randn(out_f, in_f, device=device, generator=gen) * 64).clamp_(-448, 448).to(FP8)
        return Fp8Linear(codes, torch.full((out_f,), 1 / (64 * in_f**0.5), device=device))
    linear = nn.Linear(in_f, out_f, bias=False, device=device, dtype=dtype)
    linear.weight.data.normal_(0.0, in_f**-0.5, generator=gen)
    return linear.requires_grad_(False)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_ours(
    model: Transformer,
    args: ModelArgs,
    tokenizer: Any,
    device: str,
    batch: int,
    prompt_len: int,
    gen_len: int,
) -> float:
    """Decode tokens/s through the public LLM API (greedy, ignore_eos), prefill subtracted."""
    loaded = LoadedModel(model, tokenizer, args, Path("random"), "random", "nemo-shaped random weights")
    llm = LLM(
        loaded,
        max_num_seqs=batch,
        max_num_batched_tokens=max(2048, batch * prompt_len),
        num_blocks=batch * (-(-(prompt_len + gen_len + 1) // 16)) * 3,
    )
    gen = torch.Generator().manual_seed(batch)

    def run(tokens: int) -> float:
        prompts = [
            torch.randint(1000, args.vocab_size, (prompt_len,), generator=gen).tolist() for _ in range(batch)
        ]
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
        _sync(device)
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        _sync(device)
        assert all(len(o.outputs[0].token_ids) == tokens for o in outs)
        return time.perf_counter() - start

    run(2)  # warm-up: kernels, allocator
    return batch * (gen_len - 1) / max(run(gen_len) - run(1), 1e-9)


def decode_transformers(args: ModelArgs, device: str, batch: int, prompt_len: int, gen_len: int) -> float:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        max_position_embeddings=args.max_seq_len,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = MistralForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    if model.dtype != torch.bfloat16:  # transformers < 4.56 calls it torch_dtype; never time fp32 instead
        raise RuntimeError(f"transformers built the reference in {model.dtype}, not bfloat16")
    model.eval()
    gen = torch.Generator().manual_seed(7)

    def run(tokens: int) -> float:
        ids = torch.randint(1000, args.vocab_size, (batch, prompt_len), generator=gen).to(device)
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
            )
        _sync(device)
        assert out.shape[1] == prompt_len + tokens
        return time.perf_counter() - start

    run(2)
    return batch * (gen_len - 1) / max(run(gen_len) - run(1), 1e-9)


def bench_decode(
    args: ModelArgs,
    device: str,
    batches: list[int],
    prompt_len: int,
    gen_len: int,
    peak_tbs: float,
    skip_transformers: bool,
    bar: tqdm,
) -> dict[str, Any]:
    from mistral_nemo.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(_tekken_path())
    out: dict[str, Any] = {
        "layers": args.n_layers,
        "vocab": args.vocab_size,
        "prompt_len": prompt_len,
        "gen_len": gen_len,
        "peak_tb_s": peak_tbs,
        "path": "LLM.generate (engine, paged KV cache), greedy, ignore_eos",
    }
    for kind in ("bf16", "fp8"):
        model = random_model(args, device, torch.bfloat16, fp8=kind == "fp8", seed=8)
        step_bytes = weight_bytes(model)
        out[f"ours_{kind}"] = {"weight_bytes_per_step": step_bytes}
        for batch in batches:
            bar.set_description(f"decode ours {kind} b{batch}")
            rate = decode_ours(model, args, tokenizer, device, batch, prompt_len, gen_len)
            out[f"ours_{kind}"][f"b{batch}"] = _rate_entry(rate, batch, step_bytes, peak_tbs)
            bar.update(1)
        del model
        free_memory(device)
    if not skip_transformers:
        # Every bf16 weight once per step, the embedding only its looked-up rows (as weight_bytes counts).
        hf_bytes = 2 * (args.num_parameters() - args.vocab_size * args.dim + args.dim)
        out["transformers_bf16"] = {"weight_bytes_per_step": hf_bytes}
        for batch in batches:
            bar.set_description(f"decode transformers b{batch}")
            rate = decode_transformers(args, device, batch, prompt_len, gen_len)
            out["transformers_bf16"][f"b{batch}"] = _rate_entry(rate, batch, hf_bytes, peak_tbs)
            free_memory(device)
            bar.update(1)
    return out


def _rate_entry(tok_s: float, batch: int, step_bytes: int, peak_tbs: float) -> dict[str, float]:
    gb_s = step_bytes * tok_s / batch / 1e9  # one step reads every weight once for the whole batch
    return {
        "tok_s": _sig(tok_s),
        "steps_s": _sig(tok_s / batch),
        "hbm_gb_s": _sig(gb_s),
        "share_of_peak": _sig(gb_s / (peak_tbs * 1e3)),
    }


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _tekken_path() -> Path:
    import mistral_common  # NeMo's tokenizer file ships with mistral_common (a test dependency)

    return Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"
