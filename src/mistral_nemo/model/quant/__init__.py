"""Weight-only quantization for CPU decode: int8 / int4 linears with numba kernels, model helpers,
and the quantized checkpoint format (checkpoint.py).

Names are imported lazily: `mistral_nemo.model.quant.checkpoint` can recognise a quantized folder
without importing numba (a quarter of a second) until a layer is actually built.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Int4Linear": "mistral_nemo.model.quant.linear",
    "Int8Linear": "mistral_nemo.model.quant.linear",
    "quantize_linear": "mistral_nemo.model.quant.quantize",
    "quantize_model": "mistral_nemo.model.quant.quantize",
    "quantize_on_load": "mistral_nemo.model.quant.quantize",
    "rope_row_perm": "mistral_nemo.model.quant.quantize",
    "weight_bytes": "mistral_nemo.model.quant.quantize",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mistral_nemo.model.quant' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
