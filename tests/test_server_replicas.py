"""`serve --replicas 2` on a local Ray cluster: two replicas of the embedded model behind one ingress.

The official openai SDK talks to the ingress and to a single in-process server with the same
limits; greedy answers, streams, tool requests and errors must be the same. A conversation's turns
must land on one replica (its prefix-cache counters in /metrics, labelled by replica), and
killing that replica must leave the other serving the conversation.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.server_fixture import (
    API_KEY,
    BODY_LIMIT,
    SMOL_MAX_MODEL_LEN,
    SMOL_NAME,
    RunningServer,
    smol_server,
)

pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install 'mistral-nemo[ray]')")

import ray  # after the skip: ray is optional

from mistral_nemo.entrypoints.cli import build_parser
from mistral_nemo.entrypoints.replicas.launch import start_replicas, stop_replicas
from mistral_nemo.entrypoints.serve_cmd import check_args

__all__ = ["smol_server"]  # a fixture, imported for pytest

SYSTEM = {"role": "system", "content": "You are a geography teacher. Answer in one short sentence. " * 4}
TURN_1 = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


# How long the raylet waits for Ray's dashboard agent (a Python process) to start: ample on a loaded machine.
os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")


@pytest.fixture(scope="module")
def replicas() -> Iterator[RunningServer]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The limits of the single server (server_fixture.smol_server_config), one thread per replica.
    argv = ["serve", "--replicas", "2", "--port", str(port), "--threads", "1", "--api-key", API_KEY,
            "--served-model-name", SMOL_NAME, "--max-model-len", str(SMOL_MAX_MODEL_LEN),
            "--kv-cache-memory", str(160 << 20), "--max-num-seqs", "8",
            "--max-body-size", str(BODY_LIMIT)]  # fmt: skip
    args = build_parser().parse_args(argv)
    check_args(args)
    try:
        url = start_ray_serve(args)
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        yield RunningServer(url, API_KEY, SMOL_NAME, engine=None)  # type: ignore[arg-type]
    finally:
        stop_replicas()


def start_ray_serve(args: argparse.Namespace) -> str:
    """start_replicas, which returns once both replicas have loaded the model. On a heavily loaded
    machine Ray's own start-up can miss its fixed 30 s wait for the node to register: try again."""
    for attempt in range(3):
        try:
            return start_replicas(args)
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            stop_replicas()
    raise AssertionError("unreachable")


def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.v1, api_key=server.api_key, max_retries=0, timeout=120)


def chat(server: RunningServer, messages: list[dict], **fields: object) -> object:
    fields = {"temperature": 0, "max_tokens": 40 if "tools" in fields else 12, **fields}
    return client(server).chat.completions.create(model=SMOL_NAME, messages=messages, **fields)


def per_replica(server: RunningServer, name: str) -> dict[str, float]:
    """{replica: value} of one counter in the ingress's /metrics."""
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                values[sample.labels["replica"]] = sample.value
    return values


def served_by(server: RunningServer, messages: list[dict]) -> tuple[str, str]:
    """(the replica that answered, the answer): the one whose prefix-cache lookups grew."""
    name = "mistral_nemo:prefix_cache_queries_total"
    before = per_replica(server, name)
    answer = chat(server, messages).choices[0].message.content
    after = per_replica(server, name)
    (replica,) = [r for r in after if after[r] > before.get(r, 0)]
    return replica, answer


def test_chat_stream_and_errors_like_one_server(replicas: RunningServer, smol_server: RunningServer) -> None:
    ours, single = chat(replicas, TURN_1), chat(smol_server, TURN_1)
    assert ours.choices[0].message.content == single.choices[0].message.content
    assert "Paris" in ours.choices[0].message.content
    assert (ours.usage.prompt_tokens, ours.usage.completion_tokens) == (
        single.usage.prompt_tokens,
        single.usage.completion_tokens,
    )
    chunks = list(chat(replicas, TURN_1, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ours.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage.completion_tokens == ours.usage.completion_tokens

    for method, path, body, headers in [
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": TURN_1}, replicas.headers),  # 404
        ("POST", "/v1/chat/completions", {"model": SMOL_NAME, "messages": TURN_1}, {}),  # 401: no key
        ("POST", "/v1/chat/completions", {"model": SMOL_NAME, "messages": "hi"}, replicas.headers),  # 400
        ("POST", "/v1/completions", {"model": SMOL_NAME, "prompt": "x" * BODY_LIMIT}, replicas.headers),
        ("GET", "/v1/models", None, replicas.headers),
    ]:
        answers = [
            httpx.request(method, server.base_url + path, json=body, headers=headers, timeout=60)
            for server in (replicas, smol_server)
        ]
        assert answers[0].status_code == answers[1].status_code, path
        assert answers[0].json() == answers[1].json() or path == "/v1/models"  # `created` differs
    assert [m["id"] for m in answers[0].json()["data"]] == [m["id"] for m in answers[1].json()["data"]]


def test_tool_requests_like_one_server(replicas: RunningServer, smol_server: RunningServer) -> None:
    """The embedded model has no tool-call tokens: `auto` answers in text, a forced call is a 400 naming
    why; through the replicas exactly as from one server (the NeMo tool-call parsing is the same app)."""
    weather = [{"role": "user", "content": "Weather in Paris?"}]
    auto = [chat(server, weather, tools=[WEATHER_TOOL]).choices[0] for server in (replicas, smol_server)]
    assert auto[0].message.content == auto[1].message.content and auto[0].message.tool_calls is None
    assert auto[0].finish_reason == auto[1].finish_reason
    forced = {"type": "function", "function": {"name": "get_weather"}}
    body = {"model": SMOL_NAME, "messages": weather, "tools": [WEATHER_TOOL], "tool_choice": forced}
    answers = [
        httpx.post(server.v1 + "/chat/completions", json={**body, "stream": stream}, headers=server.headers,
                   timeout=60)
        for stream in (False, True)
        for server in (replicas, smol_server)
    ]  # fmt: skip
    assert [a.status_code for a in answers] == [400] * 4
    assert answers[0].json() == answers[1].json() == answers[2].json() == answers[3].json()
    assert "tool-call format" in answers[0].json()["error"]["message"]


def test_a_conversation_stays_on_its_replica_and_survives_its_death(
    replicas: RunningServer, smol_server: RunningServer
) -> None:
    home, first = served_by(replicas, TURN_1)
    turn_2 = [*TURN_1, {"role": "assistant", "content": first}, {"role": "user", "content": "And of Italy?"}]
    hits = per_replica(replicas, "mistral_nemo:prefix_cache_hits_total")
    again, second = served_by(replicas, turn_2)
    assert again == home  # the second turn went where the first is cached ...
    assert per_replica(replicas, "mistral_nemo:prefix_cache_hits_total")[home] > hits[home]  # ... and hit it
    assert second == chat(smol_server, turn_2).choices[0].message.content

    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(home)]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    turn_3 = [*turn_2, {"role": "assistant", "content": second}, {"role": "user", "content": "And of Spain?"}]
    started = time.monotonic()
    answer = chat(replicas, turn_3).choices[0].message.content  # the other replica takes over
    assert answer == chat(smol_server, turn_3).choices[0].message.content
    assert time.monotonic() - started < 60
    assert home not in per_replica(replicas, "mistral_nemo:prefix_cache_queries_total")
