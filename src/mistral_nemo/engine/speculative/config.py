"""SpeculativeConfig: vLLM's ``speculative_config`` dict, validated (unknown keys and methods refused)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("ngram",)
MAX_SPECULATIVE_TOKENS = 16


class SpeculativeConfigError(ValueError):
    """A speculative_config that names an unknown key or method, or a value out of range."""


@dataclass(frozen=True)
class SpeculativeConfig:
    """Prompt-lookup (n-gram) drafting, as vLLM's ``{"method": "ngram", ...}``.

    num_speculative_tokens: the most tokens drafted per step (K; each step drafts the 1..K that pays
    best for the sequence's acceptance so far, see decoder.py); prompt_lookup_min / max: the
    shortest / longest suffix of the sequence searched for earlier in it; disable_by_batch_size:
    no drafting in steps with at least this many running sequences (a batch already reads the
    weights once for many tokens, so drafts add compute, not a free ride).
    """

    method: str = "ngram"
    num_speculative_tokens: int = 7  # 1 + 7 rows: one tile of the row-group integer kernel (simd.TILE)
    # 1- and 2-token matches mostly propose wrong drafts, whose step costs more than it emits (the
    # offline fit in decoder.py gives 1.65x -> 1.78x input-grounded, 1.01x -> 1.09x open-ended at 3..8)
    prompt_lookup_min: int = 3
    prompt_lookup_max: int = 8
    disable_by_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            hint = " (a draft model is not built here; use method 'ngram')" if self.method else ""
            raise SpeculativeConfigError(
                f"speculative_config method {self.method!r} is not supported; known: {list(METHODS)}{hint}"
            )
        for name, low, high in (
            ("num_speculative_tokens", 1, MAX_SPECULATIVE_TOKENS),
            ("prompt_lookup_min", 1, None),
            ("prompt_lookup_max", 1, None),
            ("disable_by_batch_size", 1, None),
        ):
            value = getattr(self, name)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < low
                or (high and value > high)
            ):
                allowed = f"between {low} and {high}" if high else f">= {low}"
                raise SpeculativeConfigError(
                    f"speculative_config {name} must be an integer {allowed}, got {value!r}"
                )
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise SpeculativeConfigError(
                f"speculative_config prompt_lookup_min ({self.prompt_lookup_min}) is above "
                f"prompt_lookup_max ({self.prompt_lookup_max})"
            )

    @classmethod
    def from_value(cls, value: SpeculativeConfig | Mapping[str, Any] | None) -> SpeculativeConfig | None:
        """A config from vLLM's dict shape (or one already built, or None for no speculation)."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if not isinstance(value, Mapping):
            raise SpeculativeConfigError(f"speculative_config must be a dict, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        if "model" in value:
            raise SpeculativeConfigError(
                "speculative_config 'model' (a draft model) is not supported here; use method 'ngram'"
            )
        unknown = sorted(set(value) - known)
        if unknown:
            raise SpeculativeConfigError(
                f"unknown speculative_config key(s) {unknown}; known: {sorted(known)}"
            )
        value = dict(value)
        top = value.get("prompt_lookup_max")
        if "prompt_lookup_min" not in value and isinstance(top, int) and top < cls.prompt_lookup_min:
            value["prompt_lookup_min"] = top  # only a lower max given: the default min follows it down
        return cls(**value)
