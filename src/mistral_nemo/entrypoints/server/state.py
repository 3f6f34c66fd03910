"""ServerState: the engine (once loaded), the names it answers to and the metrics of one app."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request

from mistral_nemo.engine.async_engine import AsyncLLMEngine
from mistral_nemo.engine.info import EngineInfo
from mistral_nemo.engine.llm_engine import EngineStats
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.entrypoints.server.config import NEMO_ALIASES, ServerConfig
from mistral_nemo.entrypoints.server.errors import APIError
from mistral_nemo.entrypoints.server.metrics import ServerMetrics
from mistral_nemo.tokenizer import TekkenTokenizer, Tokenizer

SHUTDOWN_MESSAGE = "the server is shutting down"


class ServerState:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine: AsyncLLMEngine | None = None
        self.load_error: str | None = None
        self.model_names: list[str] = []  # the base model's names, then each adapter's
        self.adapters: dict[str, LoRARequest] = {}  # served adapter name -> its LoRARequest
        self.created = int(time.time())
        self.metrics = ServerMetrics(self._stats)
        self._cache: dict[str, Any] = {}  # per-model helpers built on first use (grammar compiler)
        self._cache_lock = threading.Lock()
        self.shutting_down = False

    def _stats(self) -> EngineStats | None:
        return self.engine.stats() if self.engine is not None else None

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """A per-model object built once, on first use (thread-safe; may be called off the event loop)."""
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def set_engine(self, engine: AsyncLLMEngine) -> None:
        names = list(self.config.served_model_names) or [engine.info.model_name]
        if self.config.add_nemo_aliases and is_tekken(engine.tokenizer):
            names += NEMO_ALIASES
        # Adapters loaded into the engine before serving (`serve --lora NAME=PATH`), each its own model.
        self.adapters = {lora.lora_name: lora for lora in engine.lora_requests()}
        self.model_names = list(dict.fromkeys(names + list(self.adapters)))  # unique, in order
        self.engine = engine

    async def drain(self, grace: float) -> None:
        """Refuse new requests now; end those still running after `grace` seconds (shutdown.py)."""
        self.shutting_down = True
        await asyncio.sleep(grace)
        if self.engine is not None:
            self.engine.stop_requests(f"{SHUTDOWN_MESSAGE}; the request was stopped")

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.dead is None and not self.shutting_down

    def require_engine(self) -> AsyncLLMEngine:
        if self.shutting_down:
            raise APIError(503, SHUTDOWN_MESSAGE, code="server_shutdown")
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

    def lora_request(self, model: str) -> LoRARequest | None:
        """The adapter a resolved model name runs with (None: the base model)."""
        return self.adapters.get(model)

    @property
    def base_names(self) -> list[str]:
        return [name for name in self.model_names if name not in self.adapters]

    @property
    def tokenizer(self) -> Any:
        return self.require_engine().tokenizer

    @property
    def info(self) -> EngineInfo:
        """The engine's public facts: served model, context, KV capacity, limits."""
        return self.require_engine().info

    @property
    def max_model_len(self) -> int:
        return self.info.max_model_len

    @property
    def capacity(self) -> int:
        """Tokens one sequence can ever hold: the context, or the whole KV pool if that is smaller."""
        return self.info.capacity_tokens

    @property
    def max_sequences(self) -> int:
        """Sequences the engine ever holds at once: running slots plus the waiting queue."""
        return self.info.max_sequences

    def check_sequences(self, count: int, param: str) -> None:
        """400 for a request of more sequences than the server can ever hold (a 503 would be retried)."""
        if count > self.max_sequences:
            raise APIError(
                400,
                f"the request asks for {count} sequences; this server holds at most {self.max_sequences} "
                "at once (max_num_seqs + max_queue)",
                param=param,
            )

    def check_text_fits(self, characters: int, param: str) -> None:
        """400 before tokenizing a text that cannot fit the context whatever its tokens.

        A token covers at most `max_token_bytes` bytes (so characters): a longer text has more
        tokens than the context holds. This refuses a 10 MB prompt without spending seconds on it.
        """
        longest = self.cached("max_token_bytes", lambda: max_token_bytes(self.tokenizer))
        limit = self.max_model_len * longest
        if characters > limit:
            raise APIError(
                400,
                f"this model's maximum context length is {self.max_model_len} tokens; the prompt has "
                f"{characters} characters, more than {self.max_model_len} tokens can hold (at most "
                f"{longest} characters each)",
                param=param,
                code="context_length_exceeded",
            )

    def default_max_tokens(self, prompt_len: int) -> int | None:
        """No max_tokens given: the rest of what the sequence can hold (None lets the engine say why not)."""
        room = self.capacity - prompt_len
        return room if room >= 1 else None


def max_token_bytes(tokenizer: Tokenizer) -> int:
    """The longest token of the vocabulary, in bytes."""
    return max(len(tokenizer.id_to_bytes(i)) for i in range(tokenizer.vocab_size))


def is_tekken(tokenizer: Tokenizer) -> bool:
    return isinstance(tokenizer, TekkenTokenizer)


def get_state(request: Request) -> ServerState:
    return request.app.state.server  # type: ignore[no-any-return]
