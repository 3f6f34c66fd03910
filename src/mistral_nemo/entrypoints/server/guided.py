"""The chat endpoint's structured output: the engine's grammars (engine/structured_output.py)."""

from __future__ import annotations

from typing import Any

from mistral_nemo.engine.constraints import ConstraintFactory
from mistral_nemo.engine.structured_output import (
    GrammarCompiler,
    GuidedDecodingError,
    chat_constraint,
    json_constraint,
    tool_call_constraint,
)

__all__ = [
    "GrammarCompiler",
    "GuidedDecodingError",
    "build_constraint",
    "json_constraint",
    "tool_call_constraint",
]


def build_constraint(body: Any, compiler: GrammarCompiler) -> ConstraintFactory | None:
    """A forced tool choice, else response_format, else no constraint (the same code as LLM.chat)."""
    return chat_constraint(
        compiler,
        body.tools,
        getattr(body, "tool_choice", None),
        body.response_format,
        getattr(body, "parallel_tool_calls", None) is not False,
    )
