"""Graceful shutdown of a real `mistral-nemo serve` process (signals need the main thread of its own).

SIGTERM with requests in flight: each stream ends with an error event naming the shutdown and
[DONE], a waiting non-streamed request gets a 503 saying so, the process exits by
--shutdown-timeout, and the log holds no traceback. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx

from bench.soak import ServeProcess, serve_process

QUESTION = [{"role": "user", "content": "Tell me a long story."}]


async def _stream_until_error(client: httpx.AsyncClient, started: asyncio.Event) -> list[str]:
    """The data lines after the first token (no max_tokens: only the shutdown ends it)."""
    body = {"messages": QUESTION, "ignore_eos": True, "stream": True}
    lines: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                lines.append(line[6:])
                if len(lines) >= 2:
                    started.set()
    return lines


async def _in_flight_then_signal(server: ServeProcess, signals: list[tuple[float, int]]) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        started = [asyncio.Event() for _ in range(2)]
        streams = [asyncio.ensure_future(_stream_until_error(client, event)) for event in started]
        whole = asyncio.ensure_future(
            client.post("/v1/chat/completions", json={"messages": QUESTION, "ignore_eos": True})
        )
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
        await asyncio.sleep(0.3)  # the non-streamed request is generating too
        signalled = time.monotonic()
        for delay, sig in signals:
            await asyncio.sleep(delay)
            server.process.send_signal(sig)
        outcomes = await asyncio.gather(*streams, whole, return_exceptions=True)
        code = await asyncio.to_thread(server.process.wait, 60)
        return {"outcomes": outcomes, "code": code, "exit_s": time.monotonic() - signalled}


def test_sigterm_tells_requests_in_flight_and_exits_by_the_deadline() -> None:
    timeout = 3.0
    with serve_process(["--max-num-seqs", "4", "--shutdown-timeout", str(timeout)]) as server:
        result = asyncio.run(_in_flight_then_signal(server, [(0.0, signal.SIGTERM)]))
        log = server.log()
    *streams, whole = result["outcomes"]  # type: ignore[misc]
    for lines in streams:
        assert lines[-1] == "[DONE]", lines[-3:]
        error = json.loads(lines[-2])["error"]
        assert error["code"] == "server_shutdown" and "shutting down" in error["message"]
        assert all("error" not in json.loads(line) for line in lines[:-2])  # tokens, then the error
    assert isinstance(whole, httpx.Response) and whole.status_code == 503, whole
    assert whole.json()["error"]["code"] == "server_shutdown"
    assert result["code"] == 0
    assert result["exit_s"] <= timeout + 1.0, result["exit_s"]  # + the exit itself, on a busy machine
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert "SIGTERM: shutting down" in log


def test_a_second_signal_exits_at_once() -> None:
    with serve_process(["--shutdown-timeout", "60"]) as server:
        result = asyncio.run(_in_flight_then_signal(server, [(0.0, signal.SIGTERM), (0.5, signal.SIGINT)]))
        log = server.log()
    assert result["code"] == 128 + signal.SIGINT
    assert result["exit_s"] < 10, result["exit_s"]  # not the 60 s the first signal allowed
    assert "second SIGINT: exiting now" in log
