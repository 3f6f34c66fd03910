"""EngineConfig: the limits a serving engine runs under."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mistral_nemo.engine.speculative.config import SpeculativeConfig

DEFAULT_KV_CACHE_BYTES = 2 << 30  # 2 GiB on CPU unless told otherwise


@dataclass
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    kv_cache_memory: int = DEFAULT_KV_CACHE_BYTES  # bytes for the whole block pool
    num_blocks: int | None = None  # set exactly (overrides kv_cache_memory), e.g. in tests
    max_num_seqs: int = 64  # sequences running at once
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    max_model_len: int | None = None  # default: the model's context
    max_queue: int = 1024  # waiting sequences before new requests are refused as overloaded
    enable_prefix_caching: bool = True
    enable_lora: bool = False  # requests may name a LoRA adapter (LoRARequest), several in one batch
    max_loras: int = 1  # adapters held at once when enable_lora (the least recently used idle one goes)
    # vLLM's shape, e.g. {"method": "ngram", "num_speculative_tokens": 4}; None: no speculation
    speculative_config: SpeculativeConfig | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.speculative_config = SpeculativeConfig.from_value(self.speculative_config)
        for name in (
            "block_size",
            "kv_cache_memory",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_queue",
            "max_loras",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


def parse_size(text: str) -> int:
    """'4GiB', '512MB', '1.5G', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 4GiB, 512MB, 1000000)")
    number, unit, binary = float(match.group(1)), match.group(2), match.group(3)
    base = 1024 if binary or unit else 1
    exponent = " kmgt".index(unit) if unit else 0
    return int(number * base**exponent)
