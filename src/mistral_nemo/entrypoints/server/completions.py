"""POST /v1/completions: raw text completion (no chat format), OpenAI's legacy shape.

`prompt` is a text, a list of texts, a list of token ids or a list of such lists; each prompt is
one engine request with `n` choices (choice index = prompt index * n + k). `echo` returns the
prompt before the completion, and with `logprobs` also the prompt tokens' logprobs (the first
token has none). `max_tokens: 0` with echo scores a prompt without generating, which is what
lm-eval's `local-completions` asks for (it also works with max_tokens 1 and slices [ctxlen:-1]).
Prompt logprobs already returned are kept per block (prompt_logprob_memo), so a later echo +
logprobs request sharing a prompt's start asks the engine for the rest only and its context can
come from the prefix cache.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mistral_nemo.engine.async_engine import AsyncLLMEngine
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from mistral_nemo.entrypoints.server.chat import STRUCTURED_OUTPUT_FIELDS
from mistral_nemo.entrypoints.server.chat_output import openai_finish_reason
from mistral_nemo.entrypoints.server.common import (
    SSE_DONE,
    SSEResponse,
    completion_logprobs,
    consume,
    sampling_params,
    seed_of,
    sse,
    until_disconnect,
    usage,
)
from mistral_nemo.entrypoints.server.errors import APIError, logger, to_api_error
from mistral_nemo.entrypoints.server.metrics import RequestTimer
from mistral_nemo.entrypoints.server.prompt_logprob_memo import PromptLogprobMemo
from mistral_nemo.entrypoints.server.protocol import CompletionRequest, parse_body
from mistral_nemo.entrypoints.server.state import ServerState, get_state
from mistral_nemo.tokenizer import Tokenizer

router = APIRouter()


@dataclass
class Prompt:
    ids: list[int]
    text: str  # what echo returns: the text as sent, or the ids decoded


@dataclass
class Job:
    """One prompt's engine request."""

    index: int  # of the prompt in the request
    prompt: Prompt
    request_id: str
    stream: AsyncIterator[RequestOutput]
    timer: RequestTimer
    final: RequestOutput | None = None
    known: list[TokenLogprob | None] = field(default_factory=list)  # prompt entries from the memo


def read_prompts(tokenizer: Tokenizer, raw: Any) -> list[Prompt]:
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(t, int) for t in raw):
        raw = [raw]
    prompts = []
    for item in raw:
        if isinstance(item, str):
            prompts.append(Prompt(tokenizer.encode(item, bos=tokenizer.add_bos), item))
        else:
            if not item:
                raise APIError(400, "a prompt of token ids must not be empty", param="prompt")
            ids = [int(t) for t in item]
            if any(not 0 <= t < tokenizer.vocab_size for t in ids):
                raise APIError(
                    400, f"prompt token ids must be in 0..{tokenizer.vocab_size - 1}", param="prompt"
                )
            prompts.append(Prompt(ids, tokenizer.decode(ids)))
    return prompts


def _prompt_count(raw: Any) -> int:
    if isinstance(raw, str) or not raw or all(isinstance(t, int) for t in raw):
        return 1
    return len(raw)


def _encode(state: ServerState, tokenizer: Tokenizer, raw: Any) -> list[Prompt]:
    texts = [raw] if isinstance(raw, str) else [t for t in raw or [] if isinstance(t, str)]
    for text in texts:
        state.check_text_fits(len(text), "prompt")
    return read_prompts(tokenizer, raw)


@router.post("/v1/completions", response_model=None)
async def create_completion(request: Request) -> Response:
    state = get_state(request)
    body = await parse_body(request, CompletionRequest)
    engine = state.require_engine()
    model = state.resolve_model(body.model)
    if body.suffix:
        raise APIError(400, "suffix (fill-in-the-middle) is not supported by this model", param="suffix")
    extra = body.model_extra or {}
    guided = next((name for name in STRUCTURED_OUTPUT_FIELDS if extra.get(name) is not None), None)
    if guided is not None:  # implemented on chat completions only: never accepted and ignored here
        raise APIError(
            400, f"{guided} is supported on /v1/chat/completions, not on /v1/completions", param=guided
        )
    if body.max_tokens is not None and body.max_tokens < 0:
        raise APIError(400, f"max_tokens must be >= 0, got {body.max_tokens}", param="max_tokens")
    state.check_sequences(_prompt_count(body.prompt) * max(body.n, 1), "prompt")
    prompts = await asyncio.to_thread(_encode, state, engine.tokenizer, body.prompt)  # off the event loop
    score_only = body.max_tokens == 0
    prompt_logprobs = body.logprobs if body.echo else None  # echo + logprobs: the prompt's too
    lora = state.lora_request(model)
    memo = _memo(state, engine) if prompt_logprobs is not None and not body.stream else None
    scope = (lora.lora_name, lora.lora_int_id, str(lora.lora_path)) if lora else None, prompt_logprobs
    known = [memo.lookup(p.ids, scope) if memo is not None else [] for p in prompts]
    params = [
        sampling_params(
            body,
            state.config,
            vocab_size=engine.tokenizer.vocab_size,
            max_tokens=1 if score_only else (body.max_tokens or state.default_max_tokens(len(p.ids))),
            seed=seed_of(body.seed),
            logprobs=body.logprobs,
            prompt_logprobs=prompt_logprobs,
            prompt_logprobs_from=len(k),
        )
        for p, k in zip(prompts, known, strict=True)
    ]
    request_id = f"cmpl-{uuid.uuid4().hex}"
    jobs = await _start(engine, state, prompts, params, request_id, lora)
    for job, entries in zip(jobs, known, strict=True):
        job.known = entries
    head = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model}
    view = _View(engine.tokenizer, body, score_only)

    def abort_all() -> None:
        for job in jobs:
            engine.abort(job.request_id)
            job.timer.abort()

    if body.stream:
        return SSEResponse(_stream(request, head, jobs, view, body), on_close=abort_all)
    try:
        finished = await until_disconnect(request, asyncio.gather(*(_run(job) for job in jobs)))
    finally:
        abort_all()  # no-op for finished requests
    if finished is None:
        return Response(status_code=499)
    choices = [c for job in jobs for c in view.choices(job)]
    if memo is not None:
        for job in jobs:
            memo.store(job.prompt.ids, scope, view.prompt_entries(job))
    request.state.log_extra = _log_extra(request_id, jobs)
    return JSONResponse({**head, "choices": choices, "usage": view.usage(jobs)})


async def _start(
    engine: AsyncLLMEngine,
    state: ServerState,
    prompts: list[Prompt],
    params: list[Any],
    request_id: str,
    lora: LoRARequest | None,
) -> list[Job]:
    jobs: list[Job] = []
    try:
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            rid = f"{request_id}-{i}"
            timer = state.metrics.timer()
            stream = await engine.generate(
                prompt.ids, p, request_id=rid, prompt_text=prompt.text, lora_request=lora
            )
            jobs.append(Job(i, prompt, rid, stream, timer))
    except BaseException:
        for job in jobs:  # one prompt refused: drop the ones already queued
            engine.abort(job.request_id)
        raise
    return jobs


async def _run(job: Job) -> None:
    job.final = await consume(job.stream, job.timer.output)
    if job.final is not None:
        job.timer.finish([openai_finish_reason(o.finish_reason, False) or "stop" for o in job.final.outputs])


class _View:
    """Engine outputs -> completion choices, for whole answers and stream chunks alike."""

    def __init__(self, tokenizer: Tokenizer, body: CompletionRequest, score_only: bool) -> None:
        self.tokenizer = tokenizer
        self.body = body
        self.score_only = score_only

    def index(self, prompt_index: int, output: CompletionOutput) -> int:
        return prompt_index * self.body.n + output.index

    def finish_reason(self, output: CompletionOutput) -> str | None:
        if output.finish_reason is None:
            return None
        return "length" if self.score_only else openai_finish_reason(output.finish_reason, False)

    def choices(self, job: Job) -> list[dict[str, Any]]:
        final = job.final
        assert final is not None
        echo = job.prompt.text if self.body.echo else ""
        result = []
        for output in final.outputs:
            text = "" if self.score_only else output.text
            result.append(
                {
                    "index": self.index(job.index, output),
                    "text": echo + text,
                    "logprobs": self.logprobs(job, final, output),
                    "finish_reason": self.finish_reason(output),
                }
            )
        return result

    def logprobs(self, job: Job, final: RequestOutput, output: CompletionOutput) -> dict[str, Any] | None:
        if self.body.logprobs is None:
            return None
        echo = self.body.echo
        entries: list[Any] = []
        ids: list[int] = []
        if echo:
            entries += self.prompt_entries(job)
            ids += job.prompt.ids
        shown = completion_logprobs(self.tokenizer, entries, ids, 0)
        if not self.score_only and output.logprobs is not None:
            start = len(job.prompt.text) if echo else 0
            new = completion_logprobs(self.tokenizer, list(output.logprobs), output.token_ids, start)
            for key in shown:
                shown[key] += new[key]
        return shown

    def prompt_entries(self, job: Job) -> list[TokenLogprob | None]:
        """Each prompt token's entry: the memo's first, then the engine's (None for the first token)."""
        assert job.final is not None
        entries = list(job.final.prompt_logprobs or [])
        entries += [None] * (len(job.prompt.ids) - len(entries))
        entries[: len(job.known)] = job.known
        return entries[: len(job.prompt.ids)]

    def usage(self, jobs: list[Job]) -> dict[str, Any]:
        prompt = sum(len(job.prompt.ids) for job in jobs)
        completion = 0 if self.score_only else sum(len(o.token_ids) for j in jobs for o in _outputs(j))
        cached = sum(j.final.num_cached_tokens for j in jobs if j.final is not None)
        return usage(prompt, completion, cached)


def _memo(state: ServerState, engine: AsyncLLMEngine) -> PromptLogprobMemo | None:
    """The server's prompt-logprob memo, in blocks of the engine's size (None: no prefix cache)."""
    info = engine.info
    if not info.prefix_caching:
        return None
    memo: PromptLogprobMemo = state.cached("prompt_logprob_memo", lambda: PromptLogprobMemo(info.block_size))
    return memo


def _outputs(job: Job) -> list[CompletionOutput]:
    return job.final.outputs if job.final is not None else []


async def _stream(
    request: Request, head: dict[str, Any], jobs: list[Job], view: _View, body: CompletionRequest
) -> AsyncIterator[str]:
    """Prompts one after the other (all of them generate at once; the engine queues the outputs)."""
    try:
        for job in jobs:
            sent_logprobs = [0] * body.n
            if body.echo:
                for k in range(body.n):
                    echo = {
                        "index": job.index * body.n + k,
                        "text": job.prompt.text,
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    yield sse({**head, "choices": [echo]})
            async for output in job.stream:
                job.timer.output(output)
                job.final = output
                for o in output.outputs:
                    chunk = _chunk(view, job, o, sent_logprobs)
                    if chunk is not None:
                        yield sse({**head, "choices": [chunk]})
            if job.final is not None:
                job.timer.finish(
                    [openai_finish_reason(o.finish_reason, False) or "stop" for o in job.final.outputs]
                )
    except Exception as exc:
        error = to_api_error(exc)
        if error.status >= 500 and error.code != "server_shutdown":  # a shutdown is no failure to trace
            logger.exception("generation failed in %s", head["id"])
        yield sse(
            {"error": {"message": error.message, "type": error.type, "param": None, "code": error.code}}
        )
        yield SSE_DONE
        return
    request.state.log_extra = _log_extra(head["id"], jobs)
    if body.stream_options is not None and body.stream_options.include_usage:
        yield sse({**head, "choices": [], "usage": view.usage(jobs)})
    yield SSE_DONE


def _chunk(
    view: _View, job: Job, output: CompletionOutput, sent_logprobs: list[int]
) -> dict[str, Any] | None:
    text = "" if view.score_only else output.delta_text
    reason = view.finish_reason(output)
    logprobs = None
    if view.body.logprobs is not None and output.logprobs is not None and not view.score_only:
        start = sent_logprobs[output.index]
        fresh = output.logprobs[start:]
        sent_logprobs[output.index] = len(output.logprobs)
        logprobs = completion_logprobs(view.tokenizer, list(fresh), [e.token_id for e in fresh], 0)
    if not text and reason is None and not (logprobs and logprobs["tokens"]):
        return None
    return {
        "index": view.index(job.index, output),
        "text": text,
        "logprobs": logprobs,
        "finish_reason": reason,
    }


def _log_extra(request_id: str, jobs: list[Job]) -> str:
    prompt = sum(len(j.prompt.ids) for j in jobs)
    completion = sum(len(o.token_ids) for j in jobs for o in _outputs(j))
    reasons = ",".join(o.finish_reason or "-" for j in jobs for o in _outputs(j))
    return f"{request_id} prompts={len(jobs)} prompt={prompt} completion={completion} finish={reasons}"
