"""From engine outputs to chat choices: text, tool calls, logprobs and finish reasons.

One `ChoiceState` per choice turns each step's new tokens into a delta; the non-streaming
answer is the same deltas added up, so a stream always concatenates to the full answer.

Tool calls (Tekken models, when the request has tools): the token ids go through
`ToolCallParser`, which hands back ordinary text and each call as soon as its JSON closes;
stop strings are then applied to that text (the engine's own text would show the call's JSON).
"""

from __future__ import annotations

from typing import Any

from mistral_nemo.engine.outputs import CompletionOutput
from mistral_nemo.engine.stop_strings import StopStringFilter
from mistral_nemo.entrypoints.server.common import chat_logprobs
from mistral_nemo.tokenizer import ParsedToolCall, Tokenizer, ToolCallIdMap, ToolCallParser


def openai_finish_reason(
    engine_reason: str | None, made_tool_calls: bool, context_full: str = "length"
) -> str | None:
    """Engine reasons -> the API's. When the context window ran out (the engine's "context"), chat
    completions say "model_length" as Mistral's API does (OpenAI's SDK accepts any string there);
    legacy completions keep "length"."""
    if engine_reason is None:
        return None
    if engine_reason == "context":
        return context_full
    if engine_reason == "length":
        return "length"
    if made_tool_calls:
        return "tool_calls"
    return "stop"


class ChoiceState:
    def __init__(
        self,
        index: int,
        tokenizer: Tokenizer,
        *,
        parse_tool_calls: bool,
        stop: list[str],
        tool_call_ids: ToolCallIdMap | None,
        logprobs: bool,
    ) -> None:
        self.index = index
        self.tokenizer = tokenizer
        self.parser = ToolCallParser(tokenizer) if parse_tool_calls else None
        self.stops = StopStringFilter(stop) if parse_tool_calls else None
        self.tool_call_ids = tool_call_ids
        self.want_logprobs = logprobs
        self.text = ""
        self.calls: list[ParsedToolCall] = []
        self.logprobs: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self._logprobs_sent = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self, output: CompletionOutput) -> dict[str, Any] | None:
        """Take one step's output; return this choice's stream chunk entry, or None if nothing new."""
        if self.finished:
            return None
        text, calls = self._new_text_and_calls(output)
        first_call = len(self.calls)
        self.text += text
        self.calls += calls
        delta: dict[str, Any] = {}
        if text:
            delta["content"] = text
        if calls:
            delta["tool_calls"] = [
                self.tool_call_json(call, first_call + k, streaming=True) for k, call in enumerate(calls)
            ]
        new_logprobs = self._new_logprobs(output)
        if output.finish_reason is not None:
            self.finish_reason = openai_finish_reason(output.finish_reason, bool(self.calls), "model_length")
        if not delta and not new_logprobs and not self.finished:
            return None
        return {
            "index": self.index,
            "delta": delta,
            "logprobs": {"content": new_logprobs} if self.want_logprobs else None,
            "finish_reason": self.finish_reason,
        }

    def message(self, prefix: str = "") -> dict[str, Any]:
        """The whole answer as a non-streaming choice."""
        content: str | None = prefix + self.text
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.calls:
            message["tool_calls"] = [
                self.tool_call_json(call, k, streaming=False) for k, call in enumerate(self.calls)
            ]
            if not content:
                message["content"] = None  # OpenAI: null content beside tool calls
        return {
            "index": self.index,
            "message": message,
            "logprobs": {"content": self.logprobs} if self.want_logprobs else None,
            "finish_reason": self.finish_reason or "stop",
        }

    def tool_call_json(self, call: ParsedToolCall, index: int, streaming: bool) -> dict[str, Any]:
        call_id = self.tool_call_ids.to_client(call.id) if self.tool_call_ids is not None else call.id
        entry: dict[str, Any] = {
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        if streaming:
            entry = {"index": index, **entry}
        return entry

    def _new_text_and_calls(self, output: CompletionOutput) -> tuple[str, list[ParsedToolCall]]:
        if self.parser is None or self.stops is None:
            return output.delta_text, []
        text = ""
        calls: list[ParsedToolCall] = []
        for token_id in output.delta_token_ids:
            events = self.parser.add(token_id)
            text += events.text
            calls += events.calls
        if output.finish_reason is not None:
            events = self.parser.finish()
            text += events.text
            calls += events.calls
        text = self.stops.add(text)
        if output.finish_reason is not None:
            text += self.stops.flush()
        return text, calls

    def _new_logprobs(self, output: CompletionOutput) -> list[dict[str, Any]]:
        if not self.want_logprobs or output.logprobs is None:
            return []
        fresh = output.logprobs[self._logprobs_sent :]
        self._logprobs_sent = len(output.logprobs)
        entries = chat_logprobs(self.tokenizer, fresh)
        self.logprobs += entries
        return entries
