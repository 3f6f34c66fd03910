"""build_app(engine, config): the FastAPI app of `mistral-nemo serve`.

`engine` is a running-ready AsyncLLMEngine, or a function that builds one (it then runs in a
thread after start-up, and /health answers 503 until it is done). The app owns the engine:
it starts it on start-up and shuts it down with the server.

Middleware, outermost first: one log line per request -> CORS -> API key -> body-size limit -> routes.
/openapi.json and /docs describe the real request bodies (openapi.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mistral_nemo import __version__
from mistral_nemo.engine.async_engine import AsyncLLMEngine
from mistral_nemo.entrypoints.server import chat, completions, routes, tokenizer_routes
from mistral_nemo.entrypoints.server.auth import ApiKeyMiddleware
from mistral_nemo.entrypoints.server.config import ServerConfig
from mistral_nemo.entrypoints.server.errors import BodyLimitMiddleware, install_error_handlers
from mistral_nemo.entrypoints.server.openapi import install_openapi
from mistral_nemo.entrypoints.server.state import ServerState
from mistral_nemo.entrypoints.server.web import mount_web

logger = logging.getLogger("mistral_nemo.server")

EngineSource = AsyncLLMEngine | Callable[[], AsyncLLMEngine]


def build_app(
    engine: EngineSource,
    config: ServerConfig | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    config = config or ServerConfig()
    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading: asyncio.Task[None] | None = None
        if isinstance(engine, AsyncLLMEngine):
            engine.start()
            state.set_engine(engine)
        else:
            loading = asyncio.create_task(_load(state, engine, on_load_error))
        try:
            yield
        finally:
            if loading is not None and not loading.done():
                loading.cancel()
            if state.engine is not None:
                await asyncio.to_thread(state.engine.shutdown, 2.0)  # after a step: well within a second

    app = FastAPI(
        title="mistral-nemo",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install_openapi(app)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(routes.router)
    app.include_router(tokenizer_routes.router)
    if config.web_page:
        mount_web(app)  # the chat page at / (web.py)
    # add_middleware wraps what is there: the last added is the outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, config=config)
    if config.allowed_origins:  # outside the key check: a 401 carries CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.allowed_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=False,
        )
    if config.log_requests:
        app.add_middleware(RequestLogMiddleware)
    return app


async def _load(
    state: ServerState,
    build: Callable[[], AsyncLLMEngine],
    on_error: Callable[[BaseException], None] | None,
) -> None:
    started = time.perf_counter()
    try:
        engine = await asyncio.to_thread(build)
    except Exception as exc:
        state.load_error = str(exc) or type(exc).__name__
        logger.error("the model failed to load: %s", state.load_error)
        if on_error is not None:
            on_error(exc)
        return
    engine.start()
    state.set_engine(engine)
    logger.info(
        "model ready in %.1fs; serving as %s", time.perf_counter() - started, ", ".join(state.model_names)
    )


class RequestLogMiddleware:
    """`client METHOD path status duration [request id, tokens, finish reasons]`, once per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            status = status or 500
            raise
        finally:
            client = scope.get("client") or ("-", 0)
            extra = (scope.get("state") or {}).get("log_extra", "")
            logger.info(
                "%s:%s %s %s %s %.0fms %s",
                client[0],
                client[1],
                scope.get("method"),
                scope.get("path"),
                status or 499,  # no response started: the client went away
                (time.perf_counter() - started) * 1000,
                extra,
            )
