"""Tool calls out of generated ids: text, then [TOOL_CALLS] and a JSON list of calls.

Works over a stream: `add` takes one id at a time and hands back the text that is final
and each call as soon as its JSON object closes. Output the model botched (bad JSON, a
call without a name, a list that never closes) comes back as plain text with `malformed`
set; the parser never raises on model output.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from mistral_nemo.tokenizer.detokenizer import IncrementalDetokenizer
from mistral_nemo.tokenizer.tool_ids import is_mistral_tool_call_id

_ID_ALPHABET = string.ascii_letters + string.digits


def random_tool_call_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


class ToolTokenizer(Protocol):
    def special_id(self, text: str) -> int: ...

    def is_special(self, token_id: int) -> bool: ...

    def id_to_bytes(self, token_id: int) -> bytes: ...

    def id_to_piece(self, token_id: int) -> str: ...

    def decode(self, ids: Iterable[int]) -> str: ...


@dataclass
class ParsedToolCall:
    """A call the model made; arguments is JSON text (what OpenAI's API returns)."""

    name: str
    arguments: str
    id: str


@dataclass
class ToolCallEvents:
    """What one step of the stream produced: final text, and calls whose JSON just closed."""

    text: str = ""
    calls: list[ParsedToolCall] = field(default_factory=list)


@dataclass
class ToolCallParseResult:
    content: str
    tool_calls: list[ParsedToolCall]
    malformed: bool


class ToolCallParser:
    """Incremental parser; one per generated sequence."""

    def __init__(self, tokenizer: ToolTokenizer, new_id: Callable[[], str] = random_tool_call_id) -> None:
        self._tool_calls_id = tokenizer.special_id("[TOOL_CALLS]")
        self._detok = IncrementalDetokenizer(tokenizer)
        self._new_id = new_id
        self._scanner: _ListScanner | None = None  # set while inside a [TOOL_CALLS] section
        self.malformed = False
        self.calls: list[ParsedToolCall] = []

    @property
    def in_tool_calls(self) -> bool:
        """True while reading a [TOOL_CALLS] list."""
        return self._scanner is not None and not self._scanner.done

    def add(self, token_id: int) -> ToolCallEvents:
        if token_id == self._tool_calls_id and not self.malformed:
            # Control tokens split UTF-8 runs, so the detokenizer flushes here by itself.
            events = ToolCallEvents(text=self._detok.add(token_id))
            if self._scanner is not None:
                events.text += self._end_section()
            if not self.malformed:
                self._scanner = _ListScanner()
            return events
        return self._route(self._detok.add(token_id))

    def finish(self) -> ToolCallEvents:
        """End of generation: flush held-back text; an unfinished call list becomes text."""
        events = self._route(self._detok.flush())
        if self._scanner is not None:
            events.text += self._end_section()
        return events

    def _route(self, text: str) -> ToolCallEvents:
        if self._scanner is None:
            return ToolCallEvents(text=text)
        scanner = self._scanner
        events = ToolCallEvents()
        for start, end in scanner.feed(text):
            call = self._to_call(scanner.raw[start:end])
            if call is None:
                events.text += self._give_up(start)
                return events
            self.calls.append(call)
            events.calls.append(call)
        if scanner.broken:
            events.text += self._give_up(scanner.consumed)
        elif scanner.done:
            events.text += scanner.take_tail()  # text after "]" is ordinary output again
        return events

    def _end_section(self) -> str:
        assert self._scanner is not None
        if self._scanner.done:
            self._scanner = None
            return ""
        return self._give_up(self._scanner.consumed)

    def _give_up(self, from_index: int) -> str:
        assert self._scanner is not None
        text = self._scanner.raw[from_index:]
        self.malformed = True
        self._scanner = None  # everything after this is plain text
        return text

    def _to_call(self, obj_text: str) -> ParsedToolCall | None:
        try:
            obj = json.loads(obj_text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return None
        arguments = obj.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        call_id = obj.get("id")
        if not isinstance(call_id, str) or not is_mistral_tool_call_id(call_id):
            call_id = self._new_id()
        return ParsedToolCall(name=obj["name"], arguments=arguments, id=call_id)


def parse_tool_calls(
    tokenizer: ToolTokenizer, token_ids: Iterable[int], new_id: Callable[[], str] = random_tool_call_id
) -> ToolCallParseResult:
    """Parse a whole generation. When malformed: all generated text as content, no calls."""
    token_ids = list(token_ids)
    parser = ToolCallParser(tokenizer, new_id=new_id)
    text = "".join(parser.add(t).text for t in token_ids) + parser.finish().text
    if parser.malformed:
        return ToolCallParseResult(content=tokenizer.decode(token_ids), tool_calls=[], malformed=True)
    return ToolCallParseResult(content=text, tool_calls=parser.calls, malformed=False)


class _ListScanner:
    """Finds where each object of a streamed JSON list starts and closes.

    Tracks only string/escape state and bracket depth, so it runs on a stream character by
    character; json.loads then parses each closed object properly. A model sometimes writes a
    single object without the list brackets; that is accepted too.
    """

    def __init__(self) -> None:
        self.raw = ""
        self.consumed = 0  # end of the last object handed out: raw[consumed:] is unaccounted for
        self.done = False
        self.broken = False
        self._pos = 0
        self._started = False
        self._bare = False
        self._depth = 0
        self._object_start = 0
        self._in_string = False
        self._escaped = False
        self._tail_sent = 0

    def feed(self, text: str) -> list[tuple[int, int]]:
        """Append text; return (start, end) spans of the objects that closed in it."""
        self.raw += text
        closed: list[tuple[int, int]] = []
        while self._pos < len(self.raw) and not (self.done or self.broken):
            i, ch = self._pos, self.raw[self._pos]
            self._pos += 1
            if self._depth > 0:
                self._track(ch, i, closed)
            elif ch.isspace() or (ch == "," and self._started and not self._bare):
                continue
            elif ch == "{":
                self._bare = self._bare or not self._started
                self._started = True
                self._depth, self._object_start = 1, i
            elif ch == "[" and not self._started:
                self._started = True
            elif ch == "]" and self._started and not self._bare:
                self.done, self.consumed, self._tail_sent = True, self._pos, self._pos
            else:
                self.broken = True
        return closed

    def take_tail(self) -> str:
        """Text after the closing bracket not yet handed out."""
        tail = self.raw[self._tail_sent :]
        self._tail_sent = len(self.raw)
        return tail

    def _track(self, ch: str, index: int, closed: list[tuple[int, int]]) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            if self._depth == 0:
                closed.append((self._object_start, index + 1))
                self.consumed = index + 1
                if self._bare:
                    self.done, self._tail_sent = True, index + 1
