"""Issue 11's server defects, each over real HTTP on loopback (and SDK clients where they matter).

Deep nesting, a huge prompt on the event loop, requests that can never fit, a burst at the exact
capacity, OpenAI content shapes on a chat-template model, loose validation, duplicated
credentials, CORS and the served OpenAPI schema.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.errors import QueueFullError
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.entrypoints.server import ServerConfig
from mistral_nemo.tokenizer import ChatFormatError
from mistral_nemo.tokenizer.chat_template import ChatTemplate
from tests.server_fixture import (
    API_KEY,
    NEMO_NAME,
    SMOL_NAME,
    RunningServer,
    embedded_model,
    nemo_model,
    nemo_server,
    serve,
    smol_server,
)

__all__ = ["nemo_server", "smol_server"]  # fixtures, imported for pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def nested_list(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def nested_dict(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def openai_client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key=server.api_key, max_retries=0, timeout=120)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert "Traceback" not in error["message"]
    return error


# ---- 1: deep nesting ---------------------------------------------------------------------------


def test_deep_nesting_is_a_400_naming_it(
    smol_server: RunningServer, nemo_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for server in (smol_server, nemo_server):
        with server.client() as http:
            deep_content = {"model": server.model, "max_tokens": 1, "messages": [
                {"role": "user", "content": nested_list(500)}
            ]}  # fmt: skip
            error = error_of(http.post("/v1/chat/completions", json=deep_content), 400)
            assert "nested deeper than" in error["message"]
            extra_key = {"messages": [{"role": "user", "content": "hi", "meta": nested_dict(900)}]}
            assert "nested deeper than" in error_of(http.post("/tokenize", json=extra_key), 400)["message"]
            deep_prompt = {"model": server.model, "prompt": nested_list(300), "max_tokens": 1}
            assert (
                "nested deeper than"
                in error_of(http.post("/v1/completions", json=deep_prompt), 400)["message"]
            )
            assert http.get("/health").status_code == 200
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "RecursionError" not in caplog.text


def test_chat_template_bounds_nesting() -> None:
    template = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ChatFormatError, match="nested deeper than 64 levels"):
        template.render([{"role": "user", "content": nested_list(500)}])
    with pytest.raises(ChatFormatError, match="nested deeper than 64 levels"):
        template.render(
            [{"role": "user", "content": "x"}], tools=[{"type": "function", "f": nested_dict(900)}]
        )
    assert template.render([{"role": "user", "content": nested_list(30)}])  # deep, but within bounds


# ---- 2: a huge prompt does not freeze the server -------------------------------------------------


@pytest.fixture(scope="module")
def roomy_server() -> Iterator[RunningServer]:
    """SmolLM2 with an 8k context and a 16 MiB body limit: a prompt can take a second to tokenize."""
    engine = EngineConfig(kv_cache_memory=160 << 20, max_model_len=8192, max_num_seqs=4)
    config = ServerConfig(api_key=API_KEY, served_model_names=[SMOL_NAME], max_body_bytes=16 << 20)
    yield from serve(embedded_model(), engine, config)


@pytest.mark.serial  # compares gaps with the request's time: a busy neighbour stretches them unevenly
def test_tokenizing_a_huge_prompt_leaves_the_server_responsive(roomy_server: RunningServer) -> None:
    """/health and a running stream keep answering while a ~650 KB prompt is tokenized."""
    health_times: list[float] = []
    chunk_times: list[float] = []
    stop = threading.Event()
    streaming = threading.Event()

    def poll_health() -> None:
        with httpx.Client(base_url=roomy_server.base_url, timeout=60) as http:
            while not stop.is_set():
                assert http.get("/health").status_code == 200
                health_times.append(time.monotonic())
                time.sleep(0.01)

    def stream() -> None:
        body = {
            "model": SMOL_NAME,
            "messages": QUESTION,
            "max_tokens": 2000,
            "ignore_eos": True,
            "stream": True,
        }
        with (
            roomy_server.client() as http,
            http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    chunk_times.append(time.monotonic())
                    streaming.set()
                if stop.is_set():
                    break

    threads = [threading.Thread(target=poll_health), threading.Thread(target=stream)]
    for thread in threads:
        thread.start()
    try:
        assert streaming.wait(60)
        time.sleep(0.3)
        # Under the 8192 x 81-byte bound (the longest token), so it is tokenized, then refused.
        huge = {"model": SMOL_NAME, "prompt": "word " * 130_000, "max_tokens": 1}
        with roomy_server.client() as http:
            started = time.monotonic()
            error = error_of(http.post("/v1/completions", json=huge), 400)
            ended = time.monotonic()
        assert error["code"] == "context_length_exceeded" and "tokens" in error["message"]
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    busy = ended - started

    def longest_gap(times: list[float]) -> float:
        inside = [started, *[t for t in times if started < t < ended], ended]
        return max(b - a for a, b in itertools.pairwise(inside))

    # On the event loop, the tokenizing would hold both for (nearly) the whole request.
    assert longest_gap(health_times) < busy / 2, (longest_gap(health_times), busy)
    assert longest_gap(chunk_times) < busy / 2, (longest_gap(chunk_times), busy)


def test_a_prompt_too_long_for_any_tokenization_is_refused_before_tokenizing(
    roomy_server: RunningServer,
) -> None:
    ten_mb = {
        "model": SMOL_NAME,
        "messages": [{"role": "user", "content": "a" * (10 << 20)}],
        "max_tokens": 1,
    }
    with roomy_server.client() as http:
        error = error_of(http.post("/v1/chat/completions", json=ten_mb), 400)
        assert error["code"] == "context_length_exceeded" and "characters" in error["message"]
        prompt = {"model": SMOL_NAME, "prompt": ["hi", "b" * (1 << 20)], "max_tokens": 1}
        error = error_of(http.post("/v1/completions", json=prompt), 400)
        assert error["code"] == "context_length_exceeded" and "characters" in error["message"]


# ---- 3 and 4: what can never fit, and a burst at the exact capacity -----------------------------


def test_requests_that_can_never_fit_are_400_not_503(nemo_server: RunningServer) -> None:
    """The NeMo server holds 2 sequences (1 running + 1 queued)."""
    with nemo_server.client() as http:
        chat = {"model": NEMO_NAME, "messages": QUESTION, "max_tokens": 1, "n": 3}
        response = http.post("/v1/chat/completions", json=chat)
        error = error_of(response, 400)
        assert error["param"] == "n" and "at most 2" in error["message"]
        assert "retry-after" not in response.headers
        prompts = {"model": NEMO_NAME, "prompt": ["a", "b", "c"], "max_tokens": 1}
        assert error_of(http.post("/v1/completions", json=prompts), 400)["param"] == "prompt"
        pairs = {"model": NEMO_NAME, "prompt": ["a", "b"], "max_tokens": 1, "n": 2}
        assert error_of(http.post("/v1/completions", json=pairs), 400)["param"] == "prompt"
        assert http.post("/v1/completions", json={**prompts, "prompt": ["a", "b"]}).status_code == 200


def test_a_burst_of_running_slots_plus_queue_is_admitted() -> None:
    """Requests added before a step all sit in `waiting`: the free running slots count too."""
    engine = LLMEngine(nemo_model(), EngineConfig(kv_cache_memory=16 << 20, max_num_seqs=3, max_queue=2))
    params = SamplingParams(max_tokens=2, temperature=0.0)
    for i in range(5):
        engine.add_request(f"r{i}", [1, 2, 3], params)
    with pytest.raises(QueueFullError):
        engine.add_request("r5", [1, 2, 3], params)
    engine.step()
    assert (engine.stats().running, engine.stats().waiting) == (3, 2)
    with pytest.raises(QueueFullError):  # now the queue itself is full
        engine.add_request("r6", [1, 2, 3], params)
    while engine.has_unfinished_requests():
        engine.step()


# ---- 8: OpenAI content shapes on a chat-template model (and the Tekken path) ----------------------


def _tool_call_conversation(content: Any) -> list[dict[str, Any]]:
    call = {"id": "call_abc123DEF456ghi789", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 21}'},
    ]


def test_content_parts_and_null_tool_call_content(
    smol_server: RunningServer, nemo_server: RunningServer
) -> None:
    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]
    joined = "What is the capital\nof France?"  # a string template gets the parts joined by newlines
    client = openai_client(smol_server)
    as_parts = client.chat.completions.create(
        model=SMOL_NAME, messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0
    )
    as_text = client.chat.completions.create(
        model=SMOL_NAME, messages=[{"role": "user", "content": joined}], max_tokens=8, temperature=0
    )
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content
    assert as_parts.usage.prompt_tokens == as_text.usage.prompt_tokens
    after_tools = client.chat.completions.create(
        model=SMOL_NAME, messages=_tool_call_conversation(parts), max_tokens=4, temperature=0
    )
    assert after_tools.usage.prompt_tokens > as_parts.usage.prompt_tokens
    with smol_server.client() as http:
        image = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
        body = {"model": SMOL_NAME, "messages": [{"role": "user", "content": image}], "max_tokens": 1}
        assert "text" in error_of(http.post("/v1/chat/completions", json=body), 400)["message"]

    # Tekken: the same shapes are encoded as mistral_common does (its tests: test_chat_format.py).
    conversation = _tool_call_conversation(parts)
    answer = openai_client(nemo_server).chat.completions.create(
        model=NEMO_NAME, messages=conversation, max_tokens=2, temperature=0, tool_choice="none",
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    )  # fmt: skip
    with nemo_server.client() as http:
        tokenized = http.post("/tokenize", json={"messages": conversation, "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
        ]}).json()  # fmt: skip
    assert answer.usage.prompt_tokens == tokenized["count"]


# ---- 9: strict validation and credentials ---------------------------------------------------------

CHAT = {"model": SMOL_NAME, "messages": QUESTION, "max_tokens": 1, "temperature": 0}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": 5}}]}, "tools[0].function.name"),
        ({"tools": [{"function": {"name": "f", "parameters": "{}"}}]}, "tools[0].function.parameters"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
        ({"stream": "yes"}, "stream"),
        ({"top_logprobs": "5", "logprobs": True}, "top_logprobs"),
        ({"n": "2"}, "n"),
        ({"temperature": "0.5"}, "temperature"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ],
)
def test_types_are_strict(smol_server: RunningServer, change: dict[str, Any], param: str) -> None:
    with smol_server.client() as http:
        error = error_of(http.post("/v1/chat/completions", json={**CHAT, **change}), 400)
    assert error["param"] == param and param in error["message"]


def test_tokenize_refuses_a_role_chat_refuses(smol_server: RunningServer) -> None:
    with smol_server.client() as http:
        error = error_of(http.post("/tokenize", json={"messages": [{"role": "robot", "content": "x"}]}), 400)
        assert error["param"] == "messages[0].role"
        assert error_of(http.post("/v1/chat/completions", json={**CHAT, "messages": [
            {"role": "robot", "content": "x"}
        ]}), 400)["param"] == "messages[0].role"  # fmt: skip


def test_duplicated_credentials_are_refused(smol_server: RunningServer) -> None:
    url = smol_server.base_url + "/v1/chat/completions"
    for name, value in (("Authorization", f"Bearer {API_KEY}"), ("x-api-key", API_KEY)):
        for second in (value, "Bearer wrong" if name == "Authorization" else "wrong"):
            response = httpx.post(url, json=CHAT, headers=[(name, value), (name, second)])
            assert "one" in error_of(response, 400)["message"]
    assert httpx.post(url, json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


# ---- 16: CORS and the served OpenAPI schema -------------------------------------------------------


def test_cors_preflight_and_headers(smol_server: RunningServer) -> None:
    origin = "https://app.example"
    preflight = httpx.options(
        smol_server.base_url + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    refused = httpx.get(smol_server.base_url + "/v1/models", headers={"Origin": origin})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"


def test_no_cors_headers_when_no_origin_is_allowed() -> None:
    engine = EngineConfig(kv_cache_memory=16 << 20, max_model_len=512, max_num_seqs=1)
    for server in serve(nemo_model(), engine, ServerConfig(allowed_origins=[])):
        response = httpx.get(server.base_url + "/health", headers={"Origin": "https://app.example"})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_openapi_schema_and_docs(smol_server: RunningServer) -> None:
    schema = httpx.get(smol_server.base_url + "/openapi.json").json()  # public, as in vLLM
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    components = schema["components"]["schemas"]
    request = components["ChatCompletionRequest"]
    assert "messages" in request["required"] and request["properties"]["stream"]["type"] == "boolean"
    assert components["Tool"]["required"] == ["function"]
    assert components["FunctionDefinition"]["properties"]["name"]["type"] == "string"
    for path in ("/v1/completions", "/tokenize", "/detokenize"):
        assert "requestBody" in schema["paths"][path]["post"]
    docs = httpx.get(smol_server.base_url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
