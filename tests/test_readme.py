"""README.md's code blocks, run as a reader would run them, so that they can never rot again.

bash blocks run line by line in a shell (the venv's commands on PATH); python blocks run in a fresh
namespace; both in a folder holding the files the README names (tekken.json, conversation.json from
its own JSON block). Blocks that talk to http://127.0.0.1:8000 get a real `mistral-nemo serve` of the
embedded model on a free loopback port instead. What cannot run here is listed in NOT_HERE, with why.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import NEMO_TEKKEN
from tests.gguf_fixture import smollm2_gguf_path

README = Path(__file__).resolve().parents[1] / "README.md"
KEY = "readme-key"
# Commands that cannot run on this machine, by a piece of their text, and why.
NOT_HERE = {
    "bash scripts/test.sh": "runs this test suite itself",
    "~/mistral_models": "needs the NeMo 12B weights (24.5 GB) on disk",
    "mistral-nemo download": "needs the Hugging Face hub",
    "mistral-nemo serve": "long-running: the test starts the README's `mistral-nemo serve` itself",
    "examples/finetune/facts.yaml": "trains for minutes, paths relative to the repository root; "
    "test_finetune_config.py validates this example, test_finetune_train.py trains a short run",
    "runs/facts": "needs the adapter the example's training writes (test_finetune_train.py: chat --lora)",
    "ADAPTER": "placeholders; tests/test_lora.py runs --lora, merge and export on real adapters, "
    "tests/test_eval_lora.py eval --lora",
    '"model": "sql"': "needs the adapters of the serve --lora example; tests/test_server_lora.py serves two "
    "adapters and the base over real HTTP",
    "PEFT_DIR": "placeholders; tests/test_lora.py exports to PEFT and back",
    "--tasks mmlu": "57 subjects x 5 shots: many minutes on 2 cores; tests/test_eval*.py run the same path",
    "'.[ray]'": "installs Ray Serve; tests/test_server_replicas.py runs serve --replicas on local Ray",
    "ray start": "needs a Ray cluster; tests/test_server_replicas.py starts a local one",
    "lm-eval run": "needs a server on port 8000; tests/test_lm_eval_e2e.py runs lm-eval against serve",
}
SETUP = "bash scripts/setup.sh && "  # the venv running this test is what setup.sh made


def blocks() -> list[tuple[str, str, int]]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        found.append((match.group(1), match.group(2), line))
    return found


def commands(block: str) -> list[str]:
    """The shell commands of a bash block (continuation lines joined), minus those NOT_HERE."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [line.strip().removeprefix(SETUP).removeprefix(".venv/bin/") for line in joined.splitlines()]
    return [c for c in lines if c and not c.startswith("#") and not any(k in c for k in NOT_HERE)]


BLOCKS = blocks()
RUNNABLE = [(kind, body, line) for kind, body, line in BLOCKS if kind in ("bash", "python")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(NEMO_TEKKEN, folder / "tekken.json")
    (folder / "Mistral-Nemo-Instruct-2407").mkdir()
    shutil.copy(NEMO_TEKKEN, folder / "Mistral-Nemo-Instruct-2407" / "tekken.json")
    (json_block,) = [body for kind, body, _ in BLOCKS if kind == "json"]
    (folder / "conversation.json").write_text(json_block)
    return folder


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    gguf = smollm2_gguf_path()
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MISTRAL_NEMO_HOME": str(gguf.parent.parent),  # the embedded model, already fetched
        "KEY": KEY,
    }


@pytest.fixture(scope="module")
def server_port(env: dict[str, str]) -> Iterator[int]:
    """The README's `mistral-nemo serve`, with the names its examples use, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ["mistral-nemo", "serve", "--port", str(port), "--api-key", KEY,
               "--served-model-name", "nemo", "open-mistral-nemo", "--max-model-len", "2048"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.5)
        else:
            raise AssertionError("mistral-nemo serve did not become ready in 120 s")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def with_port(code: str, request: pytest.FixtureRequest) -> str:
    if "127.0.0.1:8000" not in code:
        return code
    port = request.getfixturevalue("server_port")
    return code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


@pytest.mark.parametrize(("kind", "body", "line"), RUNNABLE, ids=[f"L{line}-{k}" for k, _, line in RUNNABLE])
def test_readme_block_runs(kind: str, body: str, line: int, workdir, env, request, monkeypatch) -> None:
    if kind == "python":
        monkeypatch.chdir(workdir)
        for name in ("KEY",):
            monkeypatch.setenv(name, env[name])
        monkeypatch.setenv("MISTRAL_NEMO_HOME", env["MISTRAL_NEMO_HOME"])
        exec(compile(with_port(body, request), f"README.md:{line}", "exec"), {"__name__": "__readme__"})
        return
    runnable = commands(body)
    if not runnable:
        pytest.skip(f"README.md:{line}: every command needs what NOT_HERE lists")
    for command in runnable:
        result = subprocess.run(
            ["bash", "-c", with_port(command, request)], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, f"README.md:{line}: {command}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, result.stderr


def test_not_here_lists_only_what_the_readme_has() -> None:
    text = README.read_text(encoding="utf-8")
    assert all(key in text for key in NOT_HERE)  # no stale exemptions
