"""The conversation rules of mistral_common's v3 validator (serving mode), with message indexes.

A conversation that mistral_common would refuse is refused here too, so the model never
sees a prompt shape it was not trained on. Tool-call ids are checked after mapping
(tool_ids.py), which is how any client id becomes acceptable.
"""

from __future__ import annotations

import re

import jsonschema

from mistral_nemo.tokenizer.chat_messages import Message, ToolSpec
from mistral_nemo.tokenizer.errors import ChatFormatError
from mistral_nemo.tokenizer.tool_ids import is_mistral_tool_call_id

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NAME_RULE = "must be 1 to 64 characters of a-z, A-Z, 0-9, underscore or dash"

# Which role may follow which.
_ALLOWED_NEXT: dict[str, set[str]] = {
    "system": {"user", "assistant", "system"},
    "user": {"assistant", "system", "user"},
    "assistant": {"assistant", "user", "tool"},
    "tool": {"assistant", "tool", "user"},
}


def validate_conversation(messages: list[Message], tools: list[ToolSpec]) -> None:
    """Raise ChatFormatError for the first rule the conversation breaks."""
    _validate_structure(messages)
    for index, message in enumerate(messages):
        _validate_message(message, index, is_last=index == len(messages) - 1)
    for index, tool in enumerate(tools):
        _validate_tool(tool, index)


def _validate_structure(messages: list[Message]) -> None:
    if not messages:
        raise ChatFormatError("the conversation must have at least one message", param="messages")
    if len(messages) == 1 and messages[0].role not in ("user", "system"):
        raise ChatFormatError(
            f"a conversation of one message must be a user or system message, not {messages[0].role}",
            message_index=0,
        )
    last = messages[-1]
    # As in mistral_common, only a finished assistant answer is refused at the end (a trailing
    # system message is fine: it joins the system prompt).
    if len(messages) > 1 and last.role == "assistant" and not last.prefix:
        raise ChatFormatError(
            "the last message must be from the user or a tool (or an assistant prefix to continue), "
            "not a finished assistant message",
            message_index=len(messages) - 1,
        )
    for index in range(1, len(messages)):
        previous, current = messages[index - 1].role, messages[index].role
        if current not in _ALLOWED_NEXT[previous]:
            raise ChatFormatError(
                f"{_article(current)} {current} message cannot follow {_article(previous)} {previous}"
                " message",
                message_index=index,
            )
    _validate_tool_result_counts(messages)


def _article(role: str) -> str:
    return "an" if role == "assistant" else "a"  # roles: system, user, assistant, tool


def _validate_tool_result_counts(messages: list[Message]) -> None:
    # Mirrors mistral_common: the first message opens the count, it is not counted itself.
    expected, opened_at = 0, 0
    for index, message in enumerate(messages[1:], start=1):
        if message.role == "tool":
            expected -= 1
        elif message.role == "assistant":
            if expected != 0:
                raise ChatFormatError(
                    _count_message(messages[opened_at], expected), message_index=opened_at, param="tool_calls"
                )
            if message.tool_calls:
                expected, opened_at = len(message.tool_calls), index
    if expected != 0:
        raise ChatFormatError(_count_message(messages[opened_at], expected), message_index=opened_at)


def _count_message(opener: Message, missing: int) -> str:
    calls = len(opener.tool_calls)
    answered = calls - missing
    return (
        f"not the same number of tool calls and tool results: {calls} call(s), {answered} result(s) "
        "before the next assistant message"
    )


def _validate_message(message: Message, index: int, is_last: bool) -> None:
    if message.role == "assistant":
        if message.has_content == bool(message.tool_calls):
            raise ChatFormatError(
                "an assistant message must have either content or tool_calls, but not both"
                if message.has_content
                else "an assistant message must have content or tool_calls",
                message_index=index,
            )
        for j, call in enumerate(message.tool_calls):
            if not is_mistral_tool_call_id(call.id):
                raise ChatFormatError(
                    f"tool_calls[{j}].id {call.id!r} must be 9 characters of a-z, A-Z, 0-9",
                    message_index=index,
                )
            if not FUNCTION_NAME.match(call.name):
                raise ChatFormatError(
                    f"tool_calls[{j}].function.name {call.name!r} {_NAME_RULE}", message_index=index
                )
        if message.prefix and not is_last:
            raise ChatFormatError("only the last message can be an assistant prefix", message_index=index)
    elif message.role == "tool":
        if message.name is not None and not FUNCTION_NAME.match(message.name):
            raise ChatFormatError(f"tool name {message.name!r} {_NAME_RULE}", message_index=index)
        if message.tool_call_id is None or not is_mistral_tool_call_id(message.tool_call_id):
            raise ChatFormatError(
                f"tool_call_id {message.tool_call_id!r} must be 9 characters of a-z, A-Z, 0-9",
                message_index=index,
            )


def _validate_tool(tool: ToolSpec, index: int) -> None:
    if not FUNCTION_NAME.match(tool.name):
        raise ChatFormatError(f"tools[{index}].function.name {tool.name!r} {_NAME_RULE}", param="tools")
    try:
        jsonschema.Draft7Validator.check_schema(tool.parameters)
    except jsonschema.exceptions.SchemaError as exc:
        raise ChatFormatError(
            f"tools[{index}].function.parameters is not a valid JSON schema: {exc.message}", param="tools"
        ) from None
