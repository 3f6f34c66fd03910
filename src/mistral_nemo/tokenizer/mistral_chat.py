"""The Mistral v3-Tekken instruct format, token-for-token equal to mistral_common.

    <s>[INST]user[/INST]assistant</s>[AVAILABLE_TOOLS][...][/AVAILABLE_TOOLS][INST]system\n\nuser[/INST]
    [TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "a1b2c3d4e"}]</s>
    [TOOL_RESULTS]{"content": ..., "call_id": "a1b2c3d4e"}[/TOOL_RESULTS]

Steps: read the dicts (chat_messages), map tool-call ids (tool_ids), check the rules
(chat_validation), merge runs of same-role messages and drop system messages into one
system prompt (as mistral_common's normalizer does), then write tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mistral_nemo.tokenizer.chat_messages import Message, ToolCall, ToolSpec, parse_messages, parse_tools
from mistral_nemo.tokenizer.chat_validation import validate_conversation
from mistral_nemo.tokenizer.errors import ChatFormatError
from mistral_nemo.tokenizer.tool_ids import ToolCallIdMap

JOIN = "\n\n"  # between system prompts, merged messages and text parts alike


class TextTokenizer(Protocol):
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def special_id(self, text: str) -> int: ...


@dataclass
class EncodedChat:
    """The prompt ids and the tool-call id map used to build them (for mapping ids back)."""

    ids: list[int]
    tool_call_ids: ToolCallIdMap = field(default_factory=ToolCallIdMap)


@dataclass
class _Turn:
    """A merged run of same-role messages, as the encoder sees it."""

    role: str
    first_index: int
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    prefix: bool = False


class MistralChatEncoder:
    """Encodes OpenAI-style conversations for a Tekken (v3) Mistral model."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos = tokenizer.special_id("<s>")
        self.eos = tokenizer.special_id("</s>")
        self.inst, self.end_inst = tokenizer.special_id("[INST]"), tokenizer.special_id("[/INST]")
        self.tools_start = tokenizer.special_id("[AVAILABLE_TOOLS]")
        self.tools_end = tokenizer.special_id("[/AVAILABLE_TOOLS]")
        self.results_start = tokenizer.special_id("[TOOL_RESULTS]")
        self.results_end = tokenizer.special_id("[/TOOL_RESULTS]")
        self.tool_calls = tokenizer.special_id("[TOOL_CALLS]")

    def encode(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        tool_call_ids: ToolCallIdMap | None = None,
    ) -> EncodedChat:
        """Validate and encode; the ids end after the last [/INST], tool result, or assistant prefix."""
        id_map = tool_call_ids if tool_call_ids is not None else ToolCallIdMap()
        parsed = parse_messages(messages)
        tool_specs = parse_tools(tools)
        _map_tool_call_ids(parsed, id_map)
        validate_conversation(parsed, tool_specs)
        system_prompt = _system_prompt(parsed)
        turns = _merge_turns(parsed)
        return EncodedChat(self._encode_turns(turns, system_prompt, tool_specs), id_map)

    def encode_tool_calls(self, calls: Sequence[ToolCall]) -> list[int]:
        """[TOOL_CALLS] and the JSON list, as an assistant turn writes them (without </s>)."""
        payload = []
        for call in calls:
            entry: dict[str, Any] = {"name": call.name, "arguments": _json_or_text(call.arguments)}
            if call.id and call.id != "null":
                entry["id"] = call.id
            payload.append(entry)
        return [self.tool_calls, *self.tokenizer.encode(json.dumps(payload, ensure_ascii=False))]

    def _encode_turns(
        self, turns: list[_Turn], system_prompt: str | None, tools: list[ToolSpec]
    ) -> list[int]:
        last_user = max(i for i, turn in enumerate(turns) if turn.role == "user")
        ids = [self.bos]
        for i, turn in enumerate(turns):
            if turn.role == "user":
                if i == last_user and tools:
                    tools_json = json.dumps([t.to_prompt_dict() for t in tools], ensure_ascii=False)
                    ids += [self.tools_start, *self.tokenizer.encode(tools_json), self.tools_end]
                text = turn.content
                if i == last_user and system_prompt:
                    text = system_prompt + JOIN + text
                ids += [self.inst, *self.tokenizer.encode(text), self.end_inst]
            elif turn.role == "tool":
                result = {"content": _json_or_text(turn.content), "call_id": turn.tool_call_id}
                ids += [
                    self.results_start,
                    *self.tokenizer.encode(json.dumps(result, ensure_ascii=False)),
                    self.results_end,
                ]
            else:
                ids += self._encode_assistant(turn)
        return ids

    def _encode_assistant(self, turn: _Turn) -> list[int]:
        if turn.tool_calls and turn.content:
            raise ChatFormatError(
                "consecutive assistant messages mix text and tool calls; send them as separate turns",
                message_index=turn.first_index,
            )
        if turn.tool_calls:
            ids = self.encode_tool_calls(turn.tool_calls)
        elif not turn.content:
            # e.g. content [{"type": "text", "text": ""}]: a part, but no text (mistral_common refuses it)
            raise ChatFormatError(
                "an assistant message has no text (its content parts are all empty) and no tool calls",
                message_index=turn.first_index,
            )
        else:
            ids = self.tokenizer.encode(turn.content.rstrip(" "))
        if not turn.prefix:
            ids.append(self.eos)
        return ids


def _map_tool_call_ids(messages: list[Message], id_map: ToolCallIdMap) -> None:
    for message in messages:
        for call in message.tool_calls:
            call.id = id_map.to_mistral(call.id)
        if message.tool_call_id is not None:
            message.tool_call_id = id_map.to_mistral(message.tool_call_id)


def _joined_text(contents: Sequence[str | list[str] | None]) -> str:
    """Non-empty texts of several messages' contents, joined like mistral_common does."""
    texts: list[str] = []
    for content in contents:
        parts = [content] if isinstance(content, str) else content or []
        texts.extend(part for part in parts if part)
    return JOIN.join(texts)


def _system_prompt(messages: list[Message]) -> str | None:
    prompts = [_joined_text([m.content]) for m in messages if m.role == "system" and m.has_content]
    return JOIN.join(prompts) if prompts else None


def _merge_turns(messages: list[Message]) -> list[_Turn]:
    """Merge runs of same-role messages; system messages leave the flow (they became the system prompt)."""
    turns: list[_Turn] = []
    start = 0
    while start < len(messages):
        end = start
        while end < len(messages) and messages[end].role == messages[start].role:
            end += 1
        run = messages[start:end]
        role = run[0].role
        if role == "tool":
            # Tool results are never merged: each keeps its own call id.
            turns += [
                _Turn(
                    "tool",
                    start + k,
                    content=_normalized_json(_joined_text([m.content])),
                    tool_call_id=m.tool_call_id,
                )
                for k, m in enumerate(run)
            ]
        elif role in ("user", "assistant"):
            turn = _Turn(role, start, content=_joined_text([m.content for m in run]))
            for message in run:
                turn.tool_calls += [
                    ToolCall(c.id, c.name, _normalized_json(c.arguments)) for c in message.tool_calls
                ]
                turn.prefix |= message.prefix
            turns.append(turn)
        start = end
    if not turns or turns[0].role != "user":
        turns.insert(0, _Turn("user", 0))
    return turns


def _normalized_json(text: str) -> str:
    """Empty -> "{}"; valid JSON is re-dumped; anything else is kept as written."""
    if not text:
        return "{}"
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or JSON Python will not hold (too deep, huge ints)
        return text


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text
