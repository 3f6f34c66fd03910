"""POST /v1/chat/completions: OpenAI's chat API with Mistral's extras (random_seed, safe_prompt, prefix).

Flow: body -> prompt ids (Mistral v3-Tekken encoder, or the model's chat template) ->
`guidance()` (response_format and tool_choice: the one place for constrained decoding, guided.py) ->
SamplingParams -> engine -> one `ChoiceState` per choice -> JSON or server-sent events.

An assistant message with `prefix: true` at the end is continued; as on Mistral's API, the
returned content starts with that prefix (the first stream delta carries it).

Finish reasons: "stop", "length" (max_tokens reached), "model_length" (the context window ran
out, as in Mistral's API) and "tool_calls".
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

from mistral_nemo.engine.constraints import ConstraintFactory
from mistral_nemo.engine.outputs import RequestOutput
from mistral_nemo.entrypoints.server.chat_output import ChoiceState
from mistral_nemo.entrypoints.server.chat_prompt import ChatPrompt, build_prompt, message_text_length
from mistral_nemo.entrypoints.server.common import (
    SSE_DONE,
    SSEResponse,
    consume,
    sampling_params,
    seed_of,
    sse,
    until_disconnect,
    usage,
)
from mistral_nemo.entrypoints.server.errors import APIError, logger, to_api_error
from mistral_nemo.entrypoints.server.metrics import RequestTimer
from mistral_nemo.entrypoints.server.protocol import ChatCompletionRequest, parse_body
from mistral_nemo.entrypoints.server.state import ServerState, get_state
from mistral_nemo.tokenizer import Tokenizer, TokenizerError

router = APIRouter()


# vLLM's structured-output request fields (outside the OpenAI schema, so read from the extras).
STRUCTURED_OUTPUT_FIELDS = (
    "structured_outputs",
    "guided_json",
    "guided_choice",
    "guided_regex",
    "guided_grammar",
)


@dataclass
class Guidance:
    """What response_format and tool_choice ask of decoding and of the output parsing."""

    constraint: ConstraintFactory | None = None
    parse_tool_calls: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)


# ---- the hook for constrained decoding --------------------------------------------------------


async def guidance(body: ChatCompletionRequest, tokenizer: Tokenizer, state: ServerState) -> Guidance:
    """The one place where response_format and tool_choice are handled.

    tool_choice: "auto" (the default with tools) parses tool calls out of the output; "none"
    forbids the [TOOL_CALLS] token; "any" / "required" / {"type": "function", "function": {"name"}}
    and response_format json_object / json_schema constrain decoding with a grammar, built by
    `guided.build_constraint(body, compiler)` (guided.py; the compiler is built once per model).
    """
    tool_calls_id = _tool_calls_token(tokenizer)
    choice = _tool_choice(body)
    fmt = _response_format_type(body)
    result = Guidance(parse_tool_calls=bool(body.tools) and choice != "none" and tool_calls_id is not None)
    if choice == "none" and body.tools and tool_calls_id is not None:
        result.logit_bias[tool_calls_id] = -100.0
    extra = body.model_extra or {}
    fields = [name for name in STRUCTURED_OUTPUT_FIELDS if extra.get(name) is not None]
    if fmt != "text" or choice not in ("auto", "none") or fields:
        param = "response_format" if not fields else fields[0]
        param = "tool_choice" if choice not in ("auto", "none") else param
        guided = _guided_module()
        if guided is None:
            raise APIError(
                400, f"{param} needs constrained decoding, which this server cannot load", param=param
            )
        compiler = await asyncio.to_thread(
            state.cached, "grammar_compiler", lambda: guided.GrammarCompiler(tokenizer)
        )
        try:
            result.constraint = guided.build_constraint(body, compiler)
        except guided.GuidedDecodingError as exc:
            raise APIError(400, str(exc), param=param) from None
    return result


def _guided_module() -> Any:
    """guided.py, or None when it (or its grammar library) is not installed."""
    try:
        from mistral_nemo.entrypoints.server import guided
    except ImportError as exc:
        logger.warning("constrained decoding is unavailable: %s", exc)
        return None
    return guided


def _tool_calls_token(tokenizer: Tokenizer) -> int | None:
    try:
        return int(tokenizer.special_id("[TOOL_CALLS]"))
    except (TokenizerError, AttributeError):
        return None


def _tool_choice(body: ChatCompletionRequest) -> str | tuple[str, str]:
    """ "auto", "none", "required" (OpenAI) / "any" (Mistral) -> "required", or ("function", name)."""
    raw = body.tool_choice
    if raw is None:
        return "auto" if body.tools else "none"
    if isinstance(raw, str):
        if raw not in ("auto", "none", "any", "required"):
            raise APIError(
                400,
                f"tool_choice must be auto, none, any, required or a function, not {raw!r}",
                param="tool_choice",
            )
        choice = "required" if raw == "any" else raw
    else:
        function = raw.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise APIError(
                400,
                'tool_choice must name a function: {"type": "function", "function": {"name": ...}}',
                param="tool_choice",
            )
        names = {
            t.get("function", {}).get("name") for t in body.tools or [] if isinstance(t.get("function"), dict)
        }
        if name not in names:
            raise APIError(
                400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
            )
        return ("function", name)
    if choice == "required" and not body.tools:
        raise APIError(400, f"tool_choice {raw!r} needs tools", param="tool_choice")
    return choice


def _response_format_type(body: ChatCompletionRequest) -> str:
    if body.response_format is None:
        return "text"
    kind = body.response_format.get("type", "text")
    if kind not in ("text", "json_object", "json_schema"):
        raise APIError(
            400,
            f"response_format.type must be text, json_object or json_schema, not {kind!r}",
            param="response_format",
        )
    return str(kind)


# ---- the endpoint -----------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(request: Request) -> Response:
    state = get_state(request)
    body = await parse_body(request, ChatCompletionRequest)
    engine = state.require_engine()
    model = state.resolve_model(body.model)
    tokenizer = engine.tokenizer
    state.check_sequences(body.n, "n")
    prompt = await asyncio.to_thread(_encode, state, tokenizer, body)  # CPU work: off the event loop
    guide = await guidance(body, tokenizer, state)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = body.top_logprobs or 0
    params = sampling_params(
        body,
        state.config,
        vocab_size=tokenizer.vocab_size,
        max_tokens=max_tokens if max_tokens is not None else state.default_max_tokens(len(prompt.ids)),
        seed=seed_of(body.seed, body.random_seed),
        logprobs=top if body.logprobs else None,
        extra_logit_bias=guide.logit_bias,
        constraint=guide.constraint,
    )
    choices = [
        ChoiceState(
            i,
            tokenizer,
            parse_tool_calls=guide.parse_tool_calls,
            stop=params.stop,
            tool_call_ids=prompt.tool_call_ids,
            logprobs=body.logprobs,
        )
        for i in range(params.n)
    ]
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    timer = state.metrics.timer()
    stream = await engine.generate(prompt.ids, params, request_id=request_id)
    head = {"id": request_id, "created": int(time.time()), "model": model}
    if body.stream:

        def on_close() -> None:
            engine.abort(request_id)
            timer.abort()

        events = _stream(request, body, head, prompt, choices, stream, timer)
        return SSEResponse(events, on_close=on_close)
    try:
        final = await until_disconnect(request, consume(stream, lambda out: _feed(out, choices, timer)))
    finally:
        engine.abort(request_id)  # a no-op once finished; frees everything if anything went wrong
    if final is None:  # the client went away
        timer.abort()
        return Response(status_code=499)
    timer.finish([c.finish_reason or "stop" for c in choices])
    request.state.log_extra = _log_extra(request_id, final, choices)
    return JSONResponse(
        {
            **head,
            "object": "chat.completion",
            "choices": [c.message(prompt.prefix) for c in choices],
            "usage": _usage(final),
        }
    )


def _encode(state: ServerState, tokenizer: Tokenizer, body: ChatCompletionRequest) -> ChatPrompt:
    state.check_text_fits(message_text_length(list(body.messages)), "messages")
    return build_prompt(tokenizer, body)


def _feed(output: RequestOutput, choices: list[ChoiceState], timer: RequestTimer) -> list[dict[str, Any]]:
    timer.output(output)
    entries = [choices[o.index].feed(o) for o in output.outputs]
    return [e for e in entries if e is not None]


async def _stream(
    request: Request,
    body: ChatCompletionRequest,
    head: dict[str, Any],
    prompt: ChatPrompt,
    choices: list[ChoiceState],
    stream: AsyncIterator[RequestOutput],
    timer: RequestTimer,
) -> AsyncIterator[str]:
    head = {**head, "object": "chat.completion.chunk"}
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    for choice in choices:
        delta = {"role": "assistant", "content": prompt.prefix}
        yield sse(
            {
                **head,
                "choices": [{"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None}],
            }
        )
    final: RequestOutput | None = None
    try:
        async for output in stream:
            final = output
            entries = _feed(output, choices, timer)
            for k, entry in enumerate(entries):
                chunk: dict[str, Any] = {**head, "choices": [entry]}
                if output.finished and k == len(entries) - 1 and not include_usage:
                    chunk["usage"] = _usage(output)  # as Mistral's API: usage on the last chunk
                yield sse(chunk)
    except Exception as exc:  # after the headers: the error goes into the stream
        error = to_api_error(exc)
        if error.status >= 500 and error.code != "server_shutdown":  # a shutdown is no failure to trace
            logger.exception("generation failed in %s", head["id"])
        yield sse(
            {
                "error": {
                    "message": error.message,
                    "type": error.type,
                    "param": error.param,
                    "code": error.code,
                }
            }
        )
        yield SSE_DONE
        return
    if final is not None:
        timer.finish([c.finish_reason or "stop" for c in choices])
        request.state.log_extra = _log_extra(head["id"], final, choices)
        if include_usage:
            yield sse({**head, "choices": [], "usage": _usage(final)})
    yield SSE_DONE


def _usage(output: RequestOutput) -> dict[str, Any]:
    completion = sum(len(o.token_ids) for o in output.outputs)
    return usage(len(output.prompt_token_ids), completion, output.num_cached_tokens)


def _log_extra(request_id: str, output: RequestOutput, choices: list[ChoiceState]) -> str:
    reasons = ",".join(c.finish_reason or "-" for c in choices)
    completion = sum(len(o.token_ids) for o in output.outputs)
    return f"{request_id} prompt={len(output.prompt_token_ids)} completion={completion} finish={reasons}"
