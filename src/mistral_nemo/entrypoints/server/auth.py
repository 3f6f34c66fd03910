"""Bearer API-key check, as ASGI middleware: constant-time comparison, public paths exempt."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from mistral_nemo.entrypoints.server.config import ServerConfig
from mistral_nemo.entrypoints.server.errors import APIError, error_response


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key from `Authorization: Bearer KEY` (what the openai and mistralai SDKs send) or `x-api-key`."""
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            return value.strip()
        return None
    return headers.get(b"x-api-key")


def key_matches(expected: str, presented: bytes | None) -> bool:
    # compare_digest on bytes of any length: the time does not depend on where they differ.
    return hmac.compare_digest(expected.encode("utf-8"), presented or b"")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.config.api_key
        if key is None or scope["type"] != "http" or self.config.is_public(scope.get("path", "")):
            return await self.app(scope, receive, send)
        if scope.get("method") == "OPTIONS":  # CORS pre-flight carries no credentials
            return await self.app(scope, receive, send)
        raw_headers = list(scope.get("headers") or [])
        names = [name.lower() for name, _ in raw_headers]
        duplicated = next((n for n in (b"authorization", b"x-api-key") if names.count(n) > 1), None)
        if duplicated is not None:  # which one would count is ambiguous: refuse rather than guess
            count = names.count(duplicated)
            message = f"send one {duplicated.decode()} header, not {count}"
            error = APIError(400, message, code="invalid_api_key")
            return await error_response(error)(scope, receive, send)
        presented = presented_key(dict(raw_headers))
        if key_matches(key, presented):
            return await self.app(scope, receive, send)
        message = (
            "missing API key: send it as 'Authorization: Bearer KEY'"
            if presented is None
            else "incorrect API key provided"
        )
        error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error_response(error)(scope, receive, send)
