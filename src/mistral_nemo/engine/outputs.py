"""What the engine reports per request and step (vLLM's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# (token id, logprob) pairs, best first
TopLogprobs = list[tuple[int, float]]


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: TopLogprobs | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str = ""  # everything generated so far (stop strings removed)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", "context", "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    logprobs: list[TokenLogprob] | None = None
    delta_text: str = ""  # new since the previous step
    delta_token_ids: list[int] = field(default_factory=list)
    tool_calls: list[Any] | None = None  # parsed by LLM.chat / the server

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    prompt: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    num_cached_tokens: int = 0
