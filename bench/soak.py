"""Soak and fault run of `mistral-nemo serve`: concurrent streams, random disconnects, SIGTERM mid-stream.

Starts the server (embedded model unless --model) on a free loopback port, then:
  1. `--streams` workers each stream chat completions back to back for `--warmup` + `--duration`
     seconds; `--disconnects` of those requests are cut by the client at a random chunk, spread
     over the measured part (and a tenth as many during warm-up);
  2. waits for the server to settle and reads /metrics (running / waiting requests, KV usage);
  3. starts `--streams` long streams, sends SIGTERM once all have tokens, and checks that each
     ends with an error event naming the shutdown and that the process exits within the timeout.
Prints one JSON line: success rate (requests not cut on purpose), TTFT and latency percentiles,
engine state after, shutdown figures, tracebacks in the log, and the server's memory: RSS drift
from the end of warm-up to the end of the load (and once idle), the growth rate over the second
half of the load (a leak keeps growing; an allocator settles), and the RSS series (anonymous and
file-backed) sampled every `--sample-every` seconds from the start.

The warm-up is load like the rest, long enough for every code path to run and for the allocator
to reach its steady size; the drift is measured after it. `--tracemalloc` traces the server's Python
allocations from the end of warm-up on and adds the 10 source lines holding the most memory
allocated since and still alive at the end of the load (the server runs slower while traced).
`--server-env K=V` sets environment variables of the server (e.g. MALLOC_ARENA_MAX=2 to compare
allocators).

Usage: python bench/soak.py [--streams 32] [--warmup 60] [--duration 180] [--disconnects 100]
                            [--shutdown-timeout 5] [--tracemalloc] [--server-env K=V ...]
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

    def memory_mb(self) -> dict[str, float]:
        """Resident memory of the server process (Linux /proc): all, anonymous, file-backed (code, maps)."""
        fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
        out: dict[str, float] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in fields:
                out[fields[key]] = round(int(line.split()[1]) / 1024, 1)
        if "rss" not in out:
            raise RuntimeError("no VmRSS")
        return out

    def rss_mb(self) -> float:
        return self.memory_mb()["rss"]

    def tracemalloc_snapshot(self, path: Path, timeout: float = 120.0) -> Path:
        """Ask a server started with tracemalloc (see TRACEMALLOC_BOOT) to dump a snapshot to `path`."""
        request = path.with_suffix(".request")
        request.write_text(str(path))
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while request.exists():  # the server removes it once the snapshot is written
            if time.monotonic() > deadline:
                raise RuntimeError("the server wrote no tracemalloc snapshot")
            time.sleep(0.2)
        return path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# `python -c TRACEMALLOC_BOOT serve ...`: the CLI, untraced until the first SIGUSR1 (start-up stays
# fast); on each SIGUSR1 it starts tracemalloc if it is off, writes a snapshot to the path named in
# every pending *.request file of MISTRAL_NEMO_SOAK_DIR, then removes that file. Traced from the end
# of warm-up on, the last snapshot holds exactly the Python allocations made since and still alive.
# Beside each snapshot, PATH.numba.json: how many compiled signatures each numba kernel of the
# project has (a compile after warm-up adds LLVM memory that tracemalloc does not see).
TRACEMALLOC_BOOT = """
import json, os, pathlib, signal, sys, tracemalloc
def numba_signatures():
    counts = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("mistral_nemo"):
            for attr, value in list(vars(module).items()):
                if hasattr(value, "signatures") and hasattr(value, "py_func"):
                    counts[name + "." + attr] = len(value.signatures)
    return counts
def dump(signum, frame):
    if not tracemalloc.is_tracing():
        tracemalloc.start(1)
    for request in pathlib.Path(os.environ["MISTRAL_NEMO_SOAK_DIR"]).glob("*.request"):
        path = request.read_text()
        pathlib.Path(path + ".numba.json").write_text(json.dumps(numba_signatures()))
        tracemalloc.take_snapshot().dump(path)
        request.unlink()
signal.signal(signal.SIGUSR1, dump)
from mistral_nemo.entrypoints.cli import main
sys.argv[0] = "mistral-nemo"
sys.exit(main())
"""


@contextmanager
def serve_process(
    args: list[str],
    ready_timeout: float = 180.0,
    env: dict[str, str] | None = None,
    tracemalloc: bool = False,
) -> Iterator[ServeProcess]:
    """`mistral-nemo serve ARGS` on a free loopback port, its output in a log file; killed at the end.

    env: extra environment variables of the server. tracemalloc: run it with Python's tracemalloc,
    snapshots on request (ServeProcess.tracemalloc_snapshot)."""
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="mistral-nemo-soak-")) / "serve.log"
    start = ["-c", TRACEMALLOC_BOOT] if tracemalloc else ["-m", "mistral_nemo.entrypoints.cli"]
    command = [sys.executable, *start, "serve", "--port", str(port), *args]
    server_env = {**os.environ, **(env or {}), "MISTRAL_NEMO_SOAK_DIR": str(log_path.parent)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env)
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


@dataclass
class Memory:
    """The server's memory during the load: (seconds since start, VmRSS, RssAnon, RssFile) samples,
    the sample at the end of warm-up, and tracemalloc snapshots taken then and at the end."""

    samples: list[tuple[float, float, float, float]] = field(default_factory=list)
    warm_index: int | None = None
    snapshots: list[Path] = field(default_factory=list)

    def take(self, server: ServeProcess, elapsed: float) -> None:
        m = server.memory_mb()
        self.samples.append((round(elapsed, 1), m["rss"], m.get("anon", 0.0), m.get("file", 0.0)))


async def soak(server: ServeProcess, args: argparse.Namespace, results: Results, memory: Memory) -> None:
    """Run the workers for warm-up + duration, sampling the server's memory. Warm-up ends once
    `--warmup` seconds have passed and every worker has finished a request (every path has run)."""
    rng = random.Random(args.seed)
    started = time.monotonic()
    end = started + args.warmup + args.duration
    due = sorted(  # the disconnects asked for in the measured part, a tenth more in warm-up (that path too)
        [started + args.warmup + rng.uniform(0, args.duration) for _ in range(args.disconnects)]
        + [started + rng.uniform(0, args.warmup) for _ in range(args.disconnects // 10 if args.warmup else 0)]
    )
    finished = [0] * args.streams
    total = int(args.warmup + args.duration)
    progress = tqdm(total=total, unit="s", desc="soak", disable=args.quiet)

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
        next_sample = 0.0
        while time.monotonic() < end:
            await asyncio.sleep(1)
            elapsed = time.monotonic() - started
            progress.n = min(int(elapsed), total)
            progress.set_postfix(ok=results.succeeded, cut=results.cut, failed=results.failed)
            if elapsed >= next_sample:
                memory.take(server, elapsed)
                next_sample += args.sample_every
            if memory.warm_index is None and min(finished) > 0 and elapsed >= args.warmup:
                memory.take(server, elapsed)
                memory.warm_index = len(memory.samples) - 1
                if args.tracemalloc:
                    path = server.log_path.parent / "warm.snapshot"
                    memory.snapshots.append(await asyncio.to_thread(server.tracemalloc_snapshot, path))

    await asyncio.gather(clock(), *(worker(i) for i in range(args.streams)))
    memory.take(server, time.monotonic() - started)
    if args.tracemalloc and memory.warm_index is not None:
        path = server.log_path.parent / "end.snapshot"
        memory.snapshots.append(await asyncio.to_thread(server.tracemalloc_snapshot, path))
    progress.close()


def memory_report(memory: Memory, idle_rss: float) -> dict[str, Any]:
    """Drift after warm-up (to the end of the load, and once idle), the growth rate over the second
    half of the measured load, the series, and the Python allocation lines that grew most."""
    series = memory.samples
    report: dict[str, Any] = {
        "rss_mb_after_warmup": None,
        "rss_mb_end": series[-1][1] if series else None,
        "rss_mb_idle": idle_rss,
        "rss_drift_mb": None,
    }
    if memory.warm_index is not None:  # else: too short a run to warm up
        warm = series[memory.warm_index]
        report.update(
            rss_mb_after_warmup=warm[1],
            rss_drift_mb=round(series[-1][1] - warm[1], 1),
            rss_drift_idle_mb=round(idle_rss - warm[1], 1),
            anon_drift_mb=round(series[-1][2] - warm[2], 1),
            file_drift_mb=round(series[-1][3] - warm[3], 1),
        )
        measured = series[memory.warm_index :]
        tail = measured[len(measured) // 2 :]
        if len(tail) >= 3 and tail[-1][0] > tail[0][0]:
            slope = statistics.linear_regression([t for t, *_ in tail], [r for _, r, *_ in tail]).slope
            report["rss_mb_per_min_second_half"] = round(slope * 60, 2)
    report["rss_series"] = {
        "t_s": [t for t, *_ in series],
        "rss_mb": [r for _, r, _, _ in series],
        "anon_mb": [a for _, _, a, _ in series],
        "file_mb": [f for _, _, _, f in series],
    }
    if len(memory.snapshots) == 2:
        import tracemalloc

        before, after = (tracemalloc.Snapshot.load(str(p)) for p in memory.snapshots)
        report["tracemalloc_top_growth"] = [
            [str(stat.traceback[0]), round(stat.size_diff / 1024, 1), stat.count_diff]
            for stat in after.compare_to(before, "lineno")[:10]
        ]
        counts = [json.loads(Path(f"{p}.numba.json").read_text()) for p in memory.snapshots]
        report["numba_compiles_after_warmup"] = {
            name: n - counts[0].get(name, 0) for name, n in counts[1].items() if n != counts[0].get(name, 0)
        }
        report["tracemalloc_total_growth_mb"] = round(
            (
                sum(s.size for s in after.statistics("filename"))
                - sum(s.size for s in before.statistics("filename"))
            )
            / 2**20,
            2,
        )
    return report


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
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in got_token)), 120)
    except TimeoutError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"error": "not every stream had a token within 120 s; no SIGTERM sent"}
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
    parser.add_argument(
        "--warmup", type=float, default=60, help="seconds of load before measuring (default 60)"
    )
    parser.add_argument("--duration", type=float, default=30, help="seconds of measured load (default 30)")
    parser.add_argument("--disconnects", type=int, default=10, help="requests cut by the client (default 10)")
    parser.add_argument("--max-tokens", type=int, default=48, help="largest max_tokens of a request")
    parser.add_argument("--shutdown-timeout", type=float, default=5.0)
    parser.add_argument("--model", default=None, help="model path (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--tracemalloc", action="store_true", help="report the Python lines that grew most")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="K=V", help="environment of the server"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600, help="seconds the server may take to start"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    env = {}
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--server-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    serve_args = [
        "--max-num-seqs", str(args.streams), "--shutdown-timeout", str(args.shutdown_timeout),
        "--log-level", "warning", *([args.model] if args.model else []),
    ]  # fmt: skip
    results = Results()
    memory = Memory()
    with serve_process(serve_args, args.ready_timeout, env=env, tracemalloc=args.tracemalloc) as server:
        asyncio.run(soak(server, args, results, memory))
        after = settle(server)
        time.sleep(2)  # idle: what the allocator keeps once no request runs
        idle_rss = server.rss_mb()
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
                "warmup_s": args.warmup,
                "duration_s": args.duration,
                "server_env": env,
                "tracemalloc": args.tracemalloc,
                "requests": attempted + results.cut,
                "succeeded": results.succeeded,
                "success_rate": round(results.succeeded / attempted, 4) if attempted else None,
                "disconnects": results.cut,
                "errors": sorted(set(results.errors))[:5],
                "ttft_ms": percentiles(results.ttft),
                "latency_ms": percentiles(results.latency),
                **memory_report(memory, idle_rss),
                "after": after,
                "shutdown": shutdown,
                "log_tracebacks": log.count("Traceback"),
                "cpus": os.cpu_count(),
                "loadavg": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
