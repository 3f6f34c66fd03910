"""Request bodies of the OpenAI- and Mistral-compatible API, as pydantic models.

Types are strict (`"stream": "yes"` or `"top_logprobs": "5"` is a 400, never coerced). Messages
and tools stay dicts (TypedDicts): their shape is checked here, the conversation rules by the
tokenizer's chat layer, with messages that name the offending `messages[i]` as mistral_common
would. Unknown fields are kept (`model_extra`) and otherwise ignored, since SDKs send fields a
self-hosted server has no use for. Bodies nested deeper than MAX_JSON_DEPTH are refused before
anything walks them recursively.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NotRequired, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from mistral_nemo.entrypoints.server.errors import APIError, validation_error

T = TypeVar("T", bound=BaseModel)

# Deeper JSON is refused with a 400: a real request (a JSON schema in tools or response_format
# included) is far shallower, and recursive code downstream (templates, JSON encoders) is safe.
MAX_JSON_DEPTH = 64


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


@with_config(ConfigDict(extra="allow"))
class FunctionDefinition(TypedDict):
    name: str
    description: NotRequired[str | None]
    parameters: NotRequired[dict[str, Any] | None]  # a JSON schema (checked by the tokenizer layer)
    strict: NotRequired[bool | None]


@with_config(ConfigDict(extra="allow"))
class Tool(TypedDict):
    type: NotRequired[Literal["function"]]
    function: FunctionDefinition


@with_config(ConfigDict(extra="allow"))
class ChatMessage(TypedDict):
    """One message as OpenAI and Mistral send it (the conversation rules are the tokenizer's)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: NotRequired[str | list[dict[str, Any]] | None]  # a text, or parts {"type": "text", "text"}
    name: NotRequired[str | None]
    tool_calls: NotRequired[list[dict[str, Any]] | None]
    tool_call_id: NotRequired[str | None]
    prefix: NotRequired[bool]  # Mistral: a final assistant message the answer continues


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingFields(_Request):
    """Fields shared by chat and text completions."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # vLLM / Mistral extension
    min_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    min_tokens: int | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name; wins over max_tokens
    random_seed: int | None = None  # Mistral's name for seed
    safe_prompt: bool = False  # Mistral: prepend its guardrail system prompt
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None  # auto, none, any, required, {"type": "function", ...}
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's default for text completions; 0 with echo scores the prompt
    echo: bool = False
    logprobs: int | None = None  # legacy: how many top alternatives per token
    suffix: str | None = None


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Tool] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int] = Field(default_factory=list)


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


async def parse_body(request: Request, model: type[T]) -> T:
    """Read a JSON object body into `model`; any problem is a 400 that says what is wrong.

    The Content-Type is not insisted on (`curl -d` sends form encoding): a body that is a JSON
    object is accepted, anything else is refused.
    """
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        content_type = request.headers.get("content-type", "")
        hint = "" if "json" in content_type else " (send it with Content-Type: application/json)"
        raise APIError(400, f"the request body is not valid JSON{hint}") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise APIError(400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    if b"\\ud" in raw.lower() and not _encodable(data):
        raise APIError(400, "the request body holds an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)")
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not a {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None


def json_depth(data: Any) -> int:
    """How deeply arrays and objects nest (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                return deepest  # enough to refuse it
        stack.extend((child, depth) for child in value if isinstance(child, dict | list))
    return deepest


def _encodable(data: Any) -> bool:
    """False if a string holds a lone surrogate (valid JSON escapes, but not text anyone can encode)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
