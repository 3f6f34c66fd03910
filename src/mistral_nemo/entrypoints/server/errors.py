"""Errors in OpenAI's shape, the exception handlers that produce them, and the body-size guard.

Every error a client can cause is a 4xx `{"error": {"message", "type", "param", "code"}}`;
a 500 means a bug in this server (it is logged with its traceback, the client sees no internals).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mistral_nemo.engine.async_engine import EngineDeadError, EngineShutdownError
from mistral_nemo.engine.errors import QueueFullError, RequestError
from mistral_nemo.engine.sampling_params import SamplingParamsError
from mistral_nemo.tokenizer import ChatFormatError, TokenizerError

logger = logging.getLogger("mistral_nemo.server")

INVALID_REQUEST = "invalid_request_error"
_STATUS_TYPES = {401: INVALID_REQUEST, 404: INVALID_REQUEST, 413: INVALID_REQUEST, 503: "server_error"}


class APIError(Exception):
    """Raised anywhere in a handler to answer with an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _STATUS_TYPES.get(status, INVALID_REQUEST if status < 500 else "server_error")
        self.param = param
        self.code = code
        self.headers = headers


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.message, error.type, error.param, error.code)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def to_api_error(exc: BaseException) -> APIError:
    """Map an exception to the error a client should see (used by handlers and inside SSE streams)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ChatFormatError):
        return APIError(400, str(exc), param=exc.param or "messages")
    if isinstance(exc, (SamplingParamsError, RequestError)):
        return APIError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, TokenizerError):
        return APIError(400, str(exc))
    if isinstance(exc, QueueFullError):
        return APIError(503, str(exc), code=exc.code, headers={"Retry-After": "1"})
    if isinstance(exc, EngineShutdownError):
        return APIError(503, str(exc), code="server_shutdown")
    if isinstance(exc, EngineDeadError):
        return APIError(503, "the engine has stopped; see the server log", code="engine_dead")
    return APIError(500, "internal server error; see the server log", code="internal_error")


def validation_error(exc: RequestValidationError | Any) -> APIError:
    """Pydantic errors as a 400 naming the field, never echoing internals or the input."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return APIError(400, "the request body is invalid")
    first = errors[0]
    param = _path([part for part in first.get("loc", ()) if part != "body"]) or None
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON")
    message = str(first.get("msg", "invalid value"))
    return APIError(400, f"{param}: {message}" if param else message, param=param)


# The member of a union that pydantic names in an error's location ("str", "list[int]"...): not a field.
_UNION_MEMBER = re.compile(
    r"^(str|int|float|bool|none|list|dict|tuple|literal|typed-dict|function-\w+|json-or-python|nullable)(\[.*\])?$"
)


def _path(loc: list[Any]) -> str:
    """("tools", 0, "function", "name") -> "tools[0].function.name" (union members left out)."""
    path = ""
    for part in loc:
        if isinstance(part, str) and _UNION_MEMBER.match(part):
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = {404: f"no such endpoint: {request.method} {request.url.path}"}.get(exc.status_code)
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        code = "not_found" if exc.status_code == 404 else None
        return error_response(APIError(exc.status_code, message or str(exc.detail), code=code))

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(to_api_error(exc))

    for kind in (
        APIError,
        RequestError,
        TokenizerError,
        SamplingParamsError,
        QueueFullError,
        EngineDeadError,
        EngineShutdownError,
    ):
        app.add_exception_handler(kind, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_bug)


class BodyLimitMiddleware:
    """413 for a body over the limit, by Content-Length or by counting a chunked body.

    The body is read here (at most limit bytes) and replayed to the app; later receive() calls
    go to the server, so the app still hears about a client that disconnects.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # disconnected before the body was complete: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"the request body is larger than this server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )
        await error_response(error)(scope, receive, send)
