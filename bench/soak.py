"""Soak and fault run of `mistral-nemo serve`: concurrent streams, random disconnects, SIGTERM mid-stream.

Starts the server (embedded model unless --model) on a free loopback port, then:
  1. `--streams` workers each stream chat completions back to back for `--duration` seconds;
     `--disconnects` of those requests are cut by the client at a random chunk, spread over the run;
  2. waits for the server to settle and reads /metrics (running / waiting requests, KV usage);
  3. starts `--streams` long streams, sends SIGTERM once all have tokens, and checks that each
     ends with an error event naming the shutdown and that the process exits within the timeout.
Prints one JSON line: success rate (requests not cut on purpose), TTFT and latency percentiles,
server RSS drift (after warm-up -> end), engine state after, shutdown figures, tracebacks in the log.

Usage: python bench/soak.py [--streams 32] [--duration 180] [--disconnects 100] [--shutdown-timeout 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about rain.",
    "What is 12 times 12?",
    "Give one tip for learning a language.",
    "Why is the sky blue? Answer in two sentences.",
]
SHUTDOWN_WORDS = "shutting down"


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def metric(self, name: str) -> float:
        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(f"mistral_nemo:{name} ") or line.startswith(f"mistral_nemo:{name}{{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def rss_mb(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_process(args: list[str], ready_timeout: float = 180.0) -> Iterator[ServeProcess]:
    """`mistral-nemo serve ARGS` on a free loopback port, its output in a log file; killed at the end."""
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="mistral-nemo-soak-")) / "serve.log"
    command = [sys.executable, "-m", "mistral_nemo.entrypoints.cli", "serve", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = ServeProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log()[-3000:]}")
            try:
                if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server never became healthy")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@dataclass
class Results:
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    cut: int = 0
    errors: list[str] = field(default_factory=list)


async def stream_once(
    client: httpx.AsyncClient, body: dict[str, Any], cut_after: int | None
) -> tuple[str, float | None, float]:
    """One streamed chat: ("ok" | "cut" | error text, TTFT, latency)."""
    started = time.monotonic()
    first: float | None = None
    chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {(await response.aread())[:200]!r}", None, 0.0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                return "ok", first, time.monotonic() - started
            event = json.loads(data)
            if "error" in event:
                return f"error event: {event['error'].get('message')}", first, time.monotonic() - started
            chunks += 1
            if first is None and any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                first = time.monotonic() - started
            if cut_after is not None and chunks >= cut_after:
                return "cut", first, time.monotonic() - started  # leaving the block closes the connection
    return "stream ended without [DONE]", first, time.monotonic() - started


async def soak(server: ServeProcess, args: argparse.Namespace, results: Results) -> float | None:
    """Run the workers; return the RSS after warm-up (every worker has finished a request, and a
    tenth of the run has passed): the allocator's caches and the KV pages in use are touched."""
    rng = random.Random(args.seed)
    started = time.monotonic()
    end = started + args.duration
    due = sorted(started + rng.uniform(0, args.duration) for _ in range(args.disconnects))
    warm_rss: list[float] = []
    finished = [0] * args.streams
    progress = tqdm(total=int(args.duration), unit="s", desc="soak", disable=args.quiet)

    async def worker(index: int) -> None:
        worker_rng = random.Random(args.seed * 1000 + index)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            while time.monotonic() < end:
                cut_after = None
                if due and due[0] <= time.monotonic():
                    due.pop(0)
                    cut_after = worker_rng.randint(1, 8)
                body = {
                    "messages": [{"role": "user", "content": worker_rng.choice(QUESTIONS)}],
                    "max_tokens": worker_rng.randint(8, args.max_tokens),
                    "temperature": 0.7,
                    "seed": worker_rng.randrange(1 << 30),
                    "stream": True,
                }
                try:
                    outcome, ttft, latency = await stream_once(client, body, cut_after)
                except httpx.HTTPError as exc:
                    outcome, ttft, latency = f"{type(exc).__name__}: {exc}", None, 0.0
                finished[index] += 1
                if outcome == "cut":
                    results.cut += 1
                elif outcome == "ok":
                    results.succeeded += 1
                    results.latency.append(latency)
                    if ttft is not None:
                        results.ttft.append(ttft)
                else:
                    results.failed += 1
                    results.errors.append(outcome)

    async def clock() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(1)
            progress.n = min(int(time.monotonic() - started), int(args.duration))
            progress.set_postfix(ok=results.succeeded, cut=results.cut, failed=results.failed)
            if not warm_rss and min(finished) > 0 and time.monotonic() - started >= args.duration / 10:
                warm_rss.append(server.rss_mb())

    await asyncio.gather(clock(), *(worker(i) for i in range(args.streams)))
    progress.close()
    return warm_rss[0] if warm_rss else None  # too short a run to warm up


def settle(server: ServeProcess, timeout: float = 10.0) -> dict[str, float]:
    """Engine state once idle (or after `timeout`): requests running / waiting and KV usage."""
    deadline = time.monotonic() + timeout
    while True:
        state = {
            "running": server.metric("num_requests_running"),
            "waiting": server.metric("num_requests_waiting"),
            "kv_usage": server.metric("kv_cache_usage_perc"),
        }
        if not any(state.values()) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


async def sigterm_mid_stream(server: ServeProcess, streams: int, timeout: float) -> dict[str, Any]:
    """Long streams, SIGTERM once each has a token; how each ends and when the process exits."""
    got_token = [asyncio.Event() for _ in range(streams)]

    async def one(i: int) -> str:
        body = {  # no max_tokens: the context's room, so only the shutdown ends it
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "ignore_eos": True,
            "stream": True,
        }
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=timeout + 30) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            last_error = ""
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    if "error" in event:
                        last_error = str(event["error"].get("message"))
                    elif event.get("choices") and event["choices"][0]["delta"].get("content"):
                        got_token[i].set()
                elif line == "data: [DONE]":
                    return last_error or "finished"
        return last_error or "cut without [DONE]"

    tasks = [asyncio.ensure_future(one(i)) for i in range(streams)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in got_token)), 120)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    code = await asyncio.to_thread(server.process.wait, timeout + 30)
    exit_s = time.monotonic() - signalled
    told = sum(1 for o in outcomes if isinstance(o, str) and SHUTDOWN_WORDS in o)
    return {
        "timeout_s": timeout,
        "exit_s": round(exit_s, 2),
        "exit_code": code,
        "within_timeout": exit_s <= timeout + 0.5,  # + the process's own exit (interpreter teardown)
        "streams": streams,
        "streams_told_of_shutdown": told,
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {
        "p50": round(cuts[49] * 1000, 1),
        "p90": round(cuts[89] * 1000, 1),
        "p99": round(cuts[98] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of load (default 30)")
    parser.add_argument("--disconnects", type=int, default=10, help="requests cut by the client (default 10)")
    parser.add_argument("--max-tokens", type=int, default=48, help="largest max_tokens of a request")
    parser.add_argument("--shutdown-timeout", type=float, default=5.0)
    parser.add_argument("--model", default=None, help="model path (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    serve_args = [
        "--max-num-seqs", str(args.streams), "--shutdown-timeout", str(args.shutdown_timeout),
        "--log-level", "warning", *([args.model] if args.model else []),
    ]  # fmt: skip
    results = Results()
    with serve_process(serve_args) as server:
        rss_start = asyncio.run(soak(server, args, results))
        after = settle(server)
        rss_end = server.rss_mb()
        shutdown = asyncio.run(sigterm_mid_stream(server, args.streams, args.shutdown_timeout))
        log = server.log()
    attempted = results.succeeded + results.failed
    print(
        json.dumps(
            {
                "bench": "soak",
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "model": args.model or "embedded",
                "streams": args.streams,
                "duration_s": args.duration,
                "requests": attempted + results.cut,
                "succeeded": results.succeeded,
                "success_rate": round(results.succeeded / attempted, 4) if attempted else None,
                "disconnects": results.cut,
                "errors": sorted(set(results.errors))[:5],
                "ttft_ms": percentiles(results.ttft),
                "latency_ms": percentiles(results.latency),
                "rss_mb_after_warmup": round(rss_start, 1) if rss_start is not None else None,
                "rss_mb_end": round(rss_end, 1),
                "rss_drift_mb": round(rss_end - rss_start, 1) if rss_start is not None else None,
                "after": after,
                "shutdown": shutdown,
                "log_tracebacks": log.count("Traceback"),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
