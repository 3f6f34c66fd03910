"""The small endpoints: models, health, version, metrics (the tokenizer ones are in tokenizer_routes.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mistral_nemo import __version__
from mistral_nemo.entrypoints.server.errors import APIError, error_response
from mistral_nemo.entrypoints.server.metrics import CONTENT_TYPE
from mistral_nemo.entrypoints.server.state import ServerState, get_state, is_tekken

router = APIRouter()


def _model_card(state: ServerState, name: str) -> dict[str, Any]:
    """OpenAI's model object plus the fields of La Plateforme's card (the mistralai SDK requires
    `type` and `capabilities`); vLLM's `root` / `parent` / `max_model_len` too. A LoRA adapter is a
    model of its own, as in vLLM: `root` is its path and `parent` the base model's name."""
    tekken = is_tekken(state.tokenizer)
    lora = state.lora_request(name)
    base = state.model_names[0]
    return {
        "id": name,
        "object": "model",
        "created": state.created,
        "owned_by": "mistral-nemo",
        "type": "base",
        "name": name,
        "description": f"{base} served by mistral-nemo {__version__}"
        + (f" with the LoRA adapter {lora.path}" if lora else ""),
        "capabilities": {
            "completion_chat": True,
            "function_calling": tekken,  # tool calls are parsed for the Mistral chat format
            "completion_fim": False,
            "fine_tuning": lora is not None,
            "vision": False,
            "classification": False,
        },
        "max_context_length": state.max_model_len,
        "aliases": [] if lora else [other for other in state.base_names if other != name],
        "deprecation": None,
        "root": lora.path if lora else base,
        "parent": base if lora else None,
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
