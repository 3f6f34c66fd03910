"""The v3-Tekken chat format against mistral_common (serving mode), token for token.

The reference is `MistralTokenizer.encode_chat_completion` on the same OpenAI-style dicts.
Where it accepts, our ids must be equal; where it refuses, we must raise ChatFormatError with
a message that names the offending message. The only differences allowed are tested apart:
client tool-call ids of any shape (mapped to 9-character ids), an assistant message with ""
content beside its tool calls, and a tool function without "parameters".
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from mistral_common.exceptions import (
    InvalidToolException,
    InvalidToolSchemaException,
    MistralCommonException,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from pydantic import ValidationError

from mistral_nemo.tokenizer import (
    ChatFormatError,
    MistralChatEncoder,
    SpecialTokenPolicy,
    ToolCallIdMap,
    parse_tool_calls,
)
from mistral_nemo.tokenizer.chat_messages import ToolCall
from tests.conversations import (
    DEFECTS,
    Case,
    cases,
    seeded_cases,
    valid_case,
    with_client_ids,
)

REJECTED = (MistralCommonException, ValidationError, ValueError, AssertionError)
EMPTY_OBJECT_SCHEMA = {"type": "object", "properties": {}}


# ---- helpers -----------------------------------------------------------------------------------


def reference_ids(reference, messages: list[dict], tools: list[dict] | None) -> list[int]:
    request = ChatCompletionRequest(model="m", messages=copy.deepcopy(messages), tools=copy.deepcopy(tools))
    return reference.encode_chat_completion(request).tokens


def reference_outcome(reference, messages, tools) -> tuple[list[int] | None, Exception | None]:
    try:
        return reference_ids(reference, messages, tools), None
    except REJECTED as exc:
        return None, exc


def ours_outcome(tekken, messages, tools) -> tuple[list[int] | None, ChatFormatError | None]:
    try:
        return tekken.encode_chat(copy.deepcopy(messages), copy.deepcopy(tools)), None
    except ChatFormatError as exc:
        return None, exc


def keep(tekken, ids: list[int]) -> str:
    return tekken.decode(ids, SpecialTokenPolicy.KEEP)


def _reference_blames_a_message(exc: Exception) -> bool | None:
    """True: the reference's complaint is about one message; False: about the tools; None: neither."""
    if isinstance(exc, ValidationError):
        roots = {err["loc"][0] for err in exc.errors() if err["loc"]}
        return "messages" in roots if roots else None
    if isinstance(exc, (InvalidToolSchemaException, InvalidToolException)):
        return False
    if "at least one message" in str(exc):
        return None
    return True


def check_case(tekken, reference, case: Case, stats: Counter) -> str | None:
    """Compare one case; return a description of the mismatch, or None."""
    ref_ids, ref_exc = reference_outcome(reference, case.messages, case.tools)
    our_ids, our_exc = ours_outcome(tekken, case.messages, case.tools)
    if ref_exc is None:
        stats["accepted"] += 1
        stats[f"accepted:{case.defect}"] += 1
        if our_exc is not None:
            return f"reference accepts, we refuse ({our_exc}); reference: {keep(tekken, ref_ids)!r}"
        if our_ids != ref_ids:
            return (
                f"ids differ\n  ours:      {keep(tekken, our_ids)!r}\n  reference: {keep(tekken, ref_ids)!r}"
            )
        return None
    stats["rejected"] += 1
    stats[f"rejected:{case.defect}"] += 1
    if our_exc is None:
        return (
            f"reference refuses ({type(ref_exc).__name__}: {str(ref_exc)[:300]}), we accept: "
            f"{keep(tekken, our_ids)!r}"
        )
    message = str(our_exc)
    if not message.strip():
        return "empty error message"
    about_message = _reference_blames_a_message(ref_exc)
    if about_message:
        index = our_exc.message_index
        if index is None or not 0 <= index < len(case.messages) or f"messages[{index}]" not in message:
            return f"error does not name a message: {message!r} (reference: {ref_exc})"
    elif about_message is False and "tools[" not in message:
        return f"error does not name the tool: {message!r} (reference: {ref_exc})"
    return None


def _report(failures: list[tuple[Case, str]]) -> str:
    shown = "\n\n".join(f"{problem}\ncase: {case.describe()}" for case, problem in failures[:3])
    return f"{len(failures)} mismatching case(s); first ones:\n{shown}"


# ---- (a) generated conversations ---------------------------------------------------------------


@pytest.mark.slow
def test_generated_conversations_match_reference(tekken, reference):
    stats: Counter = Counter()
    failures = []
    generated = seeded_cases(seed=20240718, count=600)
    for case in generated:
        rejected_before = stats["rejected"]
        problem = check_case(tekken, reference, case, stats)
        if problem is not None:
            failures.append((case, problem))
        elif case.defect is None and stats["rejected"] > rejected_before:
            failures.append((case, "meant to be valid (no defect injected), but mistral_common refuses it"))
    assert not failures, _report(failures)

    assert stats["accepted"] + stats["rejected"] == len(generated) == 600
    assert stats["accepted"] >= 400, stats
    assert stats["rejected"] >= 60, stats
    # Every kind of injected defect occurred and was refused by both sides.
    for defect in DEFECTS:
        assert stats[f"rejected:{defect}"] >= 1, (defect, stats)
        assert stats[f"accepted:{defect}"] == 0, (defect, stats)


def test_generated_conversations_property(tekken, reference):
    """The same generator under hypothesis: fresh cases each run, and failures shrink."""
    stats: Counter = Counter()

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(case=cases())
    def check(case: Case) -> None:
        problem = check_case(tekken, reference, case, stats)
        assert problem is None, f"{problem}\ncase: {case.describe()}"

    check()
    assert stats["accepted"] >= 50, stats
    assert stats["rejected"] >= 5, stats


# ---- (a) the allowed differences ---------------------------------------------------------------


def _cases_with_tool_calls(seed: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    found = []
    while len(found) < count:
        case = valid_case(rng)
        if any(m.get("tool_calls") for m in case.messages):
            found.append(case)
    return found


def _mapped_like_ours(case: Case) -> tuple[Case, ToolCallIdMap]:
    """The case with ids replaced by ToolCallIdMap results, visited in the encoder's order."""
    id_map = ToolCallIdMap()
    mapped = copy.deepcopy(case)
    for message in mapped.messages:
        for call in message.get("tool_calls") or []:
            call["id"] = id_map.to_mistral(call["id"])
        if message.get("tool_call_id") is not None:
            message["tool_call_id"] = id_map.to_mistral(message["tool_call_id"])
    return mapped, id_map


def test_client_tool_call_ids_are_mapped(tekken, reference):
    rng = random.Random(7)
    checked = 0
    for case in _cases_with_tool_calls(seed=11, count=120):
        client = with_client_ids(case, rng)
        mapped, expected_map = _mapped_like_ours(client)
        # mistral_common refuses the client ids themselves...
        _, ref_exc = reference_outcome(reference, client.messages, client.tools)
        assert ref_exc is not None, client.describe()
        # ...we accept them and write what mistral_common writes for the mapped ids.
        encoded = MistralChatEncoder(tekken).encode(copy.deepcopy(client.messages), client.tools)
        expected = reference_ids(reference, mapped.messages, mapped.tools)
        assert encoded.ids == expected, (
            f"\n  ours:      {keep(tekken, encoded.ids)!r}\n  reference: {keep(tekken, expected)!r}"
        )
        for message in client.messages:
            for call in message.get("tool_calls") or []:
                mistral_id = expected_map.to_mistral(call["id"])
                assert encoded.tool_call_ids.to_mistral(call["id"]) == mistral_id
                assert encoded.tool_call_ids.to_client(mistral_id) == call["id"]
                assert f'"id": "{mistral_id}"' in keep(tekken, encoded.ids)
        checked += 1
    assert checked == 120


def _weather_call(call_id: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }


def _tool_call_turn(content: Any, absent: bool = False) -> list[dict[str, Any]]:
    calls = {"role": "assistant", "tool_calls": [_weather_call("abcDEF123"), _weather_call("XYZ987abc")]}
    if not absent:
        calls["content"] = content
    return [
        {"role": "user", "content": "Weather in Paris, twice?"},
        calls,
        {"role": "tool", "tool_call_id": "abcDEF123", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "XYZ987abc", "content": "sunny"},
    ]


def test_empty_string_content_beside_tool_calls(tekken, reference):
    expected = reference_ids(reference, _tool_call_turn(None), None)
    for variant in (_tool_call_turn(""), _tool_call_turn([]), _tool_call_turn(None, absent=True)):
        assert tekken.encode_chat(variant) == expected
    # mistral_common accepts "" too (it is no content): then the ids must agree with it as well.
    ref_ids, ref_exc = reference_outcome(reference, _tool_call_turn(""), None)
    if ref_exc is None:
        assert ref_ids == expected
    # Over generated conversations: "" beside every tool call list == None.
    for case in _cases_with_tool_calls(seed=5, count=40):
        with_empty = copy.deepcopy(case.messages)
        with_none = copy.deepcopy(case.messages)
        for a, b in zip(with_empty, with_none, strict=True):
            if a.get("tool_calls"):
                a["content"], b["content"] = "", None
        assert tekken.encode_chat(with_empty, case.tools) == reference_ids(reference, with_none, case.tools)


@pytest.mark.parametrize("missing", ["absent", "null"])
def test_tool_without_parameters(tekken, reference, missing):
    function: dict[str, Any] = {"name": "get_time", "description": "Current time"}
    if missing == "null":
        function["parameters"] = None
    tools = [{"type": "function", "function": function}]
    messages = [{"role": "user", "content": "What time is it?"}]
    _, ref_exc = reference_outcome(reference, messages, tools)
    assert ref_exc is not None  # mistral_common needs "parameters"
    filled = [{"type": "function", "function": {**function, "parameters": EMPTY_OBJECT_SCHEMA}}]
    ids = tekken.encode_chat(messages, tools)
    assert ids == reference_ids(reference, messages, filled)
    assert '"parameters": {"type": "object", "properties": {}}' in keep(tekken, ids)


# ---- (b) exact prompts -------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_JSON = (
    '[{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]'
)


def U(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def A(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **extra}


def S(content: Any) -> dict[str, Any]:
    return {"role": "system", "content": content}


def T(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


EXACT_CASES = [
    pytest.param([U("Hello")], None, "<s>[INST]Hello[/INST]", id="single-user-no-spaces"),
    pytest.param(
        [S("You are helpful."), U("Hi"), A("Hello!  "), U("Bye"), S("Be brief.")],
        None,
        "<s>[INST]Hi[/INST]Hello!</s>[INST]You are helpful.\n\nBe brief.\n\nBye[/INST]",
        id="system-prompts-joined-on-last-user",
    ),
    pytest.param(
        [U("Hi"), S("late system")],
        None,
        "<s>[INST]late system\n\nHi[/INST]",
        id="trailing-system-message",
    ),
    pytest.param([S("only system")], None, "<s>[INST]only system\n\n[/INST]", id="system-only"),
    pytest.param(
        [
            U("a"),
            U([{"type": "text", "text": "b"}, {"type": "text", "text": ""}, {"type": "text", "text": "c"}]),
        ],
        None,
        "<s>[INST]a\n\nb\n\nc[/INST]",
        id="user-run-and-parts-merged",
    ),
    pytest.param(
        [U("a"), A("b"), U("c")],
        [WEATHER_TOOL],
        f"<s>[INST]a[/INST]b</s>[AVAILABLE_TOOLS]{WEATHER_TOOL_JSON}[/AVAILABLE_TOOLS][INST]c[/INST]",
        id="tools-before-last-inst",
    ),
    pytest.param(
        [
            U("Weather in Paris and Tokyo?"),
            A(
                None,
                tool_calls=[
                    call("aaaaaaaa1", "get_weather", '{"city":"Paris"}'),
                    call("bbbbbbbb2", "get_weather", {"city": "東京"}),
                ],
            ),
            T("aaaaaaaa1", '{"temp": 21}'),
            T("bbbbbbbb2", 'sunny \\ "day"'),
        ],
        [WEATHER_TOOL],
        f"<s>[AVAILABLE_TOOLS]{WEATHER_TOOL_JSON}[/AVAILABLE_TOOLS][INST]Weather in Paris and Tokyo?[/INST]"
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "aaaaaaaa1"}, '
        '{"name": "get_weather", "arguments": {"city": "東京"}, "id": "bbbbbbbb2"}]</s>'
        '[TOOL_RESULTS]{"content": {"temp": 21}, "call_id": "aaaaaaaa1"}[/TOOL_RESULTS]'
        '[TOOL_RESULTS]{"content": "sunny \\\\ \\"day\\"", "call_id": "bbbbbbbb2"}[/TOOL_RESULTS]',
        id="parallel-tool-calls-and-results",
    ),
    pytest.param(
        [U("q"), A(None, tool_calls=[call("abcdefghi", "f", "")]), T("abcdefghi", ""), A("done "), U("more")],
        None,
        '<s>[INST]q[/INST][TOOL_CALLS][{"name": "f", "arguments": {}, "id": "abcdefghi"}]</s>'
        '[TOOL_RESULTS]{"content": {}, "call_id": "abcdefghi"}[/TOOL_RESULTS]done</s>[INST]more[/INST]',
        id="empty-arguments-and-result-are-objects",
    ),
    pytest.param(
        [U("Write a haiku"), A("Autumn moon  ", prefix=True)],
        None,
        "<s>[INST]Write a haiku[/INST]Autumn moon",
        id="prefix-no-eos",
    ),
    pytest.param(
        [U("x"), A("line \n"), U("y")],
        None,
        "<s>[INST]x[/INST]line \n</s>[INST]y[/INST]",
        id="only-trailing-spaces-stripped",
    ),
    pytest.param(
        [A("I open."), U("ok")],
        None,
        "<s>[INST][/INST]I open.</s>[INST]ok[/INST]",
        id="leading-assistant-gets-empty-user",
    ),
]


@pytest.mark.parametrize(("messages", "tools", "expected"), EXACT_CASES)
def test_exact_prompt(tekken, reference, messages, tools, expected):
    ids = tekken.encode_chat(messages, tools)
    assert keep(tekken, ids) == expected
    assert ids == reference_ids(reference, messages, tools)


def test_control_token_text_in_content_stays_text(tekken, reference):
    messages = [U("say [INST] and </s> and [TOOL_CALLS]")]
    ids = tekken.encode_chat(messages)
    assert keep(tekken, ids) == "<s>[INST]say [INST] and </s> and [TOOL_CALLS][/INST]"
    assert ids.count(tekken.special_id("[INST]")) == 1
    assert tekken.special_id("</s>") not in ids
    assert tekken.special_id("[TOOL_CALLS]") not in ids
    assert ids == reference_ids(reference, messages, None)


# ---- (c) an OpenAI-style tool conversation over two requests -----------------------------------


def test_openai_tool_conversation_two_turns(tekken, reference):
    first_calls = [
        {
            "id": "call_9f8e7d6c5b4a3f2e1d0c",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_0a1b2c3d4e5f6a7b8c9d",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
        },
    ]
    turn1 = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris and Lyon?"},
        {"role": "assistant", "content": None, "tool_calls": first_calls},
        {
            "role": "tool",
            "tool_call_id": "call_9f8e7d6c5b4a3f2e1d0c",
            "name": "get_weather",
            "content": '{"c": 21}',
        },
        {
            "role": "tool",
            "tool_call_id": "call_0a1b2c3d4e5f6a7b8c9d",
            "name": "get_weather",
            "content": '{"c": 19}',
        },
    ]
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "Paris 21°C, Lyon 19°C."},
        {"role": "user", "content": "And Nice?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_ffff0000ffff0000ffff",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Nice"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_ffff0000ffff0000ffff", "content": '{"c": 24}'},
    ]
    encoder = MistralChatEncoder(tekken)
    for tools in (None, [WEATHER_TOOL]):
        first = encoder.encode(turn1, tools)
        second = encoder.encode(turn2, tools)  # a new request: a fresh map, same ids
        client_ids = [c["id"] for c in first_calls]
        mapped = [first.tool_call_ids.to_mistral(c) for c in client_ids]
        assert mapped == [second.tool_call_ids.to_mistral(c) for c in client_ids]
        assert all(len(m) == 9 and m.isalnum() and m.isascii() for m in mapped)
        assert len(set(mapped)) == 2
        for client_id, mistral_id in zip(client_ids, mapped, strict=True):
            assert first.tool_call_ids.to_client(mistral_id) == client_id
            assert second.tool_call_ids.to_client(mistral_id) == client_id
            for text in (keep(tekken, first.ids), keep(tekken, second.ids)):
                assert f'"id": "{mistral_id}"' in text and f'"call_id": "{mistral_id}"' in text
                assert client_id not in text
        if tools is None:
            # With no tool list or system prompt to move to the new last user message, the first
            # prompt is a prefix of the second (prefix caching works across requests).
            plain_first = encoder.encode(turn1[1:]).ids
            assert encoder.encode(turn2[1:]).ids[: len(plain_first)] == plain_first
        # Both equal mistral_common's prompt for the mapped conversation.
        for messages, encoded in ((turn1, first), (turn2, second)):
            mapped_messages = copy.deepcopy(messages)
            for m in mapped_messages:
                for c in m.get("tool_calls") or []:
                    c["id"] = encoded.tool_call_ids.to_mistral(c["id"])
                if "tool_call_id" in m:
                    m["tool_call_id"] = encoded.tool_call_ids.to_mistral(m["tool_call_id"])
            assert encoded.ids == reference_ids(reference, mapped_messages, tools)

    # The model answers with a 9-character id; the response maps it back to the client's form.
    nice_id = second.tool_call_ids.to_mistral("call_ffff0000ffff0000ffff")
    generated = [
        *encoder.encode_tool_calls([ToolCall(nice_id, "get_weather", '{"city": "Nice"}')]),
        tekken.eos_id,
    ]
    parsed = parse_tool_calls(tekken, generated)
    assert not parsed.malformed
    assert [second.tool_call_ids.to_client(c.id) for c in parsed.tool_calls] == ["call_ffff0000ffff0000ffff"]


# ---- (d) one explicit case per rejection rule --------------------------------------------------

GOOD_CALL = call("abcdefghi", "f", "{}")
GOOD_TOOLS = [WEATHER_TOOL]

ERROR_CASES = [
    pytest.param([], None, "at least one message", None, id="empty"),
    pytest.param([A("hi", prefix=True)], None, "conversation of one message", 0, id="single-assistant"),
    pytest.param([U("q"), A("a")], None, "last message must be", 1, id="last-assistant-no-prefix"),
    pytest.param(
        [U("q"), T("abcdefghi", "1")], None, "tool message cannot follow a user", 1, id="tool-after-user"
    ),
    pytest.param(
        [U("q"), A("a"), S("s"), U("r")],
        None,
        "system message cannot follow an assistant",
        2,
        id="system-after-asst",
    ),
    pytest.param(
        [U("q"), A(None, tool_calls=[GOOD_CALL, call("bcdefghij", "f", "{}")]), T("abcdefghi", "1"), U("r")],
        None,
        "2 call(s), 1 result(s)",
        1,
        id="missing-tool-result",
    ),
    pytest.param(
        [U("q"), A(None, tool_calls=[GOOD_CALL]), T("abcdefghi", "1"), T("abcdefghi", "2")],
        None,
        "1 call(s), 2 result(s)",
        1,
        id="extra-tool-result",
    ),
    pytest.param(
        [U("q"), A("text", tool_calls=[GOOD_CALL]), T("abcdefghi", "1")],
        None,
        "but not both",
        1,
        id="content-and-calls",
    ),
    pytest.param(
        [U("q"), A(None), U("r")], None, "must have content or tool_calls", 1, id="no-content-no-calls"
    ),
    pytest.param(
        [U("q"), A([{"type": "text", "text": ""}]), U("r")],
        None,
        "no text",
        1,
        id="assistant-empty-text-parts",
    ),
    pytest.param(
        [U("q"), A("x"), A(None, tool_calls=[GOOD_CALL]), T("abcdefghi", "1")],
        None,
        "mix text and tool calls",
        1,
        id="merged-text-and-calls",
    ),
    pytest.param(
        [U("q"), A(None, tool_calls=[call("abcdefghi", "get weather", "{}")]), T("abcdefghi", "1")],
        None,
        "tool_calls[0].function.name 'get weather'",
        1,
        id="bad-call-name",
    ),
    pytest.param(
        [U("q"), A(None, tool_calls=[GOOD_CALL]), {**T("abcdefghi", "1"), "name": "a.b"}],
        None,
        "tool name 'a.b'",
        2,
        id="bad-tool-message-name",
    ),
    pytest.param(
        [U("q"), A("x", prefix=True), U("r")],
        None,
        "only the last message can be an assistant prefix",
        1,
        id="prefix-not-last",
    ),
    pytest.param(
        [U("q"), A(None, tool_calls=[GOOD_CALL]), {"role": "tool", "content": "1"}],
        None,
        "needs the tool_call_id",
        2,
        id="tool-without-call-id",
    ),
    pytest.param([U(None)], None, "a user message needs content", 0, id="user-without-content"),
    pytest.param([S(None), U("q")], None, "System prompt must have content", 0, id="system-without-content"),
    pytest.param(
        [U("q"), {"role": "tool", "tool_call_id": "abcdefghi"}],
        None,
        "a tool message needs content",
        1,
        id="tool-without-content",
    ),
    pytest.param(
        [U("q"), {"role": "developer", "content": "x"}], None, "unknown role 'developer'", 1, id="bad-role"
    ),
    pytest.param(
        [U([{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}])],
        None,
        "reads text parts only",
        0,
        id="image-part",
    ),
    pytest.param(
        [U("q")],
        [{"type": "function", "function": {"name": "bad name", "parameters": {}}}],
        "tools[0].function.name 'bad name'",
        None,
        id="bad-tool-name",
    ),
    pytest.param(
        [U("q")],
        [WEATHER_TOOL, {"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}],
        "tools[1].function.parameters is not a valid JSON schema",
        None,
        id="bad-schema",
    ),
]


@pytest.mark.parametrize(("messages", "tools", "fragment", "index"), ERROR_CASES)
def test_rejection_rule(tekken, reference, messages, tools, fragment, index):
    _, ref_exc = reference_outcome(reference, messages, tools)
    assert ref_exc is not None, "mistral_common accepts this case; the rule would not be its rule"
    with pytest.raises(ChatFormatError) as info:
        tekken.encode_chat(messages, tools)
    err = info.value
    assert fragment in str(err)
    assert err.message_index == index
    if index is not None:
        assert str(err).startswith(f"messages[{index}]: ")


def test_error_messages_are_json_safe_and_nonempty(tekken):
    """Errors end up in API responses: plain, non-empty text."""
    for param in ERROR_CASES:
        messages, tools = param.values[0], param.values[1]
        with pytest.raises(ChatFormatError) as info:
            tekken.encode_chat(messages, tools)
        assert str(info.value).strip()
        json.dumps({"error": str(info.value)})
