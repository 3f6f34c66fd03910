"""The choices `load` takes, as plain names: the CLI lists them without importing torch."""

from __future__ import annotations

QUANTIZATIONS = ("auto", "none", "int8", "int4", "fp8")
DTYPE_NAMES = ("bfloat16", "float16", "float32")
QUANTIZE_TARGETS = ("int8", "int4", "fp8")  # what `quantize` writes
