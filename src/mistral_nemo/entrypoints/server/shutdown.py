"""Graceful shutdown for `mistral-nemo serve`: uvicorn with a deadline.

On the first SIGTERM / SIGINT the server stops listening and answers new requests with 503;
requests in flight may finish during most of `shutdown_timeout`, then each still running is
ended with an error naming the shutdown (a final `data: {"error": ...}` event and `[DONE]` for a
stream, a 503 otherwise), so uvicorn never has to cancel a task. The process exits by the
deadline whatever happens (a watchdog thread), and a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

import uvicorn

from mistral_nemo.entrypoints.server.state import ServerState

logger = logging.getLogger("mistral_nemo.server")


def drain_time(timeout: float) -> float:
    """Seconds in-flight requests may keep running after the signal: all but a margin to close."""
    return max(timeout * 0.5, timeout - 1.0)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server for an app of build_app(); its ServerConfig.shutdown_timeout is the deadline."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.state: ServerState = config.app.state.server
        self.timeout = self.state.config.shutdown_timeout
        # uvicorn's own wait for connections ends between the drain and the deadline.
        config.timeout_graceful_shutdown = (drain_time(self.timeout) + self.timeout) / 2  # type: ignore[assignment]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled_at: float | None = None
        self._drain: asyncio.Task[None] | None = None

    def run(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        super().run(sockets)
        if self._signalled_at is not None:
            # Everything is closed; tearing the interpreter down (torch, the model's maps) can take
            # seconds past the deadline, and the watchdog cannot run during it.
            logger.info("stopped %.1fs after the signal", time.monotonic() - self._signalled_at)
            logging.shutdown()
            _exit(0)

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self._signalled_at is not None:
            logger.warning("second %s: exiting now", name)
            _exit(128 + sig)
        self._signalled_at = time.monotonic()
        logger.info(
            "%s: shutting down; requests in flight have %.1fs to finish (--shutdown-timeout %.1fs)",
            name,
            drain_time(self.timeout),
            self.timeout,
        )
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_drain)
        self.should_exit = True  # uvicorn stops listening; the signal is not re-raised after exit

    def _begin_drain(self) -> None:
        self._drain = asyncio.ensure_future(self.state.drain(drain_time(self.timeout)))

    def _watchdog(self) -> None:
        time.sleep(self.timeout)
        logger.error("the shutdown timeout (%.1fs) has passed: exiting now", self.timeout)
        _exit(1)


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
