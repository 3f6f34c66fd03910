"""ModelArgs: the shape of a Mistral/Llama-family transformer, read from any checkpoint format.

head_dim is always explicit. NeMo's is 128 while dim / n_heads is 160: deriving it, as some
runtimes did, builds a wrong model. Only an HF config that leaves head_dim out (its documented
meaning is dim / n_heads) and GGUF without key_length fall back to the quotient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


class ModelArgsError(ValueError):
    """A config is missing a field or describes an impossible model."""


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 131072
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelArgsError(f"{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ModelArgsError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ModelArgsError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ModelArgsError("norm_eps and rope_theta must be positive")

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def num_parameters(self) -> int:
        attention = self.dim * self.q_dim * 2 + self.dim * self.kv_dim * 2
        feed_forward = 3 * self.dim * self.hidden_dim
        per_layer = attention + feed_forward + 2 * self.dim
        embeddings = self.vocab_size * self.dim * (1 if self.tied_embeddings else 2)
        return self.n_layers * per_layer + embeddings + self.dim

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """Keys and values of every layer for one token (160 KiB for NeMo in bf16)."""
        return 2 * self.n_layers * self.kv_dim * bytes_per_value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> ModelArgs:
        return replace(self, **changes)

    # ---- readers -------------------------------------------------------------------------------

    @classmethod
    def from_params_json(cls, params: dict[str, Any]) -> ModelArgs:
        """A Mistral folder's params.json (mistral-inference's names)."""
        _require(
            params, ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "vocab_size"), "params.json"
        )
        return cls(
            dim=params["dim"],
            n_layers=params["n_layers"],
            head_dim=params["head_dim"],
            hidden_dim=params["hidden_dim"],
            n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads", params["n_heads"]),
            vocab_size=params["vocab_size"],
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 10000.0)),
            max_seq_len=int(params.get("max_seq_len", params.get("max_position_embeddings", 131072))),
            tied_embeddings=bool(params.get("tied_embeddings", False)),
        )

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArgs:
        """An HF config.json of a MistralForCausalLM / LlamaForCausalLM model."""
        model_type = config.get("model_type")
        if model_type not in ("mistral", "llama"):
            raise ModelArgsError(f"config.json model_type {model_type!r} is not supported (mistral or llama)")
        required = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        )
        _require(config, required, "config.json")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ModelArgsError(f"config.json rope type {rope_type!r} is not supported")
        if config.get("sliding_window") not in (None, 0) and config["sliding_window"] < config.get(
            "max_position_embeddings", 0
        ):
            raise ModelArgsError("sliding-window attention is not supported")
        n_heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        return cls(
            dim=config["hidden_size"],
            n_layers=config["num_hidden_layers"],
            head_dim=head_dim,
            hidden_dim=config["intermediate_size"],
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            vocab_size=config["vocab_size"],
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_seq_len=int(config.get("max_position_embeddings", 131072)),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], tied_embeddings: bool) -> ModelArgs:
        """llama.cpp's GGUF keys for the `llama` architecture (which NeMo GGUFs use)."""
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ModelArgsError(f"GGUF architecture {arch!r} is not supported (llama)")
        keys = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
        _require(meta, tuple(f"llama.{k}" for k in keys), "GGUF metadata")
        n_heads = meta["llama.attention.head_count"]
        dim = meta["llama.embedding_length"]
        vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
        return cls(
            dim=dim,
            n_layers=meta["llama.block_count"],
            head_dim=meta.get("llama.attention.key_length") or dim // n_heads,
            hidden_dim=meta["llama.feed_forward_length"],
            n_heads=n_heads,
            n_kv_heads=meta.get("llama.attention.head_count_kv") or n_heads,
            vocab_size=vocab,
            norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            max_seq_len=int(meta.get("llama.context_length", 131072)),
            tied_embeddings=tied_embeddings,
        )

    @classmethod
    def preset(cls, name: str) -> ModelArgs:
        try:
            return PRESETS[name]
        except KeyError:
            raise ModelArgsError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def _require(config: dict[str, Any], keys: tuple[str, ...], source: str) -> None:
    missing = [k for k in keys if config.get(k) is None]
    if missing:
        raise ModelArgsError(f"{source} is missing {', '.join(missing)}")


PRESETS: dict[str, ModelArgs] = {
    # Mistral-Nemo-Base-2407 / Mistral-Nemo-Instruct-2407 (params.json as published).
    "nemo-12b": ModelArgs(
        dim=5120,
        n_layers=40,
        head_dim=128,
        hidden_dim=14336,
        n_heads=32,
        n_kv_heads=8,
        vocab_size=131072,
        norm_eps=1e-5,
        rope_theta=1_000_000.0,
        max_seq_len=131072,
    ),
}
