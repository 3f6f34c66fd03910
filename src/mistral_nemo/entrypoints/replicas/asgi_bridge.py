"""One HTTP request carried from the ingress to a replica, and run there through the replica's own app.

The ingress sends a ForwardedRequest (method, path, headers, the whole body) over a Ray Serve
handle; the replica runs it through the unchanged FastAPI app of `mistral-nemo serve` and streams
back the app's ASGI messages (`http.response.start`, then `http.response.body` chunks), which the
ingress replays to its client. So every endpoint, error, header and SSE stream is the single server's.
If the caller stops listening (client gone, request cancelled), the app hears `http.disconnect`
and aborts the request in its engine, as it does under uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message

logger = logging.getLogger("mistral_nemo.server")
_DONE = object()


@dataclass
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None
    scheme: str = "http"
    http_version: str = "1.1"

    @classmethod
    def from_scope(cls, scope: dict[str, Any], body: bytes) -> ForwardedRequest:
        client = scope.get("client")
        return cls(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=[(bytes(k), bytes(v)) for k, v in scope.get("headers", [])],
            body=body,
            client=tuple(client) if client else None,
            scheme=scope.get("scheme", "http"),
            http_version=scope.get("http_version", "1.1"),
        )

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.http_version,
            "method": self.method,
            "scheme": self.scheme,
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": self.query_string,
            "headers": list(self.headers),
            "client": self.client,
            "server": None,
            "state": {},
        }


async def run_asgi(app: ASGIApp, request: ForwardedRequest) -> AsyncIterator[Message]:
    """The app's response messages for `request`, as the app sends them."""
    messages: asyncio.Queue[Any] = asyncio.Queue()
    body_sent = False
    gone = asyncio.Event()

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    async def serve() -> None:
        try:
            await app(request.scope(), receive, send)
        except Exception:  # the app has sent its 500 already; log it as uvicorn would
            logger.exception("the server app failed on %s %s", request.method, request.path)
        finally:
            await messages.put(_DONE)

    task = asyncio.create_task(serve())
    try:
        while (message := await messages.get()) is not _DONE:
            yield message
    finally:
        gone.set()  # the caller stopped listening, or the response is complete
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=5)  # the app aborts on disconnect
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
