"""Adapter files: mistral-finetune's `lora.safetensors` and PEFT's folder, both ways.

mistral-finetune: `lora.safetensors` with `layers.N.attention.wq.lora_A.weight` ... (q / k rows of B
in Mistral's interleaved RoPE layout) and a `params.json` beside it whose "lora" entry holds the
scaling (2.0 when absent, mistral-finetune's fixed default).

PEFT (what transformers + peft and vLLM load): `adapter_config.json` (r, lora_alpha, target_modules)
+ `adapter_model.safetensors` with `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`
...; w1 = gate_proj, w2 = down_proj, w3 = up_proj. PEFT scales by lora_alpha / r, so lora_alpha =
scaling * r keeps mistral-finetune's factor. HF checkpoints hold q / k rows in rotate-half order, so
B of q_proj / k_proj is permuted from the interleaved layout (A, on the input side, is not).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.lora import DEFAULT_SCALING, LoraError, half_to_interleaved
from mistral_nemo.model.weights import interleaved_to_half

ADAPTER_FILE = "lora.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model.model.layers."
_TO_HF = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
}
_FROM_HF = {hf: ours for ours, hf in _TO_HF.items()}
_MISTRAL_KEY = re.compile(r"^layers\.(\d+)\.(attention\.w[qkvo]|feed_forward\.w[123])\.lora_([AB])\.weight$")
_PEFT_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)\.lora_([AB])\.weight$"
)


def _rope_heads(module: str, args: ModelArgs) -> int | None:
    return {"attention.wq": args.n_heads, "attention.wk": args.n_kv_heads}.get(module)


def is_peft_adapter(path: Path) -> bool:
    return path.is_dir() and (path / PEFT_CONFIG).is_file()


def _mistral_adapter_file(path: Path) -> Path:
    """lora.safetensors itself, a folder holding it, or a checkpoint folder (…/consolidated/)."""
    if path.is_file():
        return path
    for candidate in (path / ADAPTER_FILE, path / "consolidated" / ADAPTER_FILE):
        if candidate.is_file():
            return candidate
    raise LoraError(
        f"no adapter at {path}: expected lora.safetensors (mistral-finetune) or adapter_config.json (PEFT)"
    )


def read_adapter(path: str | Path, args: ModelArgs) -> tuple[dict[str, torch.Tensor], float]:
    """(tensors in mistral-finetune's names and layout, scaling) of a mistral-finetune or PEFT adapter."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LoraError(f"LoRA adapter not found: {path}")
    if is_peft_adapter(path):
        return read_peft(path, args)
    file = _mistral_adapter_file(path)
    try:
        tensors = safetensors.torch.load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise LoraError(f"{file} is not a readable safetensors file: {exc}") from None
    scaling = DEFAULT_SCALING
    params = file.parent / "params.json"
    if params.is_file():
        lora = json.loads(params.read_text()).get("lora") or {}
        scaling = float(lora.get("scaling", DEFAULT_SCALING))
    bad = [k for k in tensors if not _MISTRAL_KEY.match(k)]
    if bad:
        raise LoraError(
            f"{file}: {bad[0]!r} is not a LoRA tensor name (layers.N.attention.wq.lora_A.weight ...)"
        )
    return tensors, scaling


def to_peft(
    tensors: dict[str, torch.Tensor], args: ModelArgs, scaling: float, base_model: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(PEFT tensors, adapter_config.json contents) of a mistral-finetune adapter."""
    out: dict[str, torch.Tensor] = {}
    ranks = set()
    targets = set()
    for key, tensor in tensors.items():
        match = _MISTRAL_KEY.match(key)
        if match is None:
            raise LoraError(f"{key!r} is not a LoRA tensor name")
        layer, module, side = match.groups()
        heads = _rope_heads(module, args)
        if side == "B" and heads:
            tensor = interleaved_to_half(tensor, heads)
        if side == "A":
            ranks.add(tensor.shape[0])
        targets.add(_TO_HF[module].split(".")[1])
        out[f"{_PEFT_PREFIX}{layer}.{_TO_HF[module]}.lora_{side}.weight"] = tensor.contiguous()
    if len(ranks) != 1:
        raise LoraError(f"the adapter's layers have different ranks {sorted(ranks)}; PEFT needs one r")
    rank = ranks.pop()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": scaling * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
    }
    return out, config


def read_peft(folder: Path, args: ModelArgs) -> tuple[dict[str, torch.Tensor], float]:
    config = json.loads((folder / PEFT_CONFIG).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraError(f"{folder}: peft_type {config.get('peft_type')!r} is not LORA")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise LoraError(f"{folder}: per-layer {key} is not supported (one rank and alpha for all layers)")
    if config.get("bias", "none") != "none" or config.get("fan_in_fan_out"):
        raise LoraError(f"{folder}: LoRA biases and fan_in_fan_out layouts are not supported")
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise LoraError(f"{folder} has adapter_config.json but no {PEFT_WEIGHTS}")
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in safetensors.torch.load_file(str(weights)).items():
        match = _PEFT_KEY.match(key)
        if match is None or match.group(2) not in _FROM_HF:
            raise LoraError(f"{folder}: tensor {key!r} is not a LoRA weight of q/k/v/o/gate/up/down_proj")
        layer, hf_module, side = match.groups()
        module = _FROM_HF[hf_module]
        heads = _rope_heads(module, args)
        if side == "B" and heads:
            tensor = half_to_interleaved(tensor, heads)
        tensors[f"layers.{layer}.{module}.lora_{side}.weight"] = tensor.contiguous()
    return tensors, scaling


def write_peft(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    args: ModelArgs,
    scaling: float,
    base_model: str | None = None,
) -> None:
    peft_tensors, config = to_peft(tensors, args, scaling, base_model)
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(peft_tensors, str(folder / PEFT_WEIGHTS))
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def write_mistral(folder: Path, tensors: dict[str, torch.Tensor], args: ModelArgs, scaling: float) -> None:
    """lora.safetensors + params.json (model args and the "lora" entry), as a checkpoint holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / ADAPTER_FILE))
    ranks = {v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight")}
    params = {
        **args.to_dict(),
        "lora": {"enable": True, "rank": max(ranks), "dropout": 0.0, "scaling": scaling},
    }
    (folder / "params.json").write_text(json.dumps(params, indent=2) + "\n")
