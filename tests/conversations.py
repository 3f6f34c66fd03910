"""Random OpenAI-style conversations for the chat-format equality tests.

`random_case(rng)` draws one conversation (messages + tools) from a `random.Random`: mostly
valid ones (multi-turn, system messages anywhere they may stand, text parts, parallel tool
calls, tool results, unicode everywhere, same-role runs, a final assistant prefix), plus a
controlled share (`INVALID_SHARE`) with exactly one injected defect, named in `Case.defect`.

The same generator drives a seeded loop (deterministic counts) and a hypothesis strategy
(`cases()`, built on `st.randoms`, so failures shrink).

Tool-call ids here are always valid 9-character Mistral ids; other client ids are an allowed
difference from mistral_common and are tested apart (see `client_style_id`).
"""

from __future__ import annotations

import copy
import json
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

Json = Any
Msg = dict[str, Any]

INVALID_SHARE = 0.2
ALNUM = string.ascii_letters + string.digits

# ---- text --------------------------------------------------------------------------------------

FRAGMENTS: tuple[str, ...] = (
    "hello",
    "What's the weather in Paris?",
    "Bonjour, ça va ?",
    "你好，世界",
    "日本語のテキストです。",
    "한국어 문장",
    "مرحبا بالعالم",
    "שלום עולם",
    "Привет, мир",
    "😀",
    "🎉👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    "e\u0301",  # e + combining acute
    "zero\u200bwidth",
    '"quoted"',
    "“curly” ‘quotes’",
    "it's",
    "back\\slash",
    "C:\\path\\to\\file",
    "\\n is not a newline",
    '\\"escaped\\"',
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    "  ",
    "{",
    "}",
    "[",
    "]",
    '{"json": [1, 2, {"x": null}]}',
    "[INST]",
    "[/INST]",
    "</s>",
    "<s>",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "1234567890",
    "3.14159",
    "a + b = c",
    "snake_case_name",
    "```python\nprint('x')\n```",
    "<html><b>bold</b></html>",
    "\u00a0nbsp",
    "\ufeffbom",
    "max\U0001d49eath",
)


def random_char(rng: random.Random) -> str:
    """Any code point but a surrogate (those are not text)."""
    while True:
        cp = rng.choice((rng.randint(0x20, 0x7E), rng.randint(0xA0, 0xFFFF), rng.randint(0x10000, 0x10FFFF)))
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def random_text(rng: random.Random, max_pieces: int = 5, allow_empty: bool = True) -> str:
    while True:
        pieces = []
        for _ in range(rng.randint(0 if allow_empty else 1, max_pieces)):
            r = rng.random()
            if r < 0.7:
                pieces.append(rng.choice(FRAGMENTS))
            elif r < 0.85:
                pieces.append("".join(random_char(rng) for _ in range(rng.randint(1, 4))))
            else:
                pieces.append(rng.choice(string.ascii_letters + string.digits + " .,;:!?-'\"\\/"))
            if rng.random() < 0.5:
                pieces.append(rng.choice((" ", " ", "\n", ", ", "")))
        text = "".join(pieces)
        if text or allow_empty:
            return text


def assistant_text(rng: random.Random) -> str:
    """Non-empty text, often with trailing spaces (v3 strips trailing spaces, not newlines)."""
    text = random_text(rng, allow_empty=False)
    r = rng.random()
    if r < 0.25:
        text += " " * rng.randint(1, 3)
    elif r < 0.35:
        text += rng.choice(("\n", " \n", "\n  ", "\t ", "  \n "))
    elif r < 0.38:
        text = " " * rng.randint(1, 3)  # only spaces: encodes to nothing but </s>
    return text


# ---- JSON values, names, ids -------------------------------------------------------------------


def random_json(rng: random.Random, depth: int = 3) -> Json:
    r = rng.random()
    if depth <= 0 or r < 0.45:
        return rng.choice(
            (
                None,
                True,
                False,
                rng.randint(-(10**6), 10**6),
                rng.randint(-(2**70), 2**70),
                round(rng.uniform(-1e4, 1e4), rng.randint(0, 6)),
                rng.choice((0.0, -0.0, 1e-7, 1.5e300, 0.1)),
                random_text(rng, max_pieces=3),
            )
        )
    if r < 0.7:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng, max_pieces=2): random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def json_text(rng: random.Random, value: Json) -> str:
    """JSON text as a client might write it: compact, pretty, ASCII-escaped, padded."""
    style = rng.randrange(5)
    if style == 0:
        return json.dumps(value, ensure_ascii=False)
    if style == 1:
        return json.dumps(value)
    if style == 2:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if style == 3:
        return json.dumps(value, indent=rng.choice((1, 2, 4)), ensure_ascii=rng.random() < 0.5)
    return " \n" + json.dumps(value, ensure_ascii=False) + "\n "


NAMES: tuple[str, ...] = (
    "get_weather",
    "search-web",
    "f",
    "X",
    "lookup2",
    "get_current_weather",
    "send_email_v2",
    "A" * 64,
    "__init__",
    "-dash-",
    "0",
    "calc",
)
BAD_NAMES: tuple[str, ...] = (
    "get weather",
    "get.weather",
    "",
    "a" * 65,
    "名前",
    "f(x)",
    "tool/name",
    "emoji😀",
    "new\nline",
)


def function_name(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(NAMES)
    alphabet = ALNUM + "_-"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 64 if rng.random() < 0.1 else 12)))


def mistral_id(rng: random.Random) -> str:
    return "".join(rng.choice(ALNUM) for _ in range(9))


def client_style_id(rng: random.Random) -> str:
    """A tool-call id as OpenAI-style clients send it (not a 9-character Mistral id)."""
    kind = rng.randrange(6)
    if kind == 0:
        return "call_" + "".join(rng.choice(ALNUM) for _ in range(24))
    if kind == 1:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == 2:
        return "toolu_" + "".join(rng.choice(ALNUM) for _ in range(rng.randint(1, 30)))
    if kind == 3:
        return "".join(rng.choice(ALNUM) for _ in range(rng.choice((1, 8, 10, 20))))
    if kind == 4:
        return rng.choice(("null", "", "call 1", "ид-звонка", "call_😀", "a" * 100))
    return "".join(rng.choice(ALNUM + "_-.:") for _ in range(9)) + "_"


# ---- tools -------------------------------------------------------------------------------------


def random_schema(rng: random.Random, depth: int = 2) -> dict[str, Any]:
    kind = rng.choice(("string", "integer", "number", "boolean", "array", "object", "enum", "anyOf", "union"))
    if depth <= 0 and kind in ("array", "object", "anyOf"):
        kind = "string"
    schema: dict[str, Any]
    if kind == "string":
        schema = {"type": "string"}
        extra = rng.random()
        if extra < 0.2:
            schema["pattern"] = rng.choice(("^[a-z]+$", "\\d{3}-\\d{4}", ".*"))
        elif extra < 0.35:
            schema["format"] = rng.choice(("date-time", "email", "uri"))
        elif extra < 0.5:
            schema["minLength"], schema["maxLength"] = 1, rng.randint(1, 100)
    elif kind in ("integer", "number"):
        schema = {"type": kind}
        if rng.random() < 0.4:
            schema["minimum"] = rng.randint(-10, 0)
            schema["maximum"] = rng.choice((10, 100, 1.5))
    elif kind == "boolean":
        schema = {"type": "boolean"}
    elif kind == "array":
        schema = {"type": "array", "items": random_schema(rng, depth - 1)}
        if rng.random() < 0.3:
            schema["minItems"] = rng.randint(0, 3)
    elif kind == "object":
        schema = object_schema(rng, depth - 1)
    elif kind == "enum":
        schema = {"type": "string", "enum": [random_text(rng, 2) for _ in range(rng.randint(1, 4))]}
    elif kind == "anyOf":
        schema = {"anyOf": [random_schema(rng, depth - 1) for _ in range(rng.randint(1, 3))]}
    else:
        schema = {"type": [rng.choice(("string", "integer", "number")), "null"]}
    if rng.random() < 0.5:
        schema["description"] = random_text(rng, 3)
    if rng.random() < 0.1:
        schema["default"] = None
    return schema


def object_schema(rng: random.Random, depth: int = 2) -> dict[str, Any]:
    properties = {
        random_text(rng, 2, allow_empty=False): random_schema(rng, depth) for _ in range(rng.randint(0, 4))
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if properties and rng.random() < 0.6:
        schema["required"] = rng.sample(sorted(properties), rng.randint(1, len(properties)))
    if rng.random() < 0.2:
        schema["additionalProperties"] = rng.random() < 0.5
    return schema


def random_parameters(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    if r < 0.08:
        return {}
    if r < 0.14:
        return {"type": "object", "properties": {}}
    if r < 0.18:
        return {"$schema": "http://json-schema.org/draft-07/schema#", **object_schema(rng)}
    return object_schema(rng)


def random_tool(rng: random.Random, name: str) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if rng.random() < 0.8:
        function["description"] = random_text(rng, 4)
    function["parameters"] = random_parameters(rng)
    if rng.random() < 0.1:
        function["strict"] = rng.random() < 0.5
    tool: dict[str, Any] = {"function": function}
    if rng.random() < 0.9:
        tool = {"type": "function", **tool}
    return tool


# ---- messages ----------------------------------------------------------------------------------


def text_content(rng: random.Random, allow_empty: bool = True) -> str | list[dict[str, str]]:
    """A str, or a list of text parts (parts may be empty)."""
    if rng.random() < 0.65:
        return random_text(rng, allow_empty=allow_empty)
    parts = [
        {"type": "text", "text": random_text(rng, 3)} for _ in range(rng.randint(0 if allow_empty else 1, 3))
    ]
    if not allow_empty and not any(p["text"] for p in parts):
        parts.append({"type": "text", "text": random_text(rng, 3, allow_empty=False)})
    return parts


def system(rng: random.Random) -> Msg:
    return {"role": "system", "content": text_content(rng)}


def user(rng: random.Random) -> Msg:
    return {"role": "user", "content": text_content(rng)}


def assistant(rng: random.Random, prefix: bool = False) -> Msg:
    if rng.random() < 0.7:
        content: Any = assistant_text(rng)
    else:
        parts = [{"type": "text", "text": random_text(rng, 3)} for _ in range(rng.randint(0, 2))]
        parts.insert(rng.randint(0, len(parts)), {"type": "text", "text": assistant_text(rng)})
        content = parts
    message: Msg = {"role": "assistant", "content": content}
    if rng.random() < 0.05:
        message["tool_calls"] = rng.choice((None, []))
    if prefix:
        message["prefix"] = True
    elif rng.random() < 0.05:
        message["prefix"] = False
    return message


def tool_call(rng: random.Random, names: list[str]) -> dict[str, Any]:
    name = rng.choice(names) if names and rng.random() < 0.8 else function_name(rng)
    r = rng.random()
    arguments: Any
    if r < 0.6:
        value = (
            random_json(rng)
            if rng.random() < 0.15
            else {random_text(rng, 2): random_json(rng, 2) for _ in range(rng.randint(0, 4))}
        )
        arguments = json_text(rng, value)
    elif r < 0.8:
        arguments = {random_text(rng, 2): random_json(rng, 2) for _ in range(rng.randint(0, 3))}
    elif r < 0.9:
        arguments = rng.choice(("", "{}", None))
    else:
        arguments = random_text(rng, 3)  # not JSON: kept as a string
    call: dict[str, Any] = {"id": mistral_id(rng), "function": {"name": name, "arguments": arguments}}
    if rng.random() < 0.9:
        call = {"id": call["id"], "type": "function", "function": call["function"]}
    return call


def tool_call_message(rng: random.Random, names: list[str]) -> Msg:
    message: Msg = {
        "role": "assistant",
        "tool_calls": [tool_call(rng, names) for _ in range(rng.randint(1, 4))],
    }
    r = rng.random()
    if r < 0.4:
        message["content"] = None
    elif r < 0.55:
        message["content"] = ""  # accepted by mistral_common too: "" is no content
    elif r < 0.6:
        message["content"] = []
    return message


def tool_result(rng: random.Random, call: dict[str, Any]) -> Msg:
    r = rng.random()
    content: Any
    if r < 0.5:
        content = json_text(rng, random_json(rng))
    elif r < 0.6:
        content = json_text(rng, {"result": random_json(rng), "ok": True})
    elif r < 0.8:
        content = random_text(rng, allow_empty=False)
    elif r < 0.87:
        content = rng.choice(("", "null", "0", '""', "[]", "{}", "NaN", "1e400", "  42  "))
    else:
        value = json_text(rng, random_json(rng))
        cut = rng.randint(0, len(value))
        content = [{"type": "text", "text": value[:cut]}, {"type": "text", "text": value[cut:]}]
    message: Msg = {"role": "tool", "tool_call_id": call["id"], "content": content}
    if rng.random() < 0.4:
        message["name"] = call["function"]["name"]
    return message


def tool_round(rng: random.Random, names: list[str]) -> list[Msg]:
    """An assistant tool-call message and one result per call (in call order, or shuffled)."""
    calls_message = tool_call_message(rng, names)
    results = [tool_result(rng, call) for call in calls_message["tool_calls"]]
    if rng.random() < 0.2:
        rng.shuffle(results)
    return [calls_message, *results]


@dataclass
class Case:
    messages: list[Msg]
    tools: list[dict[str, Any]] | None
    defect: str | None = None  # None: meant to be valid
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return json.dumps(
            {"defect": self.defect, "messages": self.messages, "tools": self.tools},
            ensure_ascii=False,
            indent=1,
        )


def valid_case(rng: random.Random) -> Case:
    tools: list[dict[str, Any]] | None = None
    names: list[str] = []
    if rng.random() < 0.55:
        names = list(dict.fromkeys(function_name(rng) for _ in range(rng.randint(1, 4))))
        tools = [random_tool(rng, name) for name in names]
    elif rng.random() < 0.1:
        tools = []

    messages: list[Msg] = []
    start = rng.random()
    if start < 0.03:
        # Only system messages: they become the system prompt of an empty user turn.
        return Case([system(rng) for _ in range(rng.randint(1, 2))], tools)
    if start < 0.3:
        messages += [system(rng) for _ in range(rng.randint(1, 2))]
    elif start < 0.34:
        messages.append(assistant(rng))  # an opening assistant message (an empty user turn is added)
    elif start < 0.36:
        # A tool result first: mistral_common does not count the first message against tool calls.
        messages.append(tool_result(rng, tool_call(rng, names)))

    rounds = rng.randint(1, 4)
    for r in range(rounds):
        messages.append(user(rng))
        for _ in range(2):
            x = rng.random()
            if x < 0.12:
                messages.append(user(rng))
            elif x < 0.25:
                messages.append(system(rng))
                if rng.random() < 0.7:
                    messages.append(user(rng))
        if messages[-1]["role"] == "system" and rng.random() < 0.5:
            messages.append(user(rng))
        if r == rounds - 1:
            break
        _assistant_block(rng, messages, names)

    ending = rng.random()
    if ending < 0.45:
        pass  # ends on a user (or a system message after one)
    elif ending < 0.65:
        # Ends on tool results, maybe after a text answer and another round of tool calls.
        messages += tool_round(rng, names)
        if rng.random() < 0.2:
            messages += tool_round(rng, names)
    elif ending < 0.75:
        messages.append(system(rng))  # a trailing system message joins the system prompt
    else:
        # A final assistant prefix to continue, possibly after tool results or a text run.
        if rng.random() < 0.3:
            messages += tool_round(rng, names)
        if rng.random() < 0.2:
            messages.append(assistant(rng))
        messages.append(assistant(rng, prefix=True))
    return Case(messages, tools)


def _assistant_block(rng: random.Random, messages: list[Msg], names: list[str]) -> None:
    """What comes between two user turns: text answer(s), tool rounds, or both."""
    x = rng.random()
    if x < 0.5:
        messages.append(assistant(rng))
        if rng.random() < 0.15:
            messages.append(assistant(rng))  # a run of assistant messages is merged
    else:
        messages += tool_round(rng, names)
        if rng.random() < 0.25:
            messages += tool_round(rng, names)
        if rng.random() < 0.7:
            messages.append(assistant(rng))


# ---- defects -----------------------------------------------------------------------------------


def _indexes(messages: list[Msg], predicate: Callable[[Msg], bool]) -> list[int]:
    return [i for i, m in enumerate(messages) if predicate(m)]


def _is_calls(m: Msg) -> bool:
    return m["role"] == "assistant" and bool(m.get("tool_calls"))


def _is_text_assistant(m: Msg) -> bool:
    return m["role"] == "assistant" and not m.get("tool_calls")


def _with_tool_round(rng: random.Random, case: Case) -> list[Msg]:
    """The case's messages, ending in a tool round if it had none (so there is one to break)."""
    messages = case.messages
    if not _indexes(messages, _is_calls):
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages or messages[-1]["role"] != "user":
            messages = [*messages, user(rng)]
        messages = messages + tool_round(rng, [])
    return messages


def _defect_empty(rng: random.Random, case: Case) -> None:
    case.messages = []


def _defect_tool_after_user(rng: random.Random, case: Case) -> None:
    i = rng.choice(_indexes(case.messages, lambda m: m["role"] == "user"))
    case.messages.insert(i + 1, tool_result(rng, tool_call(rng, [])))


def _defect_system_after_assistant(rng: random.Random, case: Case) -> None:
    case.messages = [*case.messages, assistant(rng), system(rng), user(rng)]


def _defect_last_assistant(rng: random.Random, case: Case) -> None:
    last = case.messages[-1]
    if last["role"] == "assistant" and last.get("prefix"):
        del last["prefix"]
    elif last["role"] in ("user", "tool"):
        case.messages.append(assistant(rng) if rng.random() < 0.7 else tool_call_message(rng, []))
    else:  # a trailing system message: replace it
        case.messages[-1] = assistant(rng)
        if len(case.messages) == 1:
            case.messages.insert(0, user(rng))


def _defect_missing_result(rng: random.Random, case: Case) -> None:
    messages = _with_tool_round(rng, case)
    i = rng.choice([i for i in _indexes(messages, lambda m: m["role"] == "tool") if i > 0])
    case.messages = messages[:i] + messages[i + 1 :]


def _defect_extra_result(rng: random.Random, case: Case) -> None:
    messages = _with_tool_round(rng, case)
    i = rng.choice([i for i in _indexes(messages, lambda m: m["role"] == "tool") if i > 0])
    case.messages = [*messages[: i + 1], copy.deepcopy(messages[i]), *messages[i + 1 :]]


def _defect_bad_call_name(rng: random.Random, case: Case) -> None:
    messages = _with_tool_round(rng, case)
    i = rng.choice(_indexes(messages, _is_calls))
    rng.choice(messages[i]["tool_calls"])["function"]["name"] = rng.choice(BAD_NAMES)
    case.messages = messages


def _defect_bad_result_name(rng: random.Random, case: Case) -> None:
    messages = _with_tool_round(rng, case)
    i = rng.choice(_indexes(messages, lambda m: m["role"] == "tool"))
    messages[i]["name"] = rng.choice(BAD_NAMES)
    case.messages = messages


def _defect_bad_tool_name(rng: random.Random, case: Case) -> None:
    tool = random_tool(rng, rng.choice(BAD_NAMES))
    case.tools = [*(case.tools or []), tool]
    rng.shuffle(case.tools)


BAD_SCHEMAS: tuple[dict[str, Any], ...] = (
    {"type": "strin"},
    {"type": "object", "properties": 5},
    {"type": "object", "properties": {"a": {"type": 3}}},
    {"type": "object", "required": "a"},
    {"type": "object", "properties": {"a": {"type": "array", "items": "x"}}},
    {"type": "object", "properties": {"a": {"minLength": -1}}},
    {"type": "object", "additionalProperties": "no"},
    {"anyOf": []},
    {"enum": "x"},
)


def _defect_bad_schema(rng: random.Random, case: Case) -> None:
    tool = random_tool(rng, function_name(rng))
    tool["function"]["parameters"] = copy.deepcopy(rng.choice(BAD_SCHEMAS))
    case.tools = [*(case.tools or []), tool]
    rng.shuffle(case.tools)


def _defect_no_call_id(rng: random.Random, case: Case) -> None:
    messages = _with_tool_round(rng, case)
    i = rng.choice(_indexes(messages, lambda m: m["role"] == "tool"))
    if rng.random() < 0.5:
        del messages[i]["tool_call_id"]
    else:
        messages[i]["tool_call_id"] = None
    case.messages = messages


def _defect_content_and_calls(rng: random.Random, case: Case) -> None:
    messages = _with_tool_round(rng, case)
    i = rng.choice(_indexes(messages, _is_calls))
    messages[i]["content"] = rng.choice(
        (assistant_text(rng), [{"type": "text", "text": assistant_text(rng)}], [{"type": "text", "text": ""}])
    )
    case.messages = messages


def _defect_prefix_not_last(rng: random.Random, case: Case) -> None:
    candidates = _indexes(case.messages[:-1], _is_text_assistant)
    if candidates:
        case.messages[rng.choice(candidates)]["prefix"] = True
    else:
        i = rng.choice(_indexes(case.messages, lambda m: m["role"] == "user"))
        case.messages[i + 1 : i + 1] = [assistant(rng, prefix=True), user(rng)]


def _defect_empty_assistant(rng: random.Random, case: Case) -> None:
    message: Msg = {"role": "assistant"}
    content = rng.choice((None, "", [], [{"type": "text", "text": ""}], "absent"))
    if content != "absent":
        message["content"] = content
    if rng.random() < 0.5:
        message["tool_calls"] = rng.choice((None, []))
    i = rng.choice(_indexes(case.messages, lambda m: m["role"] == "user"))
    if rng.random() < 0.3:
        message["prefix"] = True
        case.messages = [*case.messages[: i + 1], message]
    else:
        case.messages[i + 1 : i + 1] = [message, user(rng)]


def _defect_missing_content(rng: random.Random, case: Case) -> None:
    roles = [r for r in ("user", "system", "tool") if any(m["role"] == r for m in case.messages)]
    role = rng.choice(roles)
    i = rng.choice(_indexes(case.messages, lambda m: m["role"] == role))
    if rng.random() < 0.5:
        case.messages[i]["content"] = None
    else:
        del case.messages[i]["content"]


def _defect_single_non_user(rng: random.Random, case: Case) -> None:
    case.messages = [
        rng.choice((assistant(rng, prefix=True), assistant(rng), tool_result(rng, tool_call(rng, []))))
    ]


def _defect_split_calls(rng: random.Random, case: Case) -> None:
    """Two tool-call messages in a row before their results: counts do not match at the second one."""
    i = rng.choice(_indexes(case.messages, lambda m: m["role"] == "user"))
    first, second = tool_call_message(rng, []), tool_call_message(rng, [])
    results = [tool_result(rng, c) for c in first["tool_calls"] + second["tool_calls"]]
    case.messages[i + 1 : i + 1] = [first, second, *results, assistant(rng), user(rng)]


def _defect_non_text_part(rng: random.Random, case: Case) -> None:
    i = rng.choice(_indexes(case.messages, lambda m: m["role"] in ("user", "system")))
    part = rng.choice(
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "bogus", "text": "x"},
        )
    )
    content = case.messages[i]["content"]
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    parts.insert(rng.randint(0, len(parts)), part)
    case.messages[i]["content"] = parts


def _defect_unknown_role(rng: random.Random, case: Case) -> None:
    i = rng.randint(0, len(case.messages))
    case.messages.insert(i, {"role": rng.choice(("developer", "function", "bot", "")), "content": "hi"})


DEFECTS: dict[str, Callable[[random.Random, Case], None]] = {
    "empty": _defect_empty,
    "tool_after_user": _defect_tool_after_user,
    "system_after_assistant": _defect_system_after_assistant,
    "last_assistant_without_prefix": _defect_last_assistant,
    "missing_tool_result": _defect_missing_result,
    "extra_tool_result": _defect_extra_result,
    "bad_call_name": _defect_bad_call_name,
    "bad_result_name": _defect_bad_result_name,
    "bad_tool_name": _defect_bad_tool_name,
    "bad_schema": _defect_bad_schema,
    "tool_without_call_id": _defect_no_call_id,
    "content_and_tool_calls": _defect_content_and_calls,
    "prefix_not_last": _defect_prefix_not_last,
    "empty_assistant": _defect_empty_assistant,
    "missing_content": _defect_missing_content,
    "single_non_user": _defect_single_non_user,
    "split_tool_calls": _defect_split_calls,
    "non_text_part": _defect_non_text_part,
    "unknown_role": _defect_unknown_role,
}


def invalid_case(rng: random.Random, defect: str | None = None) -> Case:
    case = valid_case(rng)
    while not any(m["role"] == "user" for m in case.messages):
        case = valid_case(rng)
    case.defect = defect or rng.choice(sorted(DEFECTS))
    DEFECTS[case.defect](rng, case)
    return case


def random_case(rng: random.Random, invalid_share: float = INVALID_SHARE) -> Case:
    return invalid_case(rng) if rng.random() < invalid_share else valid_case(rng)


def seeded_cases(seed: int, count: int, invalid_share: float = INVALID_SHARE) -> list[Case]:
    rng = random.Random(seed)
    return [random_case(rng, invalid_share) for _ in range(count)]


def cases(invalid_share: float = INVALID_SHARE) -> st.SearchStrategy[Case]:
    """Hypothesis strategy over the same generator (draws come from hypothesis, so they shrink)."""
    return st.builds(lambda rng: random_case(rng, invalid_share), st.randoms(use_true_random=False))


def with_client_ids(case: Case, rng: random.Random) -> Case:
    """The same conversation with every tool-call id replaced by a client-style id (consistently)."""
    mapping: dict[str, str] = {}
    out = copy.deepcopy(case)
    for message in out.messages:
        for call in message.get("tool_calls") or []:
            call["id"] = mapping.setdefault(call["id"], client_style_id(rng))
        if message.get("tool_call_id") is not None:
            message["tool_call_id"] = mapping.setdefault(message["tool_call_id"], client_style_id(rng))
    return out
