"""AsyncLLMEngine: the engine stepping in its own thread, each request an async stream (for the server).

All engine calls happen on the engine thread: new requests and aborts are posted to it and
applied between steps, so a step never races with them and the event loop never waits for a
step. A stream whose consumer stops early (client disconnect, cancellation) aborts its
request, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mistral_nemo.engine.info import EngineInfo
from mistral_nemo.engine.llm_engine import EngineStats, LLMEngine
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.engine.outputs import RequestOutput
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.tokenizer import Tokenizer


class EngineDeadError(RuntimeError):
    """The engine thread failed; requests in flight receive this."""


class EngineShutdownError(RuntimeError):
    """The engine is being shut down: requests in flight and new ones receive this."""


@dataclass
class _Add:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    prompt_text: str | None
    accepted: asyncio.Future[None]
    lora_request: LoRARequest | None = None


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue[_Add | str | None] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self.dead: BaseException | None = None
        self.stopping: EngineShutdownError | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    @property
    def info(self) -> EngineInfo:
        """The served model, its context, the KV capacity and the engine's limits."""
        return self.engine.info

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume the streams."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="mistral-nemo-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the engine thread (after its current step; a daemon thread, so never waited on forever)."""
        self._inbox.put(None)
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def stop_requests(self, reason: str) -> None:
        """End every request in flight with EngineShutdownError(reason); refuse new ones likewise.

        Call from the event loop. Each stream raises the error at its next read, after the
        outputs already delivered, and its request is aborted (its KV blocks freed).
        """
        self.stopping = EngineShutdownError(reason)
        for request_id, stream in list(self._streams.items()):
            stream.put_nowait(EngineShutdownError(reason))
            self.abort(request_id)

    def new_request_id(self, prefix: str = "req") -> str:
        return f"{prefix}-{next(self._ids)}"

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prompt_text: str | None = None,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Queue a request and return its stream of outputs (one per step it moved in).

        Raises the engine's admission errors (context length, never fits, queue full, bad ids)
        here, before any output, so a server can still answer with the right status.
        """
        if self.dead is not None:
            raise EngineDeadError(f"the engine has stopped: {self.dead}")
        if self.stopping is not None:
            raise EngineShutdownError(str(self.stopping))
        self.start()
        assert self._loop is not None
        request_id = request_id or self.new_request_id()
        accepted: asyncio.Future[None] = self._loop.create_future()
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[request_id] = stream
        self._inbox.put(_Add(request_id, prompt, params, prompt_text, accepted, lora_request))
        self._wakeup.set()
        try:
            await accepted
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        return self._iterate(request_id, stream)

    def abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._inbox.put(request_id)
        self._wakeup.set()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def lora_requests(self) -> list[LoRARequest]:
        """The adapters loaded now (LLMEngine.lora_requests), which the server lists as models."""
        return self.engine.lora_requests()

    async def _iterate(
        self, request_id: str, stream: asyncio.Queue[RequestOutput | BaseException]
    ) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)
            self._streams.pop(request_id, None)

    # ---- engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._apply_inbox():
                return
            if not self.engine.has_unfinished_requests():
                self._wakeup.wait()
                self._wakeup.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a bug or out-of-memory: fail every request, keep serving
                self._fail_all(exc)
                continue
            for output in outputs:
                self._deliver(output.request_id, output)

    def _apply_inbox(self) -> bool:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            if isinstance(item, str):
                self.engine.abort_request(item)
                continue
            try:
                self.engine.add_request(
                    item.request_id,
                    item.prompt,
                    item.params,
                    prompt_text=item.prompt_text,
                    lora_request=item.lora_request,
                )
            except Exception as exc:
                self._settle(item.accepted, exc)
            else:
                self._settle(item.accepted, None)

    def _settle(self, future: asyncio.Future[None], error: BaseException | None) -> None:
        assert self._loop is not None

        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self._loop.call_soon_threadsafe(settle)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        assert self._loop is not None

        def put() -> None:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put_nowait(item)

        self._loop.call_soon_threadsafe(put)

    def _fail_all(self, exc: Exception) -> None:
        error = EngineDeadError(f"generation failed: {exc!r}")
        for request_id in self.engine.request_ids():
            self.engine.abort_request(request_id)
            self._deliver(request_id, error)
