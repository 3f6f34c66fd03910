"""Weight-only quantization for CPU decode: int8 / int4 linears with numba kernels, model helpers."""

from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear
from mistral_nemo.model.quant.quantize import (
    linear_from_gguf,
    quantize_linear,
    quantize_model,
    rope_row_perm,
    weight_bytes,
)

__all__ = [
    "Int4Linear",
    "Int8Linear",
    "linear_from_gguf",
    "quantize_linear",
    "quantize_model",
    "rope_row_perm",
    "weight_bytes",
]
