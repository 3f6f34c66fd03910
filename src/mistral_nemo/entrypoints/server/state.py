"""ServerState: the engine (once loaded), the names it answers to and the metrics of one app."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request

from mistral_nemo.engine.async_engine import AsyncLLMEngine
from mistral_nemo.engine.llm_engine import EngineStats
from mistral_nemo.entrypoints.server.config import NEMO_ALIASES, ServerConfig
from mistral_nemo.entrypoints.server.errors import APIError
from mistral_nemo.entrypoints.server.metrics import ServerMetrics
from mistral_nemo.tokenizer import TekkenTokenizer


class ServerState:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine: AsyncLLMEngine | None = None
        self.load_error: str | None = None
        self.model_names: list[str] = []
        self.created = int(time.time())
        self.metrics = ServerMetrics(self._stats)
        self._cache: dict[str, Any] = {}  # per-model helpers built on first use (grammar compiler)
        self._cache_lock = threading.Lock()

    def _stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine is not None else None

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """A per-model object built once, on first use (thread-safe; may be called off the event loop)."""
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def set_engine(self, engine: AsyncLLMEngine) -> None:
        names = list(self.config.served_model_names) or [engine.engine.loaded.name]
        if self.config.add_nemo_aliases and is_tekken(engine.tokenizer):
            names += NEMO_ALIASES
        self.model_names = list(dict.fromkeys(names))  # unique, in order
        self.engine = engine

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.dead is None

    def require_engine(self) -> AsyncLLMEngine:
        if self.engine is None:
            if self.load_error is not None:
                raise APIError(503, f"the model failed to load: {self.load_error}", code="model_load_failed")
            raise APIError(503, "the model is still loading; retry shortly", code="model_loading")
        return self.engine

    def resolve_model(self, requested: str | None) -> str:
        """The model name to report; 404 for a name this server does not serve."""
        self.require_engine()
        if requested is None or requested == "":
            return self.model_names[0]
        if requested not in self.model_names:
            raise APIError(
                404,
                f"the model {requested!r} does not exist on this server; it serves: "
                + ", ".join(self.model_names),
                param="model",
                code="model_not_found",
            )
        return requested

    @property
    def tokenizer(self) -> Any:
        return self.require_engine().tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.require_engine().engine.max_model_len)

    @property
    def capacity(self) -> int:
        """Tokens one sequence can ever hold: the context, or the whole KV pool if that is smaller."""
        engine = self.require_engine().engine
        return min(engine.max_model_len, engine.blocks.num_blocks * engine.blocks.block_size)

    def default_max_tokens(self, prompt_len: int) -> int | None:
        """No max_tokens given: the rest of what the sequence can hold (None lets the engine say why not)."""
        room = self.capacity - prompt_len
        return room if room >= 1 else None


def is_tekken(tokenizer: Any) -> bool:
    return isinstance(tokenizer, TekkenTokenizer)


def get_state(request: Request) -> ServerState:
    return request.app.state.server  # type: ignore[no-any-return]
