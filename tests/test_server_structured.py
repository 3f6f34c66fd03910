"""vLLM's structured-output request fields on the chat endpoint, over real HTTP: structured_outputs,
guided_json, guided_choice, guided_regex, guided_grammar constrain the answer (the engine's code, as
LLM.chat / SamplingParams.structured_outputs); bad or conflicting ones are a 400 naming the field."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from tests.server_fixture import SMOL_NAME, RunningServer, smol_server

__all__ = ["smol_server"]

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


def chat(server: RunningServer, **fields: Any) -> Any:
    body = {
        "model": SMOL_NAME,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "max_tokens": 40,
        "temperature": 0,
        **fields,
    }
    with server.client() as client:
        return client.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"guided_json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
        (
            {"structured_outputs": {"json": SCHEMA}},
            lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None,
        ),
        ({"guided_choice": ["sunny", "rainy"]}, lambda t: t in ("sunny", "rainy")),
        ({"structured_outputs": {"choice": ["a b", "c"]}}, lambda t: t in ("a b", "c")),
        ({"guided_regex": r"[0-9]{2} degrees"}, lambda t: re.fullmatch(r"[0-9]{2} degrees", t)),
        ({"guided_grammar": 'start: "hot" | "cold"\n'}, lambda t: t in ("hot", "cold")),
    ],
)
def test_structured_output_fields_constrain_the_answer(
    smol_server: RunningServer, fields: dict, check: Any
) -> None:
    response = chat(smol_server, **fields)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert check(choice["message"]["content"]), choice["message"]["content"]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "one of"),
        ({"guided_choice": []}, "guided_choice", "non-empty"),
        ({"structured_outputs": {"pattern": "a"}}, "structured_outputs", "unsupported"),
        ({"guided_grammar": "start: ("}, "guided_grammar", "unsupported"),
        ({"guided_json": SCHEMA, "response_format": {"type": "json_object"}}, "guided_json", "combined"),
    ],
)
def test_bad_structured_output_fields_are_400(
    smol_server: RunningServer, fields: dict, param: str, words: str
) -> None:
    response = chat(smol_server, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


@pytest.mark.parametrize("name", ["guided_json", "guided_choice", "structured_outputs"])
def test_structured_output_fields_on_completions_are_400_not_ignored(
    smol_server: RunningServer, name: str
) -> None:
    values = {"guided_json": SCHEMA, "guided_choice": ["a", "b"], "structured_outputs": {"choice": ["a"]}}
    value = values[name]
    body = {"model": SMOL_NAME, "prompt": "Weather:", "max_tokens": 4, name: value}
    with smol_server.client() as client:
        response = client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == name and "/v1/chat/completions" in error["message"], error
