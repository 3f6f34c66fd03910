"""Grammar-constrained decoding (llguidance): response_format json_object / json_schema, forced tool calls.

A random-weight NeMo-shaped model writes garbage, so valid output from it through the real engine
shows that the constraint, not the model, makes it valid. Strings and lists in the schemas below are
bounded so that every path through the grammar ends well within max_tokens.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import torch

from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.constraints import ConstraintFactory
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.outputs import CompletionOutput
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.entrypoints.server.guided import (
    GrammarCompiler,
    GuidedDecodingError,
    build_constraint,
    json_constraint,
    tool_call_constraint,
)
from mistral_nemo.model.loading import LoadedModel, load
from mistral_nemo.tokenizer import TekkenTokenizer, load_tokenizer, parse_tool_calls
from tests.gguf_fixture import smollm2_gguf_path
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"$ref": "#/$defs/city"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"],
                "additionalProperties": False,
                "$defs": {"city": {"type": "string", "maxLength": 10}},
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": -100, "maximum": 100},
                    "b": {"type": "integer", "minimum": -100, "maximum": 100},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "now"}},  # no parameters: arguments must be {}
]
SAMPLINGS = [{"temperature": 0.0}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.0, "seed": 2, "n": 3}]


@pytest.fixture(scope="module")
def small_nemo(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = write_mistral_folder(random_reference_model(seed=7), tmp_path_factory.mktemp("nemo"))
    return load(folder, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def small_compiler(small_nemo: LoadedModel) -> GrammarCompiler:
    return GrammarCompiler(small_nemo.tokenizer)


@pytest.fixture(scope="module")
def nemo_compiler(tekken: TekkenTokenizer) -> GrammarCompiler:
    return GrammarCompiler(tekken)  # the full 131072-token NeMo vocabulary


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    return load_tokenizer(smollm2_gguf_path())


@pytest.fixture(scope="module")
def smollm2_compiler(smollm2_tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(smollm2_tokenizer)


def generate(
    loaded: LoadedModel, user: str, factory: ConstraintFactory, **sampling: Any
) -> list[CompletionOutput]:
    engine = LLMEngine(loaded, EngineConfig(num_blocks=256))
    prompt = loaded.tokenizer.encode_chat([{"role": "user", "content": user}])
    engine.add_request("r", prompt, SamplingParams(constraint=factory, **{"max_tokens": 300, **sampling}))
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
    assert final is not None and final.finished
    return final.outputs


def drive(factory: ConstraintFactory, ids: list[int]) -> torch.Tensor:
    """Feed ids that the grammar must allow (never an end-of-turn id); return the mask after them."""
    constraint = factory()
    for token in ids:
        mask = constraint.allowed_tokens()
        assert mask is not None and mask[token], f"token {token} refused"
        constraint.accept(token)
    mask = constraint.allowed_tokens()
    assert mask is not None
    return mask


# ---- (a) a random-weight NeMo-shaped model through the real engine -------------------------------


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seed1", "seed2-n3"])
def test_json_schema_output_validates(
    small_nemo: LoadedModel, small_compiler: GrammarCompiler, sampling: dict[str, Any]
) -> None:
    outputs = generate(small_nemo, "Describe a person.", json_constraint(small_compiler, PERSON), **sampling)
    assert len(outputs) == sampling.get("n", 1)
    for out in outputs:
        assert out.finish_reason == "stop", out.text
        assert out.token_ids[-1] == small_nemo.tokenizer.eos_id
        jsonschema.validate(json.loads(out.text), PERSON)


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "seed1", "seed2-n3"])
def test_json_object_output_is_an_object(
    small_nemo: LoadedModel, small_compiler: GrammarCompiler, sampling: dict[str, Any]
) -> None:
    # A garbage model seldom closes a free-form string; a bias on '"' ends strings sooner (the grammar
    # still decides where a quote may go), so keys and values come out short and the object closes.
    quote = small_nemo.tokenizer.encode('"')[0]
    factory = json_constraint(small_compiler, None)
    for out in generate(small_nemo, "Any JSON.", factory, logit_bias={quote: 6.0}, **sampling):
        assert out.finish_reason == "stop"
        assert isinstance(json.loads(out.text), dict)


@pytest.mark.parametrize(("choice", "parallel"), [("any", True), ("required", False)])
def test_forced_tool_call_is_a_valid_call(
    small_nemo: LoadedModel, small_compiler: GrammarCompiler, choice: str, parallel: bool
) -> None:
    factory = tool_call_constraint(small_compiler, TOOLS, choice, parallel_tool_calls=parallel)
    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in TOOLS}
    for sampling in ({"temperature": 0.0}, {"temperature": 1.0, "seed": 3, "n": 2}):
        for out in generate(small_nemo, "What is the weather in Paris?", factory, **sampling):
            assert out.finish_reason == "stop"
            assert out.token_ids[0] == small_nemo.tokenizer.special_id("[TOOL_CALLS]")
            parsed = parse_tool_calls(small_nemo.tokenizer, out.token_ids)
            assert not parsed.malformed and parsed.content == ""
            assert len(parsed.tool_calls) >= 1 if parallel else len(parsed.tool_calls) == 1
            for call in parsed.tool_calls:
                jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_named_tool_choice_calls_only_that_function(
    small_nemo: LoadedModel, small_compiler: GrammarCompiler
) -> None:
    factory = tool_call_constraint(small_compiler, TOOLS, {"type": "function", "function": {"name": "add"}})
    for sampling in SAMPLINGS:
        for out in generate(small_nemo, "Add 2 and 3.", factory, **sampling):
            calls = parse_tool_calls(small_nemo.tokenizer, out.token_ids).tool_calls
            assert calls and {c.name for c in calls} == {"add"}
            for call in calls:
                jsonschema.validate(json.loads(call.arguments), TOOLS[1]["function"]["parameters"])


def test_max_tokens_cuts_unfinished_output(small_nemo: LoadedModel, small_compiler: GrammarCompiler) -> None:
    (out,) = generate(
        small_nemo, "Person.", json_constraint(small_compiler, PERSON), max_tokens=5, temperature=0
    )
    assert out.finish_reason == "length" and out.text.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.text)


# ---- (b) the embedded SmolLM2 (real weights, BPE vocabulary, two end-of-turn ids) -----------------


def test_smollm2_answers_in_the_schema() -> None:
    loaded = load(smollm2_gguf_path(), dtype=torch.float32, device="cpu")
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string"}, "country": {"type": "string"}},
        "required": ["capital", "country"],
        "additionalProperties": False,
    }
    factory = json_constraint(GrammarCompiler(loaded.tokenizer), schema)
    (out,) = generate(loaded, "What is the capital of France?", factory, max_tokens=40, temperature=0)
    assert out.finish_reason == "stop", out.text
    answer = json.loads(out.text)
    jsonschema.validate(answer, schema)
    print("SmolLM2 says:", answer)  # {"capital": "Paris", "country": "France"} at the time of writing


# ---- (c) the mask itself -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["nemo", "smollm2"])
def test_end_of_turn_only_when_complete_and_then_alone(which: str, request: pytest.FixtureRequest) -> None:
    compiler = request.getfixturevalue(f"{which}_compiler")
    tok = request.getfixturevalue("tekken" if which == "nemo" else "smollm2_tokenizer")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    factory = json_constraint(compiler, schema)
    ids = tok.encode('{"a": 12}')
    eog = sorted(tok.eog_ids)
    specials = [i for i in range(tok.vocab_size) if tok.is_special(i)]
    for cut in range(len(ids)):  # every unfinished prefix: no end-of-turn, and never a control token
        mask = drive(factory, ids[:cut])
        assert not mask[eog].any() and not mask[specials].any()
    mask = drive(factory, ids)
    assert mask[eog].all() and int(mask.sum()) == len(eog)


def test_a_top_level_number_may_end_or_go_on(nemo_compiler: GrammarCompiler, tekken: TekkenTokenizer) -> None:
    mask = drive(json_constraint(nemo_compiler, {"type": "integer"}), tekken.encode("12"))
    assert mask[tekken.eos_id] and mask[tekken.encode("3")[0]]


def test_tool_call_grammar_starts_with_the_control_token(
    nemo_compiler: GrammarCompiler, tekken: TekkenTokenizer
) -> None:
    factory = tool_call_constraint(nemo_compiler, TOOLS, "any", parallel_tool_calls=False)
    first = drive(factory, [])
    assert first.nonzero().flatten().tolist() == [tekken.special_id("[TOOL_CALLS]")]
    body = '[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "id": "a1B2c3D4e"}]'
    ids = [tekken.special_id("[TOOL_CALLS]"), *tekken.encode(body)]
    assert drive(factory, ids).nonzero().flatten().tolist() == [tekken.eos_id]
    too_long = '[{"name": "get_weather", "arguments": {"city": "Paris, France"'  # the $ref'd maxLength 10
    with pytest.raises(AssertionError, match="refused"):
        drive(factory, [ids[0], *tekken.encode(too_long)])


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "foo"}, "['type'] is not a valid JSON schema"),
        (
            {"properties": {"a": {"minLength": -1}}},
            "['properties']['a']['minLength'] is not a valid JSON schema",
        ),
        ([1, 2], "must be a JSON object"),
        ({"not": {"type": "string"}}, "unsupported schema for constrained decoding: Unimplemented keys"),
        ({"properties": {"a": {"$ref": "#/$defs/missing"}}}, "unsupported schema"),
        ({"type": "string", "pattern": "(("}, "['pattern'] is not a valid JSON schema"),
        ({"type": "string", "format": "no-such-format"}, "unsupported schema.*Unknown format"),
    ],
)
def test_invalid_schema_is_a_clear_value_error(
    small_compiler: GrammarCompiler, schema: Any, message: str
) -> None:
    with pytest.raises(GuidedDecodingError, match=message.replace("[", r"\[").replace("(", r"\(")):
        json_constraint(small_compiler, schema)


def test_bad_tool_requests_are_clear_value_errors(
    small_compiler: GrammarCompiler, smollm2_compiler: GrammarCompiler
) -> None:
    cases = [
        (small_compiler, TOOLS, {"type": "function", "function": {"name": "nope"}}, "not among the tools"),
        (small_compiler, TOOLS, "auto", "does not force a call"),
        (small_compiler, [], "any", "non-empty tools list"),
        (small_compiler, [{"type": "function", "function": {}}], "any", r"tools\[0\] needs a function"),
        (smollm2_compiler, TOOLS, "any", "this model has no tool-call format"),
    ]
    for compiler, tools, choice, message in cases:
        with pytest.raises(GuidedDecodingError, match=message):
            tool_call_constraint(compiler, tools, choice)


def test_build_constraint_maps_the_chat_request(small_compiler: GrammarCompiler) -> None:
    def body(**fields: Any) -> SimpleNamespace:
        base = {"tools": None, "tool_choice": None, "parallel_tool_calls": None, "response_format": None}
        return SimpleNamespace(**{**base, **fields})

    assert build_constraint(body(), small_compiler) is None
    assert build_constraint(body(tools=TOOLS, tool_choice="auto"), small_compiler) is None
    assert build_constraint(body(response_format={"type": "text"}), small_compiler) is None
    forced = build_constraint(body(tools=TOOLS, tool_choice="any", parallel_tool_calls=False), small_compiler)
    assert forced is not None and drive(forced, []).nonzero().flatten().tolist() == [9]
    schema_fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for fmt in ({"type": "json_object"}, schema_fmt):
        factory = build_constraint(body(response_format=fmt), small_compiler)
        assert factory is not None and drive(factory, [])[small_compiler.eog_ids].sum() == 0
    with pytest.raises(GuidedDecodingError, match="json_schema"):
        build_constraint(body(response_format={"type": "json_schema", "json_schema": 3}), small_compiler)
