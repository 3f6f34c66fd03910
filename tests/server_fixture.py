"""Real servers for the HTTP tests: uvicorn in a background thread on a free loopback port.

Two models: the embedded SmolLM2-135M-Instruct (it really answers questions) and a random
NeMo-shaped model with NeMo's real Tekken tokenizer (Mistral chat format, tool-call tokens,
the open-mistral-nemo aliases). Loaded models are cached for the session; each test module
starts its own servers (module-scoped fixtures) and stops them at its end.
"""

from __future__ import annotations

import functools
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from mistral_nemo.engine.async_engine import AsyncLLMEngine
from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.entrypoints.server import ServerConfig, build_app
from mistral_nemo.model.loading import LoadedModel, load

API_KEY = "test-key-0123"
SMOL_NAME = "smollm2"
NEMO_NAME = "nemo-random"
SMOL_MAX_MODEL_LEN = 2048
BODY_LIMIT = 1 << 20  # 1 MiB, so the 413 test sends little


@dataclass
class RunningServer:
    base_url: str  # http://127.0.0.1:PORT
    api_key: str
    model: str
    engine: AsyncLLMEngine

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def metric(self, name: str) -> float:
        """One sample of /metrics, e.g. metric("mistral_nemo:num_requests_running")."""
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


@functools.cache
def embedded_model() -> LoadedModel:
    return load(None, device="cpu")


@functools.cache
def nemo_model() -> LoadedModel:
    from tests.nemo_checkpoints import random_reference_model, write_mistral_folder

    folder = Path(tempfile.mkdtemp(prefix="mistral-nemo-server-")) / "nemo-random"
    write_mistral_folder(random_reference_model(seed=0), folder)
    return load(folder, device="cpu")


@contextmanager
def run_uvicorn(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port in a thread; yield its base URL once it listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def serve(
    loaded: LoadedModel, engine_config: EngineConfig, config: ServerConfig, loras: Sequence[LoRARequest] = ()
) -> Iterator[RunningServer]:
    """Start a server, wait until /health says ready, yield it, stop it. `loras`: adapters served by
    name, as `serve --lora NAME=PATH` loads them (needs engine_config.enable_lora)."""
    core = LLMEngine(loaded, engine_config)
    for lora in loras:
        core.add_lora(lora)
    engine = AsyncLLMEngine(core)
    with run_uvicorn(build_app(engine, config)) as base_url:
        deadline = time.monotonic() + 60
        while httpx.get(base_url + "/health", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the test server never became healthy")
            time.sleep(0.05)
        model = (config.served_model_names or [loaded.name])[0]
        yield RunningServer(base_url, config.api_key or "", model, engine)


def smol_server_config() -> tuple[EngineConfig, ServerConfig]:
    engine = EngineConfig(kv_cache_memory=160 << 20, max_model_len=SMOL_MAX_MODEL_LEN, max_num_seqs=8)
    server = ServerConfig(api_key=API_KEY, served_model_names=[SMOL_NAME], max_body_bytes=BODY_LIMIT)
    return engine, server


def nemo_server_config() -> tuple[EngineConfig, ServerConfig]:
    # One sequence at a time and a queue of one: the queue-full test fills it with two requests.
    engine = EngineConfig(kv_cache_memory=64 << 20, max_model_len=4096, max_num_seqs=1, max_queue=1)
    server = ServerConfig(api_key=API_KEY, served_model_names=[NEMO_NAME], max_body_bytes=BODY_LIMIT)
    return engine, server


@pytest.fixture(scope="module")
def smol_server() -> Iterator[RunningServer]:
    engine, server = smol_server_config()
    yield from serve(embedded_model(), engine, server)


@pytest.fixture(scope="module")
def nemo_server() -> Iterator[RunningServer]:
    engine, server = nemo_server_config()
    yield from serve(nemo_model(), engine, server)
