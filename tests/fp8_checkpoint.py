"""A Mistral FP8 folder of the small NeMo-shaped model, laid out as Mistral publishes FP8 checkpoints.

Every attention / feed-forward `<name>.weight` becomes float8_e4m3fn with `<name>.qscale_weight`
(w = fp8 * qscale_weight) and, for static activation scaling, `<name>.qscale_act`; embeddings, norms and
the output projection stay float (vLLM's Mistral FP8 config leaves lm_head unquantized). params.json
gains Mistral's `quantization` block (qscheme_act TENSOR = static scales, NO_SCALES = dynamic).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import MistralForCausalLM

from tests.nemo_checkpoints import write_mistral_folder

LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
E4M3_MAX = 448.0


def is_fp8_linear_name(name: str) -> bool:
    return name.endswith(".weight") and name.split(".")[-2] in LINEARS


def write_mistral_fp8_folder(model: MistralForCausalLM, folder: Path, per_channel: bool = False) -> Path:
    """per_channel=False: Mistral's layout (bf16 scalar scales, static qscale_act per layer).
    per_channel=True: a float32 scale per output row and no activation scales (dynamic)."""
    write_mistral_folder(model, folder)
    path = folder / "consolidated.safetensors"
    out: dict[str, torch.Tensor] = {}
    for i, (name, weight) in enumerate(sorted(load_file(str(path)).items())):
        if not is_fp8_linear_name(name):
            out[name] = weight
            continue
        base = name.removesuffix(".weight")
        if per_channel:
            scale = weight.abs().amax(1) / E4M3_MAX
            fp8 = (weight / scale[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        else:
            scale = (weight.abs().amax() / E4M3_MAX).to(torch.bfloat16)  # [] like Mistral's
            fp8 = (weight / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
            out[base + ".qscale_act"] = torch.tensor(0.01 + 0.001 * i, dtype=torch.bfloat16)
        out[name] = fp8
        out[base + ".qscale_weight"] = scale
    save_file(out, str(path))
    params = json.loads((folder / "params.json").read_text())
    params["quantization"] = {
        "qformat_weight": "fp8_e4m3",
        "qscheme_act": "NO_SCALES" if per_channel else "TENSOR",
    }
    (folder / "params.json").write_text(json.dumps(params))
    return folder
