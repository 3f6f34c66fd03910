"""The two Ray Serve deployments of `serve --replicas N`: N engine replicas and one HTTP ingress.

EngineReplica is one whole `mistral-nemo serve` (its FastAPI app and engine) inside a Serve
replica. The Ingress takes every HTTP request, forwards it to a replica over a DeploymentHandle
and streams the replica's response back unchanged. Routing is Ray Serve's consistent-hash
request router keyed by the conversation (affinity.py): a conversation returns to the replica
whose prefix cache holds it; when that replica is gone the ring gives the next live one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import ray.exceptions
from ray import serve
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.types import Message, Receive, Scope, Send

from mistral_nemo.entrypoints.replicas.affinity import conversation_key
from mistral_nemo.entrypoints.replicas.asgi_bridge import ForwardedRequest, run_asgi
from mistral_nemo.entrypoints.replicas.metrics_merge import merge_metrics
from mistral_nemo.entrypoints.server.errors import APIError, BodyLimitMiddleware, error_response
from mistral_nemo.entrypoints.server.metrics import CONTENT_TYPE

logger = logging.getLogger("mistral_nemo.server")

METRICS_TIMEOUT_S = 10.0
# A replica that dies before answering: the request is sent again, after a pause in which Serve
# learns of the death, and the router then picks a live replica.
ATTEMPTS = 4
RETRY_PAUSE_S = 0.5


@serve.deployment
class EngineReplica:
    async def __init__(self, args: argparse.Namespace) -> None:
        from mistral_nemo.entrypoints.serve_cmd import server_app
        from mistral_nemo.entrypoints.tensor_parallel_options import TensorParallelLaunch
        from mistral_nemo.model.tensor_parallel import TensorParallelError

        self.replica = serve.get_replica_context().replica_id.unique_id
        # --tensor-parallel-size N: this replica spawns its own N - 1 ranks (its own gloo / NCCL group,
        # on the GPUs Ray gave it); a lost rank marks the engine dead and check_health has Serve replace it.
        self.parallel = TensorParallelLaunch.from_args(args)
        engines: list[Any] = []

        def rank_lost(reason: str) -> None:
            logger.error("replica %s: %s", self.replica, reason)
            if engines:
                engines[0].dead = TensorParallelError(reason)

        self.app = server_app(args, None, self.parallel, rank_lost, engines.append)
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()  # starts loading the model, as the server's start-up does
        state = self.app.state.server
        while state.engine is None and state.load_error is None:  # ready when Serve says it is
            await asyncio.sleep(0.1)
        if state.load_error is not None:
            raise RuntimeError(f"the model failed to load: {state.load_error}")

    async def handle_http(self, request: ForwardedRequest) -> Any:
        async for message in run_asgi(self.app, request):
            yield message

    async def metrics_text(self) -> tuple[str, str]:
        """(this replica's id, its /metrics text), read through its own app."""
        chunks = [
            m.get("body", b"")
            async for m in run_asgi(self.app, ForwardedRequest("GET", "/metrics"))
            if m["type"] == "http.response.body"
        ]
        return self.replica, b"".join(chunks).decode()

    def check_health(self) -> None:
        """Serve replaces a replica whose engine has died."""
        engine = self.app.state.server.engine
        if engine is not None and engine.dead is not None:
            raise RuntimeError(f"the engine of replica {self.replica} has stopped: {engine.dead}")

    async def __del__(self) -> None:
        try:
            await self.lifespan.__aexit__(None, None, None)  # shuts the engine down
        finally:
            if self.parallel is not None:
                self.parallel.close()  # stops this replica's other ranks


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, engines: DeploymentHandle, max_body_bytes: int) -> None:
        self.engines = engines
        self.max_body_bytes = max_body_bytes

    def __serve_build_asgi_app__(self) -> Any:
        return BodyLimitMiddleware(self.forward, max_bytes=self.max_body_bytes)

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return  # no websockets on this server
        message = await receive()  # BodyLimitMiddleware hands the whole body in one message
        request = ForwardedRequest.from_scope(scope, message.get("body", b""))
        if request.method == "GET" and request.path == "/metrics":
            return await self.metrics(scope, receive, send)
        key = conversation_key(request.body) if request.method == "POST" else None
        await self.relay(request, key, scope, receive, send)

    async def relay(
        self, request: ForwardedRequest, key: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        handle = self.engines.options(stream=True, **({"session_id": key} if key else {}))
        failure: BaseException | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(RETRY_PAUSE_S * attempt)
            started = False
            try:
                async for message in handle.handle_http.remote(request):
                    started = True
                    await send(message)
                return
            except (ray.exceptions.RayActorError, ReplicaUnavailableError) as exc:
                if started:  # mid-response: the client sees the connection end, as with a dead server
                    raise
                logger.warning("replica unavailable for %s %s, trying another: %s", *scope_line(scope), exc)
                failure = exc
        error = APIError(
            503,
            f"no engine replica could take the request ({type(failure).__name__}); retry shortly",
            code="replica_unavailable",
            headers={"Retry-After": "1"},
        )
        await error_response(error)(scope, receive, send)

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        answers = await self.engines.broadcast("metrics_text").results_async(
            timeout_s=METRICS_TIMEOUT_S, return_exceptions=True
        )
        texts = dict(a for a in answers if isinstance(a, tuple))
        if not texts:
            error = APIError(503, "no engine replica is running", code="replica_unavailable")
            return await error_response(error)(scope, receive, send)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE.encode())],
            }
        )
        await send({"type": "http.response.body", "body": merge_metrics(texts)})


def scope_line(scope: Scope) -> tuple[str, str]:
    return scope.get("method", "-"), scope.get("path", "-")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
