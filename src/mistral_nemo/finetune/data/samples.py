"""One JSONL line -> a training sample, with mistral-finetune's rules.

Pretrain lines hold `text` (or `content`). Instruct lines hold `messages` (or `interactions`): roles
system / user / assistant / tool, optional `tools` (or `available_tools`), assistant `tool_calls`
with 9-character ids and `weight` 0 or 1. At most one system message (it becomes the system prompt).
The conversation must end with an assistant message. Tool calls may lack their results (as in
mistral_common's finetuning validation) but never have more results than calls.
Samples with tools (or `only_last: true`) train only on the last message.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from mistral_nemo.tokenizer.chat_messages import Message, ToolSpec, parse_messages, parse_tools
from mistral_nemo.tokenizer.chat_validation import FUNCTION_NAME, validate_conversation
from mistral_nemo.tokenizer.errors import ChatFormatError
from mistral_nemo.tokenizer.tool_ids import is_mistral_tool_call_id


class DataError(ValueError):
    """A line of training data that cannot be used, with the reason."""


class SampleType(StrEnum):
    PRETRAIN = "pretrain"
    INSTRUCT = "instruct"


@dataclass
class TokenSample:
    """Token ids and, per token, whether the loss is computed on it."""

    tokens: list[int]
    masks: list[bool]


@dataclass
class InstructSample:
    messages: list[Message]  # user / assistant / tool, system messages taken out
    weights: list[int | None]  # per message: the assistant `weight` (None: not given)
    system_prompt: str | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    raw_tools: list[dict[str, Any]] | None = None  # as written, for chat templates
    only_last: bool = False

    def prefix(self, end: int) -> InstructSample:
        """The sample cut after message `end` (for chunking tool conversations)."""
        return replace(self, messages=self.messages[: end + 1], weights=self.weights[: end + 1])


_ALLOWED_NEXT = {
    "user": {"assistant", "user"},
    "assistant": {"assistant", "user", "tool"},
    "tool": {"assistant", "tool", "user"},
}


def pretrain_text(data: Any) -> str:
    if not isinstance(data, dict):
        raise DataError("a pretrain line must be a JSON object with a 'text' key")
    if "text" in data and "content" in data:
        raise DataError("a pretrain line has both 'text' and 'content'; keep one")
    text = data.get("text", data.get("content"))
    if not isinstance(text, str):
        raise DataError(f"a pretrain line needs a 'text' string; it has keys {sorted(data)}")
    return text


def _one_of(data: dict[str, Any], keys: tuple[str, str], what: str) -> Any:
    present = [k for k in keys if k in data]
    if len(present) > 1:
        raise DataError(f"the {what} cannot have both '{keys[0]}' and '{keys[1]}'")
    return data[present[0]] if present else None


def instruct_sample(data: Any) -> InstructSample:
    """Parse and check one instruct line (DataError says what is wrong)."""
    if not isinstance(data, dict):
        raise DataError("an instruct line must be a JSON object with a 'messages' list")
    raw_messages = _one_of(data, ("messages", "interactions"), "conversation")
    if raw_messages is None:
        raise DataError(
            f"the conversation has no 'messages' key (it has {', '.join(sorted(data)) or 'none'})"
        )
    raw_tools = _one_of(data, ("tools", "available_tools"), "conversation") or None
    if not isinstance(raw_messages, list) or not raw_messages:
        raise DataError("'messages' must be a non-empty list")
    system_prompt = data.get("system_prompt")
    messages: list[Message] = []
    weights: list[int | None] = []
    try:
        parsed = parse_messages([_with_content(m, i) for i, m in enumerate(raw_messages)])
        tools = parse_tools(raw_tools)
        validate_conversation([Message(role="user", content="x")], tools)  # the tools' own rules
    except ChatFormatError as exc:
        raise DataError(str(exc)) from None
    for i, (raw, message) in enumerate(zip(raw_messages, parsed, strict=True)):
        if message.role == "system":
            if system_prompt is not None:
                raise DataError(f"message {i}: only one system message is allowed")
            system_prompt = "\n\n".join(_texts(message))
            continue
        if message.role == "assistant" and message.prefix:
            raise DataError(f"message {i}: an assistant prefix cannot be trained on")
        messages.append(message)
        weights.append(_weight(raw, i) if message.role == "assistant" else None)
    _check_conversation(messages)
    only_last = bool(data.get("only_last", False)) or bool(tools)
    return InstructSample(messages, weights, system_prompt, tools, raw_tools, only_last)


def _with_content(raw: Any, index: int) -> Any:
    """mistral-finetune accepts `text` as well as `content` in a message."""
    if not isinstance(raw, dict):
        raise DataError(f"message {index} must be an object with a 'role'")
    if "text" in raw and "content" in raw:
        raise DataError(f"message {index}: a message cannot have both 'text' and 'content'")
    if "role" not in raw:
        raise DataError(f"message {index} has no 'role' (it has {', '.join(sorted(raw))})")
    if "text" in raw:
        raw = {**{k: v for k, v in raw.items() if k != "text"}, "content": raw["text"]}
    if raw.get("role") == "assistant" and raw.get("tool_calls") is None and raw.get("content") is None:
        raise DataError(f"message {index}: an assistant message needs 'content' or 'tool_calls'")
    return raw


def _texts(message: Message) -> list[str]:
    content = message.content
    return [content] if isinstance(content, str) else [t for t in content or [] if t]


def _weight(raw: dict[str, Any], index: int) -> int | None:
    weight = raw.get("weight")
    if weight is None:
        return None
    if isinstance(weight, bool) or weight not in (0, 1):
        raise DataError(f"message {index}: 'weight' must be 0 or 1, got {weight!r}")
    return int(weight)


def _check_conversation(messages: list[Message]) -> None:
    """mistral_common's finetuning rules on the order of roles and on each message."""
    if not messages:
        raise DataError("the conversation has no user or assistant messages")
    if messages[-1].role != "assistant":
        raise DataError(f"the last message must be from the assistant, not {messages[-1].role}")
    if len(messages) == 1:
        raise DataError("the conversation must start with a user message before the assistant answers")
    open_calls = 0
    for i, message in enumerate(messages):
        if i and message.role not in _ALLOWED_NEXT[messages[i - 1].role]:
            raise DataError(
                f"message {i}: a {message.role} message cannot follow a {messages[i - 1].role} message"
            )
        if message.role == "tool":
            open_calls -= 1
            if open_calls < 0:
                raise DataError(f"message {i}: more tool results than tool calls")
            if not is_mistral_tool_call_id(message.tool_call_id or ""):
                raise DataError(
                    f"message {i}: tool_call_id {message.tool_call_id!r} must be 9 characters of a-z, "
                    "A-Z, 0-9"
                )
        elif message.role == "assistant":
            _check_assistant(message, i)
            open_calls = len(message.tool_calls)


def _check_assistant(message: Message, index: int) -> None:
    if message.has_content == bool(message.tool_calls):
        raise DataError(
            f"message {index}: an assistant message must have either content or tool_calls, "
            + ("not both" if message.has_content else "and it has neither")
        )
    for j, call in enumerate(message.tool_calls):
        if not is_mistral_tool_call_id(call.id):
            raise DataError(
                f"message {index}: tool_calls[{j}].id {call.id!r} must be 9 characters of a-z, A-Z, 0-9"
            )
        if not FUNCTION_NAME.match(call.name):
            raise DataError(
                f"message {index}: tool_calls[{j}].function.name {call.name!r} is not a valid name"
            )


def chunk_tool_conversation(sample: InstructSample) -> list[InstructSample]:
    """Extra samples for a conversation that trains only its last message: one ending at each
    earlier assistant message, so every assistant turn is trained once (mistral-finetune's
    dynamic_chunk_fn_call)."""
    if not sample.only_last:
        return []
    ends = [i for i, m in enumerate(sample.messages) if m.role == "assistant"][:-1]
    return [sample.prefix(end) for end in ends]
