"""Tool calls in generated ids: round trips through the prompt encoder, streaming, bad output, ids."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mistral_nemo.tokenizer import MistralChatEncoder, ToolCallIdMap, ToolCallParser, parse_tool_calls
from mistral_nemo.tokenizer.chat_messages import ToolCall

MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
ALNUM = string.ascii_letters + string.digits

# ---- strategies --------------------------------------------------------------------------------

names = st.from_regex(r"\A[a-zA-Z0-9_-]{1,64}\Z")
mistral_ids = st.text(alphabet=ALNUM, min_size=9, max_size=9)
_pieces = st.one_of(
    st.characters(blacklist_categories=("Cs",)),
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            '"',
            "\\",
            '\\"',
            '"}',
            '"}]',
            "}, {",
            '{"name": "x", "arguments": {}}',
            "[TOOL_CALLS]",
            "</s>",
            "\n",
            "你好",
            "مرحبا",
            "😀",
            "👨‍👩‍👧",
            ",",
            ":",
        ]
    ),
)
tricky_text = st.lists(_pieces, max_size=12).map("".join)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=15,
)
arguments = st.dictionaries(tricky_text, json_values, max_size=5)
calls_strategy = st.lists(st.tuples(names, arguments, mistral_ids), min_size=1, max_size=4)

HYPOTHESIS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- helpers -----------------------------------------------------------------------------------


def generation(tekken, calls: list[tuple[str, dict[str, Any], str]], text_before: str = "") -> list[int]:
    """What the model writes: optional text, [TOOL_CALLS] and the list, </s>."""
    encoded = MistralChatEncoder(tekken).encode_tool_calls(
        [ToolCall(id=call_id, name=name, arguments=json.dumps(args)) for name, args, call_id in calls]
    )
    return [*tekken.encode(text_before), *encoded, tekken.eos_id]


def raw_output(tekken, text: str, eos: bool = True) -> list[int]:
    """[TOOL_CALLS] followed by whatever text the model wrote."""
    return [tekken.special_id("[TOOL_CALLS]"), *tekken.encode(text), *([tekken.eos_id] if eos else [])]


def closing_tokens(tekken, ids: list[int]) -> list[int]:
    """For each object of the JSON list after [TOOL_CALLS], the index of the token holding its closing brace.

    Worked out from the token bytes and json.JSONDecoder, independently of the parser under test.
    """
    start = ids.index(tekken.special_id("[TOOL_CALLS]")) + 1
    ends, total = [], 0
    for token in ids[start:]:
        if tekken.is_special(token):
            break
        total += len(tekken.id_to_bytes(token))
        ends.append(total)
    payload = b"".join(tekken.id_to_bytes(t) for t in ids[start : start + len(ends)]).decode()
    decoder, pos, closing = json.JSONDecoder(), payload.index("[") + 1, []
    while True:
        while payload[pos] in " ,\n":
            pos += 1
        if payload[pos] == "]":
            break
        _, pos = decoder.raw_decode(payload, pos)
        byte_end = len(payload[:pos].encode())  # the closing brace is byte byte_end - 1
        closing.append(start + next(k for k, end in enumerate(ends) if end >= byte_end))
    return closing


# ---- (a) round trip ----------------------------------------------------------------------------


@HYPOTHESIS
@given(calls=calls_strategy)
def test_round_trip(tekken, calls):
    result = parse_tool_calls(tekken, generation(tekken, calls))
    assert not result.malformed
    assert result.content == ""
    assert [(c.name, json.loads(c.arguments), c.id) for c in result.tool_calls] == calls


def test_round_trip_example(tekken):
    calls = [
        ("get_weather", {"city": "東京", "note": 'say "hi" \\ {x} [y]'}, "abcDEF123"),
        ("search-web", {"q": "}]", "nested": {"a": [1, {"b": None}], "c": -0.5}}, "Z9y8X7w6V"),
    ]
    result = parse_tool_calls(tekken, generation(tekken, calls, text_before="Let me check."))
    assert not result.malformed
    assert result.content == "Let me check."
    assert [(c.name, json.loads(c.arguments), c.id) for c in result.tool_calls] == calls


# ---- (b) streaming -----------------------------------------------------------------------------


def _stream(tekken, ids: list[int]) -> tuple[ToolCallParser, list[tuple[int, str, list]]]:
    parser = ToolCallParser(tekken)
    steps = []
    for i, token in enumerate(ids):
        events = parser.add(token)
        steps.append((i, events.text, events.calls))
    return parser, steps


@HYPOTHESIS
@given(calls=calls_strategy, text_before=tricky_text)
def test_stream_emits_each_call_where_its_object_closes(tekken, calls, text_before):
    ids = generation(tekken, calls, text_before)
    marker = ids.index(tekken.special_id("[TOOL_CALLS]"))
    expected_at = closing_tokens(tekken, ids)
    assert len(expected_at) == len(calls)

    parser, steps = _stream(tekken, ids)
    emitted_at = [i for i, _, step_calls in steps for _ in step_calls]
    assert emitted_at == expected_at  # not before, not later, one call each
    emitted = [c for _, _, step_calls in steps for c in step_calls]
    assert [(c.name, json.loads(c.arguments), c.id) for c in emitted] == calls

    # Text before [TOOL_CALLS] streams as text, each character as soon as its bytes are in.
    streamed = ""
    for i, text, _ in steps[:marker]:
        streamed += text
        so_far = b"".join(tekken.id_to_bytes(t) for t in ids[: i + 1])
        assert streamed == so_far.decode("utf-8", errors="ignore")  # only an unfinished character waits
    assert streamed + steps[marker][1] == text_before
    # Nothing of the JSON leaks out as text, and the end of the stream adds nothing.
    assert all(text == "" for _, text, _ in steps[marker + 1 :])
    final = parser.finish()
    assert final.text == "" and final.calls == []
    assert not parser.malformed and not parser.in_tool_calls


def test_stream_in_tool_calls_flag(tekken):
    ids = generation(tekken, [("f", {"a": 1}, "abcdefghi")], text_before="Hi")
    parser = ToolCallParser(tekken)
    marker = ids.index(tekken.special_id("[TOOL_CALLS]"))
    flags = []
    for token in ids:
        parser.add(token)
        flags.append(parser.in_tool_calls)
    assert not any(flags[:marker])
    assert all(flags[marker:-2])
    assert flags[-2:] == [False, False]  # the last JSON token holds "]": the list is closed


# ---- (c) model output that is not a clean call list --------------------------------------------

MALFORMED = [
    pytest.param('[{"name": "f", "arguments": {"a": 1', id="truncated-in-arguments"),
    pytest.param('[{"name": "f", "arguments": {}}, {"name": "g"', id="truncated-second-call"),
    pytest.param('[{"name": "f", "arguments": {}}', id="list-never-closed"),
    pytest.param('[{"arguments": {"a": 1}}]', id="call-without-name"),
    pytest.param('[{"name": "", "arguments": {}}]', id="empty-name"),
    pytest.param('[{"name": 3, "arguments": {}}]', id="name-not-a-string"),
    pytest.param("hello, I will not call anything", id="garbage"),
    pytest.param('"just a string"', id="json-string"),
    pytest.param("42", id="json-number"),
    pytest.param("[1, 2]", id="list-of-non-objects"),
    pytest.param('[{"name": "f", "arguments": {"a": 1}}}]', id="extra-brace"),
    pytest.param('[{"name": "f", "arguments": {"a": tru}}]', id="invalid-json-literal"),
    pytest.param("", id="nothing-after-marker"),
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_output_comes_back_as_text(tekken, text):
    for eos in (True, False):
        ids = raw_output(tekken, text, eos=eos)
        result = parse_tool_calls(tekken, ids)  # never raises on model output
        assert result.malformed
        assert result.tool_calls == []
        assert result.content == tekken.decode(ids) == text


@HYPOTHESIS
@given(calls=calls_strategy, data=st.data())
def test_truncated_generation_is_malformed(tekken, calls, data):
    ids = generation(tekken, calls)[:-1]  # without </s>
    # Cut anywhere before the token that holds the list's closing "]".
    cut = data.draw(
        st.integers(min_value=ids.index(tekken.special_id("[TOOL_CALLS]")) + 1, max_value=len(ids) - 1)
    )
    truncated = ids[:cut]
    result = parse_tool_calls(tekken, truncated)
    assert result.malformed
    assert result.tool_calls == []
    assert result.content == tekken.decode(truncated)


@HYPOTHESIS
@given(text=tricky_text)
def test_no_tool_calls_is_all_text(tekken, text):
    ids = [*tekken.encode(text), tekken.eos_id]
    result = parse_tool_calls(tekken, ids)
    assert not result.malformed
    assert result.tool_calls == []
    assert result.content == text


def test_missing_or_invalid_ids_get_fresh_ids(tekken):
    text = (
        '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}, "id": "call_123"}, '
        '{"name": "c", "arguments": {}, "id": null}, {"name": "d", "arguments": {}, "id": "abcDEF123"}]'
    )
    fresh = iter(["fresh0001", "fresh0002", "fresh0003"])
    result = parse_tool_calls(tekken, raw_output(tekken, text), new_id=lambda: next(fresh))
    assert not result.malformed
    assert [(c.name, c.id) for c in result.tool_calls] == [
        ("a", "fresh0001"),
        ("b", "fresh0002"),
        ("c", "fresh0003"),
        ("d", "abcDEF123"),
    ]
    # The default source of ids: random 9-character ids, distinct.
    default = parse_tool_calls(tekken, raw_output(tekken, text))
    new_ids = [c.id for c in default.tool_calls[:3]]
    assert all(MISTRAL_ID.match(i) for i in new_ids)
    assert len(set(new_ids)) == 3


def test_bare_object_without_list_brackets(tekken):
    ids = raw_output(tekken, '{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}')
    result = parse_tool_calls(tekken, ids)
    assert not result.malformed
    assert [(c.name, json.loads(c.arguments), c.id) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"}, "abcDEF123")
    ]
    assert result.content == ""


def test_string_arguments_and_missing_arguments(tekken):
    text = '[{"name": "f", "arguments": "{\\"a\\": 1}"}, {"name": "g"}]'
    result = parse_tool_calls(tekken, raw_output(tekken, text), new_id=lambda: "abcdefghi")
    assert not result.malformed
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", '{"a": 1}'), ("g", "{}")]


def test_streamed_malformed_output_is_text_and_no_exception(tekken):
    ids = raw_output(tekken, '[{"name": "f", "arguments": {}}, oops]')
    parser = ToolCallParser(tekken)
    pieces = [parser.add(t) for t in ids]
    pieces.append(parser.finish())
    assert parser.malformed
    # The first call closed cleanly and was handed out; the junk after it comes back as text.
    assert [c.name for p in pieces for c in p.calls] == ["f"]
    assert "".join(p.text for p in pieces) == ", oops]"
    # The whole-generation API is stricter: malformed means no calls, all text.
    result = parse_tool_calls(tekken, ids)
    assert result.malformed and result.tool_calls == [] and result.content == tekken.decode(ids)


# ---- (d) ToolCallIdMap -------------------------------------------------------------------------


@given(valid=mistral_ids)
def test_valid_ids_pass_through(valid):
    id_map = ToolCallIdMap()
    assert id_map.to_mistral(valid) == valid
    assert id_map.to_client(valid) == valid


@given(client_id=st.text())
def test_other_ids_map_deterministically(client_id):
    assume(not MISTRAL_ID.match(client_id))
    first, second = ToolCallIdMap().to_mistral(client_id), ToolCallIdMap().to_mistral(client_id)
    assert first == second
    assert MISTRAL_ID.match(first)
    assert first != client_id


@given(client_ids=st.lists(st.text(max_size=40) | mistral_ids, unique=True, max_size=30))
def test_distinct_ids_stay_distinct_and_invert(client_ids):
    id_map = ToolCallIdMap()
    mapped = [id_map.to_mistral(c) for c in client_ids]
    assert all(MISTRAL_ID.match(m) for m in mapped)
    assert len(set(mapped)) == len(client_ids)
    assert [id_map.to_client(m) for m in mapped] == client_ids
    assert [id_map.to_mistral(c) for c in client_ids] == mapped  # asking again gives the same
    assert len(id_map) == len(client_ids)


def test_known_client_ids():
    id_map = ToolCallIdMap()
    openai = id_map.to_mistral("call_abc123")
    assert MISTRAL_ID.match(openai)
    assert ToolCallIdMap().to_mistral("call_abc123") == openai  # stable across requests
    uuid_id = id_map.to_mistral("9b2f7c1e-4a7d-4c8e-9f1a-2b3c4d5e6f70")
    assert MISTRAL_ID.match(uuid_id) and uuid_id != openai
    assert id_map.to_client(openai) == "call_abc123"
    assert id_map.to_client("unknown99") == "unknown99"


def test_valid_id_that_clashes_with_a_mapped_one():
    """A valid id equal to another id's mapping cannot pass through: it gets its own id."""
    id_map = ToolCallIdMap()
    derived = id_map.to_mistral("call_abc123")
    again = id_map.to_mistral(derived)
    assert again != derived and MISTRAL_ID.match(again)
    assert id_map.to_client(derived) == "call_abc123"
    assert id_map.to_client(again) == derived
