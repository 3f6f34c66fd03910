"""Pieces shared by the chat and text completion endpoints.

Sampling parameters from a request, logprobs in both OpenAI shapes, server-sent events that
abort their request when the response ends early, and waiting for a whole generation while
watching for the client to hang up.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from mistral_nemo.engine.constraints import ConstraintFactory
from mistral_nemo.engine.outputs import RequestOutput, TokenLogprob
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.entrypoints.server.config import ServerConfig
from mistral_nemo.entrypoints.server.errors import APIError
from mistral_nemo.entrypoints.server.protocol import SamplingFields
from mistral_nemo.tokenizer import Tokenizer

# torch.Generator.manual_seed takes [-2**63, 2**64); sequence i of a request uses seed + i.
_SEED_RANGE = 2**63
T = TypeVar("T")
LOGPROB_FLOOR = -9999.0  # what OpenAI reports for a token with probability 0 (JSON has no -inf)


def seed_of(*candidates: int | None) -> int | None:
    """The first seed given, folded into the range torch accepts (any integer is a valid seed)."""
    for seed in candidates:
        if seed is not None:
            return seed % _SEED_RANGE
    return None


def sampling_params(
    body: SamplingFields,
    config: ServerConfig,
    *,
    vocab_size: int,
    max_tokens: int | None,
    seed: int | None,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    prompt_logprobs_from: int = 0,
    extra_logit_bias: dict[int, float] | None = None,
    constraint: ConstraintFactory | None = None,
) -> SamplingParams:
    """SamplingParams from the OpenAI fields; its own checks raise SamplingParamsError (a 400)."""
    logit_bias: dict[Any, float] | None = dict(body.logit_bias) if body.logit_bias else None
    if extra_logit_bias:
        logit_bias = {**(logit_bias or {}), **extra_logit_bias}
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    stop_ids = list(body.stop_token_ids or [])
    if any(not 0 <= t < vocab_size for t in stop_ids):
        raise APIError(400, f"stop_token_ids must be in 0..{vocab_size - 1}", param="stop_token_ids")
    model = config.sampling_defaults  # for the fields the request leaves out
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=model.temperature if body.temperature is None else body.temperature,
        top_p=model.top_p if body.top_p is None else body.top_p,
        top_k=model.top_k if body.top_k is None else body.top_k,
        min_p=model.min_p if body.min_p is None else body.min_p,
        seed=seed,
        stop=stop,
        stop_token_ids=stop_ids,
        ignore_eos=body.ignore_eos,
        n=body.n,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=model.repetition_penalty
        if body.repetition_penalty is None
        else body.repetition_penalty,
        logit_bias=logit_bias,
        min_tokens=body.min_tokens or 0,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        prompt_logprobs_from=prompt_logprobs_from,
        skip_special_tokens=body.skip_special_tokens,
        constraint=constraint,
    )


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return str(tokenizer.id_to_piece(token_id))


def chat_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI chat shape (plus token_id, which Mistral's SDK requires)."""

    def one(token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "token": token_text(tokenizer, token_id),
            "logprob": finite(logprob),
            "bytes": list(tokenizer.id_to_bytes(token_id)),
            "token_id": token_id,
        }

    return [
        {**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top or []]} for e in entries
    ]


def completion_logprobs(
    tokenizer: Tokenizer, entries: list[TokenLogprob | None], token_ids: list[int], offset: int
) -> dict[str, Any]:
    """Legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset.

    `entries[i]` belongs to `token_ids[i]`; None (the first prompt token) gives null logprobs.
    `offset` is where the first token starts in the returned text.
    """
    tokens = [token_text(tokenizer, t) for t in token_ids]
    offsets = []
    for token_id, text in zip(token_ids, tokens, strict=True):
        offsets.append(offset)
        offset += 0 if tokenizer.is_special(token_id) else len(text)  # <s> is not in the text
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    for entry in entries:
        if entry is None:
            token_logprobs.append(None)
            top.append(None)
            continue
        token_logprobs.append(finite(entry.logprob))
        alternatives: dict[str, float] = {}
        for token_id, logprob in entry.top or []:
            alternatives.setdefault(token_text(tokenizer, token_id), finite(logprob))
        top.append(alternatives)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


SSE_DONE = sse("[DONE]")


class SSEResponse(StreamingResponse):
    """text/event-stream whose `on_close` always runs when the response ends, however it ends.

    A client that hangs up cancels the stream (Starlette listens for the disconnect); closing
    the body iterator and calling `on_close` here aborts the request even if the iterator never
    started, so its KV blocks are freed at once.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                aclose = getattr(self._content, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                self._on_close()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def consume(
    stream: AsyncIterator[RequestOutput], on_output: Callable[[RequestOutput], None]
) -> RequestOutput | None:
    """Read a generation to its end, handing each output to `on_output`; return the last one."""
    last = None
    async for output in stream:
        on_output(output)
        last = output
    return last


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, or cancel it when the client hangs up first (then None).

    Cancelling raises inside the engine streams being read, whose `finally` aborts their requests.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    await asyncio.wait({task})  # let the cancellation run through the streams' cleanup
    if not task.cancelled():
        task.exception()  # a cancelled gather() ends with CancelledError set: retrieve it (no log noise)
    return None
