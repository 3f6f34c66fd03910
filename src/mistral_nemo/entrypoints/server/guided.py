"""The chat endpoint's structured output: the engine's grammars (engine/structured_output.py)."""

from __future__ import annotations

from typing import Any

from mistral_nemo.engine.constraints import ConstraintFactory
from mistral_nemo.engine.sampling_params import SamplingParamsError, StructuredOutputsParams
from mistral_nemo.engine.structured_output import (
    GrammarCompiler,
    GuidedDecodingError,
    chat_constraint,
    json_constraint,
    structured_output_constraint,
    tool_call_constraint,
)

__all__ = [
    "GrammarCompiler",
    "GuidedDecodingError",
    "build_constraint",
    "json_constraint",
    "tool_call_constraint",
]


# vLLM's guided_* fields -> StructuredOutputsParams field names
_GUIDED = {
    "guided_json": "json",
    "guided_choice": "choice",
    "guided_regex": "regex",
    "guided_grammar": "grammar",
}
_STRUCTURED_KEYS = ("json", "json_object", "choice", "regex", "grammar")


def build_constraint(body: Any, compiler: GrammarCompiler) -> ConstraintFactory | None:
    """A forced tool choice, else response_format, else vLLM's structured_outputs / guided_* fields, else
    no constraint (the same code as LLM.chat and SamplingParams.structured_outputs)."""
    spec = structured_outputs_of(getattr(body, "model_extra", None) or {})
    if spec is not None:
        forced = body.tools and getattr(body, "tool_choice", None) not in (None, "auto", "none")
        if forced or (body.response_format or {}).get("type") not in (None, "text"):
            raise GuidedDecodingError(
                "structured_outputs / guided_* cannot be combined with response_format or a forced "
                "tool_choice"
            )
        return structured_output_constraint(compiler, spec)
    return chat_constraint(
        compiler,
        body.tools,
        getattr(body, "tool_choice", None),
        body.response_format,
        getattr(body, "parallel_tool_calls", None) is not False,
    )


def structured_outputs_of(extra: dict[str, Any]) -> StructuredOutputsParams | None:
    """StructuredOutputsParams from a body's `structured_outputs` or one `guided_*` field (400 otherwise)."""
    given = [name for name in ("structured_outputs", *_GUIDED) if extra.get(name) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise GuidedDecodingError(f"give one of structured_outputs, {', '.join(_GUIDED)}; got {given}")
    name = given[0]
    value = extra[name]
    if name == "structured_outputs":
        if not isinstance(value, dict):
            raise GuidedDecodingError("structured_outputs must be an object")
        unknown = sorted(set(value) - set(_STRUCTURED_KEYS))
        if unknown:
            raise GuidedDecodingError(f"structured_outputs has unsupported field(s) {unknown}")
        fields = value
    else:
        fields = {_GUIDED[name]: value}
    try:
        return StructuredOutputsParams(**fields)
    except (SamplingParamsError, TypeError) as exc:
        raise GuidedDecodingError(f"{name}: {exc}") from None
