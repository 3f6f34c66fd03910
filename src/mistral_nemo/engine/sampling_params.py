"""SamplingParams: how to pick each next token and when to stop, validated up front."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mistral_nemo.engine.constraints import ConstraintFactory

MAX_N = 128
MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0
GREEDY_TEMPERATURE = 1e-5  # temperatures below it sample greedily


class SamplingParamsError(ValueError):
    """A sampling parameter is out of range: `param` names it (the message does too)."""

    def __init__(self, message: str, *, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    # `not (a <= v <= b)` is also true for NaN, so NaN is rejected too.
    ok = _is_number(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise SamplingParamsError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}", param=name)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        allowed = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SamplingParamsError(f"{name} must be an integer {allowed}, got {value!r}", param=name)


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Constrain the output (vLLM's StructuredOutputsParams): set exactly one field.

    json: a JSON schema (dict or its text); json_object: any JSON object; choice: one of these strings;
    regex: a regular expression (Rust regex syntax); grammar: a Lark grammar (llguidance's dialect).
    """

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    choice: list[str] | None = None
    regex: str | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "choice", "regex", "grammar") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise SamplingParamsError(
                "structured_outputs needs exactly one of json, json_object, choice, regex, grammar; "
                f"got {given}",
                param="structured_outputs",
            )
        if self.choice is not None and (
            not isinstance(self.choice, list)
            or not self.choice
            or not all(isinstance(c, str) for c in self.choice)
        ):
            raise SamplingParamsError(
                "structured_outputs.choice must be a non-empty list of strings",
                param="structured_outputs.choice",
            )
        for name in ("regex", "grammar"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise SamplingParamsError(
                    f"structured_outputs.{name} must be a string", param=f"structured_outputs.{name}"
                )


@dataclass
class SamplingParams:
    """vLLM-shaped parameters. temperature 0 (or below 1e-5) means greedy; top_k 0 (or -1) means no top-k cut.

    Penalties follow the usual conventions: presence/frequency (OpenAI) subtract
    ``presence * [count > 0] + frequency * count`` over the *output* tokens; repetition
    (HF/vLLM) divides positive and multiplies negative logits of every token seen in the
    prompt or the output. ``logprobs``/``prompt_logprobs`` count the top alternatives returned
    besides the chosen token (0: only the chosen token's logprob).
    """

    max_tokens: int | None = 16  # None: until the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    # Constrained output, compiled by the engine when the request is added (engine/structured_output.py).
    structured_outputs: StructuredOutputsParams | None = None
    # A compiled constraint (LLM.chat and the server set it for response_format / forced tool calls).
    constraint: ConstraintFactory | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, 1)
        _check_int("n", self.n, 1, MAX_N)
        _check_number("temperature", self.temperature, 0.0, 100.0)
        _check_number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if self.top_k == -1:  # vLLM spells "off" as -1
            self.top_k = 0
        if not _is_int(self.top_k) or self.top_k < 0:
            raise SamplingParamsError(
                f"top_k must be 0 or -1 (off) or an integer >= 1, got {self.top_k!r}", param="top_k"
            )
        _check_number("min_p", self.min_p, 0.0, 1.0)
        _check_number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_number("repetition_penalty", self.repetition_penalty, 0.0, 2.0, low_open=True)
        if self.seed is not None and not _is_int(self.seed):
            raise SamplingParamsError(f"seed must be an integer or None, got {self.seed!r}", param="seed")
        if not isinstance(self.stop, list) or any(not isinstance(s, str) or not s for s in self.stop):
            raise SamplingParamsError("stop must be a list of non-empty strings", param="stop")
        self.stop_token_ids = list(self.stop_token_ids)
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise SamplingParamsError(
                f"stop_token_ids must be token ids >= 0, got {self.stop_token_ids!r}", param="stop_token_ids"
            )
        if self.structured_outputs is not None and not isinstance(
            self.structured_outputs, StructuredOutputsParams
        ):
            raise SamplingParamsError(
                "structured_outputs must be a StructuredOutputsParams", param="structured_outputs"
            )
        self.logit_bias = _normalise_logit_bias(self.logit_bias)
        _check_int("min_tokens", self.min_tokens, 0, self.max_tokens)
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0, MAX_LOGPROBS)

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature leave float32's range (1e-38 gave "ectableectable..."),
        # and the distribution is one-hot on the argmax anyway (vLLM uses the same epsilon).
        return self.temperature < GREEDY_TEMPERATURE

    def clone(self, **changes: Any) -> SamplingParams:
        """A deep copy with some fields changed (and validated again); the constraint factory is shared."""
        copied = copy.deepcopy(dataclasses.replace(self, constraint=None))
        return dataclasses.replace(copied, **{"constraint": self.constraint, **changes})


def _normalise_logit_bias(bias: Any) -> dict[int, float] | None:
    """OpenAI sends ``{"1234": -100}``: keys become ints; the vocab-size check is the engine's."""
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise SamplingParamsError(
            f"logit_bias must be a mapping of token id to bias, got {bias!r}", param="logit_bias"
        )
    result: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = key if _is_int(key) else int(str(key).strip())
        except ValueError:
            raise SamplingParamsError(
                f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            ) from None
        if token < 0:
            raise SamplingParamsError(
                f"logit_bias keys must be token ids >= 0, got {key!r}", param="logit_bias"
            )
        if not _is_number(value) or not math.isfinite(value) or abs(value) > MAX_LOGIT_BIAS:
            limit = f"{MAX_LOGIT_BIAS:g}"
            raise SamplingParamsError(
                f"logit_bias values must be in [-{limit}, {limit}], got {value!r} for {key!r}",
                param="logit_bias",
            )
        result[token] = float(value)
    return result
