"""`mistral-nemo serve --tensor-parallel-size 2` (the embedded model, gloo on CPU) over real HTTP:
chat, stream and a client abort answer as one process does; killing a rank gives 503, then exit.

The tests share one server and run in file order: the last one kills a rank.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mistral_nemo import LLM, SamplingParams
from tests.conftest import console_script

Server = tuple[subprocess.Popen, str, Path]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[subprocess.Popen, str, Path]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [console_script("mistral-nemo"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--tensor-parallel-size", "2", "--quantization", "none", "--max-model-len", "512"]
    cmd += ["--kv-cache-memory", "32MiB", "--shutdown-timeout", "3"]
    log = Path(tempfile.mkdtemp(prefix="tp-serve-")) / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the 2-rank server did not become healthy"
            time.sleep(0.5)
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _chat(url: str, **fields: object) -> httpx.Response:
    body = {"model": _model(url), "messages": MESSAGES, "max_tokens": 8, "temperature": 0, **fields}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=240)


def _model(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_chat_and_stream_answer_as_one_process(server: Server) -> None:
    _, url, _ = server
    answer = _chat(url)
    assert answer.status_code == 200, answer.text
    content = answer.json()["choices"][0]["message"]["content"]
    single = LLM(None, device="cpu", quantization="none", num_blocks=16)
    expected = single.chat(MESSAGES, SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    assert content == expected[0].outputs[0].text
    body = {"model": _model(url), "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "stream": True}
    pieces = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=240) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert "".join(pieces) == content


def test_a_cut_stream_is_aborted_and_the_ranks_stay_in_step(
    server: Server,
) -> None:
    _, url, _ = server
    aborted = _metric(url, "mistral_nemo:request_aborted_total")
    body = {"model": _model(url), "messages": MESSAGES, "max_tokens": 300, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=240) as response:
        chunks = 0
        lines = response.iter_lines()
        for line in lines:
            chunks += line.startswith("data:")
            if chunks == 3:
                break
    deadline = time.monotonic() + 60
    while _metric(url, "mistral_nemo:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the aborted request kept running"
        time.sleep(0.2)
    assert _metric(url, "mistral_nemo:request_aborted_total") == aborted + 1
    assert _chat(url, max_tokens=2).status_code == 200  # both ranks still run the same steps


def _rank_processes(pid: int) -> list[int]:
    """The server's spawned rank processes (not multiprocessing's resource tracker)."""
    # Every thread's children: the ranks are spawned by the thread that loads the model.
    children = [
        c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
    ]
    ranks = []
    for child in map(int, children):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            ranks.append(child)
    return ranks


def test_killing_a_rank_gives_503_then_the_server_exits(server: Server) -> None:
    proc, url, log = server
    ranks = _rank_processes(proc.pid)
    assert len(ranks) == 1, ranks
    subprocess.run(["kill", "-9", str(ranks[0])], check=True)
    deadline = time.monotonic() + 30
    while True:
        status = _chat(url, max_tokens=2).status_code
        if status == 503:
            break
        assert time.monotonic() < deadline, f"still {status} after the rank died"
        time.sleep(0.1)
    assert httpx.get(url + "/health", timeout=10).status_code == 503
    assert proc.wait(timeout=60) != 0
    assert "tp-rank-1" in log.read_text()
