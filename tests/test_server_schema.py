"""schemathesis over the served /openapi.json: generated requests for every operation, none a 5xx.

The schema carries the real request bodies (the pydantic models of protocol.py), so the cases
are valid and invalid chat / completion / tokenizer bodies, sent over real HTTP to the embedded
model. Bounded: a few examples per operation, and generation kept short (max_tokens, n and the
number of prompts are capped after generation, so a case costs milliseconds of decoding).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.entrypoints.server import ServerConfig
from tests.server_fixture import API_KEY, SMOL_NAME, RunningServer, embedded_model, serve

EXAMPLES = 10  # per operation and mode (the issue-11 campaign ran 1,941 cases; this is the CI bound)
CAPS = {
    "max_tokens": 3,
    "max_completion_tokens": 3,
    "min_tokens": 3,
    "n": 2,
    "logprobs": 5,
    "top_logprobs": 5,
}


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[RunningServer]:
    # A small context bounds what a request without max_tokens generates (the room left in it).
    engine = EngineConfig(kv_cache_memory=64 << 20, max_model_len=96, max_num_seqs=8, max_queue=64)
    config = ServerConfig(api_key=API_KEY, served_model_names=[SMOL_NAME], max_body_bytes=1 << 20)
    yield from serve(embedded_model(), engine, config)


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: RunningServer) -> Any:
    return schemathesis.openapi.from_url(fuzzed_server.base_url + "/openapi.json")


def _bounded(body: Any) -> Any:
    """Keep a generated body cheap to answer without changing which fields it has."""
    if not isinstance(body, dict):
        return body
    for name, cap in CAPS.items():
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[name] = cap
    if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 4:
        body["prompt"] = body["prompt"][:4]
    return body


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_is_a_server_error(
    api_schema: Any, fuzzed_server: RunningServer, mode: GenerationMode
) -> None:
    """Positive cases fit the schema; negative ones break it and must be refused with a 4xx."""
    checks = [not_a_server_error] + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/tokenize"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to break in a request without a body or parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: Any) -> None:
            case.body = _bounded(case.body)
            case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"}, checks=checks, timeout=60)

        check()
