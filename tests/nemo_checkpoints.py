"""Random NeMo-shaped checkpoints written in each layout, for fidelity tests.

The shape keeps what makes NeMo NeMo (head_dim 128 with n_heads * head_dim != dim, GQA,
RoPE theta 1e6, untied output, Tekken ids) and shrinks the rest so tests run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import MistralConfig, MistralForCausalLM

from tests.conftest import NEMO_TEKKEN

SMALL_NEMO = {
    "dim": 320,  # != n_heads * head_dim = 512, like NeMo's 5120 vs 4096
    "n_layers": 2,
    "head_dim": 128,
    "hidden_dim": 640,
    "n_heads": 4,
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "rope_theta": 1_000_000.0,
    "vocab_size": 1000 + 3072,  # the 1000 control ids + the first 3072 Tekken ranks
}


def hf_config() -> MistralConfig:
    p = SMALL_NEMO
    return MistralConfig(
        hidden_size=p["dim"],
        intermediate_size=p["hidden_dim"],
        num_hidden_layers=p["n_layers"],
        num_attention_heads=p["n_heads"],
        num_key_value_heads=p["n_kv_heads"],
        head_dim=p["head_dim"],
        rms_norm_eps=p["norm_eps"],
        rope_theta=p["rope_theta"],
        vocab_size=p["vocab_size"],
        max_position_embeddings=131072,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def random_reference_model(seed: int = 0) -> MistralForCausalLM:
    """transformers' MistralForCausalLM with random weights, larger than default init so layers matter."""
    torch.manual_seed(seed)
    model = MistralForCausalLM(hf_config()).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.08)
    return model


def write_small_tekken(path: Path) -> None:
    """NeMo's tekken.json cut to the model's vocabulary (same ids for the ranks kept)."""
    data = json.loads(NEMO_TEKKEN.read_text())
    keep = SMALL_NEMO["vocab_size"] - 1000
    data["vocab"] = data["vocab"][:keep]
    data["config"]["default_vocab_size"] = SMALL_NEMO["vocab_size"]
    data["config"]["num_vocab_tokens"] = keep
    path.write_text(json.dumps(data))


def write_hf_folder(model: MistralForCausalLM, folder: Path) -> Path:
    # Small shards so the index.json path is exercised.
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="2MB")
    write_small_tekken(folder / "tekken.json")
    return folder


def _half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo HF's conversion permutation (transformers' convert_mistral_weights_to_hf)."""
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def write_mistral_folder(model: MistralForCausalLM, folder: Path) -> Path:
    """params.json + consolidated.safetensors + tekken.json, as Mistral publishes NeMo."""
    folder.mkdir(parents=True, exist_ok=True)
    p = SMALL_NEMO
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {
        "tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for i in range(p["n_layers"]):
        hf = f"model.layers.{i}."
        mi = f"layers.{i}."
        out[mi + "attention.wq.weight"] = _half_to_interleaved(
            sd[hf + "self_attn.q_proj.weight"], p["n_heads"]
        )
        out[mi + "attention.wk.weight"] = _half_to_interleaved(
            sd[hf + "self_attn.k_proj.weight"], p["n_kv_heads"]
        )
        out[mi + "attention.wv.weight"] = sd[hf + "self_attn.v_proj.weight"]
        out[mi + "attention.wo.weight"] = sd[hf + "self_attn.o_proj.weight"]
        out[mi + "feed_forward.w1.weight"] = sd[hf + "mlp.gate_proj.weight"]
        out[mi + "feed_forward.w2.weight"] = sd[hf + "mlp.down_proj.weight"]
        out[mi + "feed_forward.w3.weight"] = sd[hf + "mlp.up_proj.weight"]
        out[mi + "attention_norm.weight"] = sd[hf + "input_layernorm.weight"]
        out[mi + "ffn_norm.weight"] = sd[hf + "post_attention_layernorm.weight"]
    save_file({k: v.contiguous() for k, v in out.items()}, str(folder / "consolidated.safetensors"))
    (folder / "params.json").write_text(json.dumps(p))
    write_small_tekken(folder / "tekken.json")
    return folder
