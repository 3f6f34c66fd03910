"""LoRARequest: the adapter one request runs with (vLLM's shape, so vLLM code ports unchanged).

>>> llm = LLM(model, enable_lora=True, max_loras=2)
>>> llm.generate(prompts, params, lora_request=LoRARequest("sql", 1, "run/checkpoints/checkpoint_000100"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoRARequest:
    """An adapter: a name, a positive id unique to it, and its path (lora.safetensors, its checkpoint
    folder, or a PEFT folder). Two requests with the same id share the loaded adapter and its cache."""

    lora_name: str
    lora_int_id: int
    lora_path: str | Path

    def __post_init__(self) -> None:
        if not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be a positive integer, got {self.lora_int_id!r}")
        if not self.lora_name:
            raise ValueError("lora_name must not be empty")

    # vLLM's property names
    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def path(self) -> str:
        return str(self.lora_path)
