"""The server's error table, over real HTTP: every case a client can cause is a clean 4xx/503 in
OpenAI's shape, nothing a client sends yields a 500, and a client that hangs up frees its KV blocks.
"""

from __future__ import annotations

import gc
import json
import random
import threading
import time
from typing import Any

import httpx
import pytest

from mistral_nemo.engine.async_engine import AsyncLLMEngine
from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.entrypoints.server import ServerConfig, build_app
from mistral_nemo.entrypoints.server import chat as chat_module
from tests.server_fixture import (
    API_KEY,
    BODY_LIMIT,
    NEMO_NAME,
    SMOL_MAX_MODEL_LEN,
    SMOL_NAME,
    RunningServer,
    nemo_model,
    nemo_server,
    run_uvicorn,
    smol_server,
)

__all__ = ["nemo_server", "smol_server"]  # fixtures, imported for pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = {"model": SMOL_NAME, "messages": QUESTION, "max_tokens": 1, "temperature": 0}


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def wait_until_idle(server: RunningServer, timeout: float = 15.0) -> None:
    """Running requests 0 and every KV block free, read back from /metrics."""
    deadline = time.monotonic() + timeout
    while True:
        running = server.metric("mistral_nemo:num_requests_running")
        waiting = server.metric("mistral_nemo:num_requests_waiting")
        usage = server.metric("mistral_nemo:kv_cache_usage_perc")
        if running == 0 and waiting == 0 and usage == 0:
            return
        assert time.monotonic() < deadline, f"still busy: running={running} waiting={waiting} kv={usage}"
        time.sleep(0.05)


# ---- 401 / 404 / 405 / 413 ---------------------------------------------------------------------


def test_api_key(smol_server: RunningServer) -> None:
    url = smol_server.base_url + "/v1/chat/completions"
    missing = httpx.post(url, json=CHAT)
    assert_openai_error(missing, 401, "invalid_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_openai_error(httpx.post(url, json=CHAT, headers={"Authorization": "Bearer nope"}), 401)
    assert_openai_error(httpx.post(url, json=CHAT, headers={"Authorization": f"Basic {API_KEY}"}), 401)
    assert_openai_error(httpx.get(smol_server.base_url + "/v1/models"), 401)
    assert_openai_error(httpx.post(smol_server.base_url + "/tokenize", json={"prompt": "x"}), 401)
    assert httpx.post(url, json=CHAT, headers={"x-api-key": API_KEY}).status_code == 200
    for public in ("/health", "/version", "/metrics"):
        assert httpx.get(smol_server.base_url + public).status_code == 200


def test_unknown_model_path_and_method(smol_server: RunningServer) -> None:
    with smol_server.client() as http:
        error = assert_openai_error(
            http.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"}), 404, "model_not_found"
        )
        assert error["param"] == "model" and SMOL_NAME in error["message"]
        assert_openai_error(http.post("/v1/completions", json={"model": "x", "prompt": "a"}), 404)
        assert_openai_error(http.get("/v1/models/gpt-4"), 404, "model_not_found")
        assert_openai_error(http.get("/v1/nothing-here"), 404)
        assert_openai_error(http.get("/v1/chat/completions"), 405)


def test_body_over_the_limit(smol_server: RunningServer) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (BODY_LIMIT + 10)}]}
    with smol_server.client() as http:
        assert_openai_error(http.post("/v1/chat/completions", json=big), 413, "request_too_large")

        def chunked():  # no Content-Length: the server counts
            for _ in range(BODY_LIMIT // 65536 + 2):
                yield b" " * 65536

        response = http.post(
            "/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert_openai_error(response, 413)


# ---- 400 ---------------------------------------------------------------------------------------


def test_prompt_beyond_the_context(smol_server: RunningServer) -> None:
    with smol_server.client() as http:
        response = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10**6})
        error = assert_openai_error(response, 400, "context_length_exceeded")
        prompt_tokens = http.post("/tokenize", json={"messages": QUESTION}).json()["count"]
        assert str(SMOL_MAX_MODEL_LEN) in error["message"] and str(prompt_tokens) in error["message"]
        long_prompt = {"model": SMOL_NAME, "prompt": [1] * (SMOL_MAX_MODEL_LEN + 5), "max_tokens": 1}
        assert_openai_error(http.post("/v1/completions", json=long_prompt), 400, "context_length_exceeded")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 10**30}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"logprobs": True, "top_logprobs": 50}, "logprobs"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [10**12]}, "stop_token_ids"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"tool_choice": "sometimes", "tools": []}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_invalid_parameters(smol_server: RunningServer, change: dict[str, Any], param: str) -> None:
    with smol_server.client() as http:
        error = assert_openai_error(http.post("/v1/chat/completions", json={**CHAT, **change}), 400)
    assert error["type"] == "invalid_request_error"
    assert param in (error["param"] or "") + error["message"]


# ---- nothing a client sends is a 500 ------------------------------------------------------------

# The status each odd body gets: one for both servers, or per server (a chat template renders a
# conversation the Mistral format refuses; Tekken adds <s> to an empty prompt).
Expected = int | dict[str, int]
HI = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, '
MALFORMED_BODIES: list[tuple[bytes, Expected]] = [
    (b"", 400),
    (b"not json", 400),
    (b"{", 400),
    (b"[]", 400),
    (b'"a string"', 400),
    (b"null", 400),
    (b"123", 400),
    (b"[" * 100_000, 400),
    (b'{"messages": [1]}', 400),
    (b'{"messages": [{"content": "no role"}]}', 400),
    (b'{"messages": [{"role": "user", "content": 5}]}', 400),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', 400),
    (b'{"messages": [{"role": "user", "content": "\\ud800 lone surrogate"}], "max_tokens": 1}', 400),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe not utf-8"}], "max_tokens": 1}', 400),
    (
        b'{"messages": [{"role": "user", "content": "\\u0000 nul \\ud83d\\ude00 emoji"}], "max_tokens": 1}',
        200,
    ),
    (
        b'{"messages": [{"role": "assistant", "content": "only me"}], "max_tokens": 1}',
        {"smol_server": 200, "nemo_server": 400},
    ),
    (
        b'{"messages": [{"role": "tool", "content": "x"}], "max_tokens": 1}',
        {"smol_server": 200, "nemo_server": 400},
    ),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN, "max_tokens": 1}', 400),
    (
        HI + b'"seed": 99999999999999999999999999}',
        200,
    ),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "n": 1, "stop": 5}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "tools": "x"}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "tools": [1, 2]}', 400),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "tool_choice": {"type": "x"}}',
        400,
    ),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "logit_bias": {"999999999": 5}}',
        400,
    ),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream": "maybe"}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "stream_options": 3}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "min_tokens": 5}', 400),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "model": 5}', 400),
    (b'{"messages": [{"role": "user", "content": "' + "é".encode() * 100 + b'"}], "max_tokens": 1}', 200),
    (HI + b'"response_format": {"type": "json_object"}}', 200),
    (HI + b'"response_format": {"type": "json_schema"}}', 400),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "response_format": '
        b'{"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}',
        400,
    ),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "response_format": '
        b'{"type": "json_schema", "json_schema": "x"}}',
        400,
    ),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "tool_choice": "required", '
        b'"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}',
        {"smol_server": 400, "nemo_server": 200},
    ),
    (
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "tool_choice": "any", '
        b'"tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}]}',
        400,
    ),
]
MALFORMED_COMPLETIONS: list[tuple[Any, Expected]] = [
    ({"prompt": []}, 400),
    ({"prompt": [[]]}, 400),
    ({"prompt": [-1]}, 400),
    ({"prompt": [10**12]}, 400),
    ({"prompt": {"a": 1}}, 400),
    ({"prompt": [1.5]}, 400),
    ({"prompt": [[1, "a"]]}, 400),
    ({"prompt": ""}, {"smol_server": 400, "nemo_server": 200}),
    ({"prompt": "x", "echo": "yes"}, 400),
    ({"prompt": "x", "logprobs": 100}, 400),
    ({"prompt": "x", "logprobs": -1}, 400),
    ({"prompt": "x", "suffix": "y"}, 400),
    ({"prompt": "x", "max_tokens": -1}, 400),
    ({"prompt": "x", "max_tokens": 10**40}, 400),
]


def _assert_clean(response: httpx.Response) -> None:
    """For fuzzed values: never a 5xx, and a 4xx is OpenAI-shaped."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)


def _assert_status(response: httpx.Response, expected: Expected, server_name: str, case: Any) -> None:
    status = expected if isinstance(expected, int) else expected[server_name]
    assert response.status_code == status, (case, response.text)
    if status >= 400:
        assert_openai_error(response, status)


@pytest.mark.parametrize("server_name", ["smol_server", "nemo_server"])
def test_malformed_requests_are_4xx(server_name: str, request: pytest.FixtureRequest) -> None:
    server: RunningServer = request.getfixturevalue(server_name)
    with server.client() as http:
        for body, expected in MALFORMED_BODIES:
            response = http.post(
                "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
            )
            _assert_status(response, expected, server_name, body)
        for case, expected in MALFORMED_COMPLETIONS:
            response = http.post("/v1/completions", json={"max_tokens": 1, **case})
            _assert_status(response, expected, server_name, case)
        for case in ({"tokens": [-1]}, {"tokens": "x"}, {"tokens": [10**30]}):
            assert_openai_error(http.post("/detokenize", json=case), 400)
        for case in ({"prompt": 5}, {"prompt": "a", "messages": QUESTION}, {"messages": [{"role": 1}]}, {}):
            assert_openai_error(http.post("/tokenize", json=case), 400)
        form = http.post("/v1/chat/completions", data={"messages": "hi"})
        assert_openai_error(form, 400)
        multipart = http.post("/v1/chat/completions", files={"f": ("a.json", b"{}")})
        assert_openai_error(multipart, 400)
        text_plain = http.post(
            "/v1/chat/completions",
            content=json.dumps({**CHAT, "model": server.model}),
            headers={"Content-Type": "text/plain"},
        )
        assert text_plain.status_code == 200, (
            text_plain.text
        )  # a JSON body is accepted whatever its Content-Type
        assert http.get("/health").status_code == 200


def test_random_field_values_are_never_a_500(smol_server: RunningServer) -> None:
    rng = random.Random(1234)
    fields = [
        "model", "messages", "temperature", "top_p", "top_k", "min_p", "n", "stop", "seed", "random_seed",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "logprobs",
        "top_logprobs", "tools", "tool_choice", "response_format", "stream_options", "safe_prompt",
        "max_tokens", "stop_token_ids", "skip_special_tokens", "user",
    ]  # fmt: skip
    values: list[Any] = [
        None, True, False, -1, 0, 1, 2, 10**30, -(10**30), 2**63, 0.5, -0.5, 1e308, "", "x", "é🙂\u0000",
        [], [1], ["a"], [None], {}, {"type": "text"}, {"1": 2}, [{"role": "user"}], {"a": [{"b": {}}]},
    ]  # fmt: skip
    with smol_server.client() as http:
        for _ in range(80):
            body = {**CHAT, "max_tokens": 2}
            for name in rng.sample(fields, rng.randint(1, 3)):
                body[name] = rng.choice(values)
            if isinstance(body.get("max_tokens"), int) and 2 < body["max_tokens"] < SMOL_MAX_MODEL_LEN:
                body["max_tokens"] = 2
            _assert_clean(http.post("/v1/chat/completions", json=body))


def test_a_bug_is_a_clean_500(smol_server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(tokenizer: Any, body: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(chat_module, "build_prompt", broken)
    with smol_server.client() as http:
        error = assert_openai_error(http.post("/v1/chat/completions", json=CHAT), 500, "internal_error")
    assert "secret" not in error["message"] and error["type"] == "server_error"


# ---- 503: loading, queue full; hanging up -----------------------------------------------------


def test_health_is_503_while_loading_then_200() -> None:
    gate = threading.Event()
    failures: list[BaseException] = []

    def load_slowly() -> AsyncLLMEngine:
        assert gate.wait(30)
        return AsyncLLMEngine(LLMEngine(nemo_model(), EngineConfig(kv_cache_memory=16 << 20)))

    def load_badly() -> AsyncLLMEngine:
        raise OSError("no such checkpoint")

    with run_uvicorn(build_app(load_slowly, ServerConfig())) as base_url:
        assert_openai_error(httpx.get(base_url + "/health"), 503, "model_loading")
        body = {"messages": QUESTION, "max_tokens": 1}
        assert_openai_error(httpx.post(base_url + "/v1/chat/completions", json=body), 503, "model_loading")
        gate.set()
        deadline = time.monotonic() + 30
        while httpx.get(base_url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.post(base_url + "/v1/chat/completions", json=body).status_code == 200
    with run_uvicorn(build_app(load_badly, ServerConfig(), on_load_error=failures.append)) as base_url:
        deadline = time.monotonic() + 10
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        error = assert_openai_error(httpx.get(base_url + "/health"), 503, "model_load_failed")
        assert "no such checkpoint" in error["message"]


# ---- 503 and hanging up ------------------------------------------------------------------------


def test_queue_full_is_503(nemo_server: RunningServer) -> None:
    long = {"model": NEMO_NAME, "messages": QUESTION, "max_tokens": 4000, "min_tokens": 4000, "stream": True}
    with nemo_server.client() as http, http.stream("POST", "/v1/chat/completions", json=long) as running:
        assert running.status_code == 200
        lines = running.iter_lines()  # kept: a dropped line iterator closes the connection
        next(lines)  # running now; the engine runs one sequence at a time
        with http.stream(
            "POST", "/v1/chat/completions", json={**long, "max_tokens": 5, "min_tokens": 0}
        ) as waiting:
            assert waiting.status_code == 200  # queued: the queue holds one
            short = {**long, "stream": False, "max_tokens": 5, "min_tokens": 0}
            refused = http.post("/v1/chat/completions", json=short)
            assert_openai_error(refused, 503, "overloaded")
            assert refused.headers["retry-after"]
    wait_until_idle(nemo_server)


def test_stream_cut_by_the_client_frees_its_blocks(smol_server: RunningServer) -> None:
    aborted = smol_server.metric("mistral_nemo:request_aborted_total")
    body = {**CHAT, "max_tokens": 300, "stream": True, "ignore_eos": True}
    with smol_server.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks = 0
        lines = response.iter_lines()  # kept until the end of the block: dropping it closes the stream
        for line in lines:
            chunks += line.startswith("data:")
            if chunks == 3:  # the role chunk and two tokens
                break
        assert smol_server.metric("mistral_nemo:kv_cache_usage_perc") > 0
    wait_until_idle(smol_server)
    assert smol_server.metric("mistral_nemo:request_aborted_total") == aborted + 1


def test_non_streaming_client_timeout_frees_its_blocks(smol_server: RunningServer) -> None:
    body = {**CHAT, "max_tokens": 300, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout), smol_server.client(timeout=1.0) as http:
        http.post("/v1/chat/completions", json=body)
    wait_until_idle(smol_server)


def test_client_timeout_on_several_prompts_leaves_no_error_in_the_log(
    smol_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": SMOL_NAME, "prompt": ["a", "b"], "max_tokens": 300, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout), smol_server.client(timeout=1.0) as http:
        http.post("/v1/completions", json=body)
    wait_until_idle(smol_server)
    gc.collect()  # an unretrieved exception is reported when its future is collected
    assert "never retrieved" not in caplog.text and "CancelledError" not in caplog.text


def test_metrics_after_requests(smol_server: RunningServer) -> None:
    with smol_server.client() as http:
        assert http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}).status_code == 200
        text = http.get("/metrics").text
    for name in (
        "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_queries_total",
        "prefix_cache_hits_total", "num_preemptions_total", "prompt_tokens_total", "generation_tokens_total",
        "time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
        "e2e_request_latency_seconds_count", "request_queue_time_seconds_count",
    ):  # fmt: skip
        assert f"mistral_nemo:{name}" in text
    assert smol_server.metric("mistral_nemo:time_to_first_token_seconds_count") >= 1
    assert smol_server.metric("mistral_nemo:generation_tokens_total") >= 3
    assert smol_server.metric("mistral_nemo:prefix_cache_hits_total") > 0  # the same question, again
