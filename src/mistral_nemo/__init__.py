"""mistral-nemo: a self-hosted runtime for the Mistral NeMo 12B model family."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from mistral_nemo.engine.llm import LLM
    from mistral_nemo.engine.lora_request import LoRARequest
    from mistral_nemo.engine.outputs import CompletionOutput, RequestOutput
    from mistral_nemo.engine.sampling_params import SamplingParams
    from mistral_nemo.model.loading import LoadedModel

__version__ = "0.1.0"
__all__ = ["LLM", "CompletionOutput", "LoRARequest", "RequestOutput", "SamplingParams", "__version__", "load"]

# Exported names and their modules, imported on first use so that `import mistral_nemo`
# (and `import mistral_nemo.tokenizer`) does not pull in torch.
_LAZY = {
    "LLM": "mistral_nemo.engine.llm",
    "LoRARequest": "mistral_nemo.engine.lora_request",
    "SamplingParams": "mistral_nemo.engine.sampling_params",
    "RequestOutput": "mistral_nemo.engine.outputs",
    "CompletionOutput": "mistral_nemo.engine.outputs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mistral_nemo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def load(
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    quantization: str | None = "auto",
    lora: str | Path | None = None,
) -> LoadedModel:
    """Load a Mistral folder, an HF folder or a GGUF file (None: the embedded model); `lora`: an
    adapter (mistral-finetune or PEFT) applied on load.

    Imported lazily so that `import mistral_nemo.tokenizer` does not pull in torch.
    """
    from mistral_nemo.model.loading import load as load_model

    return load_model(path, dtype=dtype, device=device, quantization=quantization, lora=lora)
