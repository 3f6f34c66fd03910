"""The small endpoints: models, tokenize / detokenize, tokenizer_info, health, version, metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mistral_nemo import __version__
from mistral_nemo.entrypoints.server.errors import APIError, error_response
from mistral_nemo.entrypoints.server.metrics import CONTENT_TYPE
from mistral_nemo.entrypoints.server.protocol import DetokenizeRequest, TokenizeRequest, parse_body
from mistral_nemo.entrypoints.server.state import ServerState, get_state, is_tekken
from mistral_nemo.tokenizer import MistralChatEncoder, SpecialTokenPolicy

router = APIRouter()


def _model_card(state: ServerState, name: str) -> dict[str, Any]:
    """OpenAI's model object plus the fields of La Plateforme's card (the mistralai SDK requires
    `type` and `capabilities`); vLLM's `root` / `max_model_len` too."""
    tekken = is_tekken(state.tokenizer)
    return {
        "id": name,
        "object": "model",
        "created": state.created,
        "owned_by": "mistral-nemo",
        "type": "base",
        "name": name,
        "description": f"{state.model_names[0]} served by mistral-nemo {__version__}",
        "capabilities": {
            "completion_chat": True,
            "function_calling": tekken,  # tool calls are parsed for the Mistral chat format
            "completion_fim": False,
            "fine_tuning": False,
            "vision": False,
            "classification": False,
        },
        "max_context_length": state.max_model_len,
        "aliases": [other for other in state.model_names if other != name],
        "deprecation": None,
        "root": state.model_names[0],
        "max_model_len": state.max_model_len,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = get_state(request)
    state.require_engine()
    return {"object": "list", "data": [_model_card(state, name) for name in state.model_names]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    return _model_card(state, state.resolve_model(model))


@router.post("/tokenize")
async def tokenize(request: Request) -> dict[str, Any]:
    """{"prompt": text} (add_special_tokens adds <s> where the model wants it) or {"messages": [...]}."""
    state = get_state(request)
    body = await parse_body(request, TokenizeRequest)
    state.resolve_model(body.model)
    tokenizer = state.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send exactly one of prompt or messages", param="prompt")
    if body.prompt is not None:
        ids = tokenizer.encode(body.prompt, bos=body.add_special_tokens and tokenizer.add_bos)
    elif is_tekken(tokenizer):
        ids = MistralChatEncoder(tokenizer).encode(body.messages or [], body.tools or None).ids
    else:
        ids = tokenizer.encode_chat(body.messages or [], body.tools or None)
    result: dict[str, Any] = {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids}
    if body.return_token_strs:
        result["token_strs"] = [tokenizer.id_to_piece(t) for t in ids]
    return result


@router.post("/detokenize")
async def detokenize(request: Request) -> dict[str, Any]:
    state = get_state(request)
    body = await parse_body(request, DetokenizeRequest)
    state.resolve_model(body.model)
    tokenizer = state.tokenizer
    bad = next((t for t in body.tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise APIError(
            400, f"token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1})", param="tokens"
        )
    return {"prompt": tokenizer.decode(body.tokens, SpecialTokenPolicy.SKIP)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict[str, Any]:
    state = get_state(request)
    tokenizer = state.tokenizer

    def piece(token_id: int | None) -> str | None:
        return tokenizer.id_to_piece(token_id) if token_id is not None else None

    def optional_id(name: str) -> int | None:
        try:
            return int(getattr(tokenizer, name))
        except (ValueError, AttributeError):
            return None

    bos, eos = optional_id("bos_id"), optional_id("eos_id")
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "chat_format": "mistral-v3-tekken" if is_tekken(tokenizer) else "jinja-chat-template",
        "vocab_size": tokenizer.vocab_size,
        "bos_token": piece(bos),
        "bos_token_id": bos,
        "eos_token": piece(eos),
        "eos_token_id": eos,
        "eog_token_ids": sorted(tokenizer.eog_ids),
        "add_bos_token": bool(tokenizer.add_bos),
        "max_model_len": state.max_model_len,
    }


@router.get("/health")
async def health(request: Request) -> Response:
    """200 once the model is loaded and the engine runs; 503 while loading or after a failure."""
    state = get_state(request)
    if state.ready:
        return JSONResponse({"status": "ok"})
    if state.engine is not None and state.engine.dead is not None:
        return error_response(APIError(503, "the engine has stopped", code="engine_dead"))
    try:
        state.require_engine()
    except APIError as error:
        return error_response(error)
    return error_response(APIError(503, "not ready"))


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE)
