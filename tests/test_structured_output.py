"""Structured output offline (LLM.chat / LLM.generate), with the same grammars the server uses:
JSON schema answers validate with jsonschema, choices / regexes / Lark grammars match, and forced tool
calls parse with the tokenizer's own tool-call parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from mistral_nemo import LLM, SamplingParams
from mistral_nemo.engine.sampling_params import SamplingParamsError, StructuredOutputsParams
from mistral_nemo.engine.structured_output import GuidedDecodingError
from mistral_nemo.model.loading import load
from tests.gguf_fixture import smollm2_gguf_path
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 10}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "now"}},
]
USER = [{"role": "user", "content": "Tell me about a person, and the weather in Paris."}]


@pytest.fixture(scope="module")
def smollm2() -> LLM:
    return LLM(load(smollm2_gguf_path(), dtype=torch.float32, device="cpu"), kv_cache_memory="32MiB")


@pytest.fixture(scope="module")
def small_nemo(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    folder: Path = write_mistral_folder(random_reference_model(seed=7), tmp_path_factory.mktemp("nemo"))
    return LLM(folder, dtype="float32", device="cpu", num_blocks=64)


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 3}])
def test_chat_json_schema_answer_validates(smollm2: LLM, sampling: dict) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    out = smollm2.chat(USER, SamplingParams(max_tokens=80, **sampling), response_format=fmt, use_tqdm=False)
    result = out[0].outputs[0]
    assert result.finish_reason == "stop"
    jsonschema.validate(json.loads(result.text), PERSON)


def test_chat_json_object_is_an_object(smollm2: LLM) -> None:
    out = smollm2.chat(
        USER,
        SamplingParams(max_tokens=60, temperature=0),
        response_format={"type": "json_object"},
        use_tqdm=False,
    )
    assert isinstance(json.loads(out[0].outputs[0].text), dict)


def test_choice_regex_and_grammar_through_sampling_params(smollm2: LLM) -> None:
    choices = ["Paris", "Lyon", "New York"]
    cases = [
        (StructuredOutputsParams(choice=choices), lambda text: text in choices),
        (
            StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{2}"),
            lambda text: re.fullmatch(r"[0-9]{3}-[a-z]{2}", text),
        ),
        (
            StructuredOutputsParams(grammar='start: "yes" | "no" | "maybe " NUM\nNUM: /[0-9]/\n'),
            lambda text: re.fullmatch(r"yes|no|maybe [0-9]", text),
        ),
    ]
    prompts = ["The capital of France is", "A code:", "Answer:"]
    for spec, check in cases:
        params = [
            SamplingParams(max_tokens=20, temperature=t, seed=1, structured_outputs=spec) for t in (0.0, 1.0)
        ]
        outs = smollm2.generate([prompts[0], prompts[1]], params, use_tqdm=False)
        for out in outs:
            assert check(out.outputs[0].text), (spec, out.outputs[0].text)
            assert out.outputs[0].finish_reason == "stop"


def test_structured_outputs_needs_exactly_one_field() -> None:
    with pytest.raises(SamplingParamsError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["a"])
    with pytest.raises(SamplingParamsError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(SamplingParamsError, match="choice"):
        StructuredOutputsParams(choice=[])


def test_bad_grammar_and_schema_are_named(smollm2: LLM) -> None:
    with pytest.raises(GuidedDecodingError):
        smollm2.generate("x", SamplingParams(structured_outputs=StructuredOutputsParams(grammar="start: (")))
    with pytest.raises(GuidedDecodingError, match="not a valid JSON schema"):
        smollm2.chat(USER, response_format={"type": "json_schema", "json_schema": {"schema": {"type": 5}}})
    with pytest.raises(GuidedDecodingError, match="response_format type"):
        smollm2.chat(USER, response_format={"type": "xml"})
    with pytest.raises(ValueError, match="needs tools"):
        smollm2.chat(USER, tool_choice="any")


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 5}])
def test_tool_choice_any_forces_a_call(small_nemo: LLM, sampling: dict) -> None:
    out = small_nemo.chat(USER, SamplingParams(max_tokens=120, **sampling), tools=TOOLS, tool_choice="any",
                          use_tqdm=False)[0].outputs[0]  # fmt: skip
    assert out.tool_calls, out.text
    for call in out.tool_calls:
        assert call["function"]["name"] in ("get_weather", "now")
        json.loads(call["function"]["arguments"])


def test_named_tool_choice_yields_exactly_one_call(small_nemo: LLM) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(3):
        params = SamplingParams(max_tokens=120, temperature=1.0, seed=seed)
        out = small_nemo.chat(USER, params, tools=TOOLS, tool_choice=named, use_tqdm=False)[0].outputs[0]
        assert out.tool_calls is not None and len(out.tool_calls) == 1
        call = out.tool_calls[0]["function"]
        assert call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), TOOLS[0]["function"]["parameters"])


def test_tool_choice_none_never_calls(small_nemo: LLM) -> None:
    tool_calls_id = small_nemo.get_tokenizer().special_id("[TOOL_CALLS]")
    # Without the ban, a random model given this bias would open a call at once.
    params = SamplingParams(max_tokens=8, temperature=0, logit_bias={tool_calls_id: 100.0})
    forced = small_nemo.chat(USER, params, tools=TOOLS, use_tqdm=False)[0].outputs[0]
    assert forced.token_ids[0] == tool_calls_id
    out = small_nemo.chat(USER, params, tools=TOOLS, tool_choice="none", use_tqdm=False)[0].outputs[0]
    assert tool_calls_id not in out.token_ids and out.tool_calls is None


def test_tokenizers_implement_the_protocol_with_their_tool_call_token(small_nemo: LLM, smollm2: LLM) -> None:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from mistral_nemo.tokenizer import Tokenizer

    tekken, bpe = small_nemo.get_tokenizer(), smollm2.get_tokenizer()
    assert isinstance(tekken, Tokenizer) and isinstance(bpe, Tokenizer)
    reference = MistralTokenizer.v3(is_tekken=True).instruct_tokenizer.tokenizer
    assert tekken.tool_calls_id == reference.get_control_token("[TOOL_CALLS]") == 9
    assert bpe.tool_calls_id is None  # SmolLM2 has no tool-call format
