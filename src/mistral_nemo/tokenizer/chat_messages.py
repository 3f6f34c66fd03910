"""OpenAI-style message and tool dicts, read into typed records with clear errors.

This layer checks only the shape of each item (types, roles, content parts); the rules
that relate messages to each other live in chat_validation.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mistral_nemo.tokenizer.errors import ChatFormatError

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

# A message's content as sent: a string, a list of text parts (kept apart because
# Mistral joins parts and messages with "\n\n"), or nothing.
Content = str | list[str] | None


@dataclass
class ToolCall:
    """One function call of an assistant message; arguments is JSON text as sent (or produced)."""

    id: str
    name: str
    arguments: str


@dataclass
class Message:
    role: Role
    content: Content = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    prefix: bool = False

    @property
    def has_content(self) -> bool:
        """Truthiness of the content as sent (an empty string or empty list counts as none)."""
        return bool(self.content)


@dataclass
class ToolSpec:
    """A function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]

    def to_prompt_dict(self) -> dict[str, Any]:
        """The form written inside [AVAILABLE_TOOLS] (key order matters for the tokens)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def parse_messages(messages: Any) -> list[Message]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ChatFormatError("messages must be a list of message objects", param="messages")
    return [_parse_message(raw, i) for i, raw in enumerate(messages)]


def parse_tools(tools: Any) -> list[ToolSpec]:
    if tools is None:
        return []
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise ChatFormatError("tools must be a list of tool objects", param="tools")
    return [_parse_tool(raw, i) for i, raw in enumerate(tools)]


def _parse_message(raw: Any, index: int) -> Message:
    if not isinstance(raw, dict):
        raise ChatFormatError("each message must be an object with a 'role'", message_index=index)
    role = raw.get("role")
    if role not in ROLES:
        raise ChatFormatError(
            f"unknown role {role!r}; expected one of {', '.join(ROLES)}", message_index=index, param="role"
        )
    content = _parse_content(raw.get("content"), index)
    if role in ("user", "tool") and content is None:
        raise ChatFormatError(f"a {role} message needs content", message_index=index, param="content")
    if role == "system" and content is None:
        raise ChatFormatError("System prompt must have content", message_index=index, param="content")
    message = Message(role=role, content=content)
    if role == "assistant":
        message.tool_calls = _parse_tool_calls(raw.get("tool_calls"), index)
        prefix = raw.get("prefix", False)
        if not isinstance(prefix, bool):
            raise ChatFormatError("'prefix' must be true or false", message_index=index, param="prefix")
        message.prefix = prefix
    if role == "tool":
        tool_call_id = raw.get("tool_call_id")
        if tool_call_id is None:
            raise ChatFormatError("a tool message needs the tool_call_id it answers", message_index=index)
        message.tool_call_id = _expect_str(tool_call_id, "tool_call_id", index)
        if raw.get("name") is not None:
            message.name = _expect_str(raw["name"], "name", index)
    return message


def _parse_content(raw: Any, index: int) -> Content:
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise ChatFormatError("content must be a string or a list of text parts", message_index=index)
    texts: list[str] = []
    for j, part in enumerate(raw):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise ChatFormatError(
                f"content part {j} has type {kind!r}; Mistral NeMo reads text parts only",
                message_index=index,
                param="content",
            )
        texts.append(_expect_str(part.get("text"), f"content[{j}].text", index))
    return texts


def _parse_tool_calls(raw: Any, index: int) -> list[ToolCall]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ChatFormatError("tool_calls must be a list", message_index=index, param="tool_calls")
    calls = []
    for j, call in enumerate(raw):
        where = f"tool_calls[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise ChatFormatError(f"{where} must be an object with a 'function'", message_index=index)
        if call.get("type", "function") != "function":
            raise ChatFormatError(f"{where}.type must be 'function'", message_index=index)
        if call.get("id") is None:
            raise ChatFormatError(f"{where} needs an 'id' (tool results refer to it)", message_index=index)
        function = call["function"]
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments, ensure_ascii=False)
        elif arguments is None:
            arguments = "{}"
        calls.append(
            ToolCall(
                id=_expect_str(call["id"], f"{where}.id", index),
                name=_expect_str(function.get("name"), f"{where}.function.name", index),
                arguments=_expect_str(arguments, f"{where}.function.arguments", index),
            )
        )
    return calls


def _parse_tool(raw: Any, index: int) -> ToolSpec:
    where = f"tools[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("function"), dict):
        raise ChatFormatError(f"{where} must be an object with a 'function'", param="tools")
    if raw.get("type", "function") != "function":
        raise ChatFormatError(f"{where}.type must be 'function'", param="tools")
    function = raw["function"]
    name = function.get("name")
    if not isinstance(name, str):
        raise ChatFormatError(f"{where}.function.name must be a string", param="tools")
    description = function.get("description") or ""
    if not isinstance(description, str):
        raise ChatFormatError(f"{where}.function.description must be a string", param="tools")
    # OpenAI lets a function without arguments omit "parameters"; Mistral needs an object schema.
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ChatFormatError(f"{where}.function.parameters must be a JSON schema object", param="tools")
    return ToolSpec(name=name, description=description, parameters=parameters)


def _expect_str(value: Any, what: str, index: int) -> str:
    if not isinstance(value, str):
        raise ChatFormatError(f"{what} must be a string, got {type(value).__name__}", message_index=index)
    return value
