"""ChatTemplate renders like transformers' apply_chat_template; template failures are ChatFormatErrors."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from mistral_nemo.tokenizer import ChatFormatError, ChatTemplate

# A tool-calling ChatML template written for these tests: tools through tojson, namespace, loop
# controls, None contents, reasoning aliases, message.attr access and whitespace control.
TOOLS_TEMPLATE = """
{%- set ns = namespace(turns=0, system=none) %}
{%- if messages[0].role == 'system' %}{% set ns.system = messages[0].content %}{% endif %}
{%- if tools %}
    {{- '<|im_start|>system\\n' + (ns.system or 'You can call tools.') + '\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif ns.system %}
    {{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}{% continue %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|im_start|>' + message.role + '\\n' }}
    {%- if message.reasoning_content is defined %}<think>{{ message.reasoning_content }}</think>{% endif %}
    {%- if message.content is defined %}{{ message.content }}{% endif %}
    {%- for call in message.tool_calls | default([]) %}
        {{- '\\n<tool_call>' + call.function | tojson(indent=2, sort_keys=true) + '</tool_call>' }}
    {%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
{{- '<!-- ' ~ ns.turns ~ ' turns, ' ~ bos_token ~ eos_token ~ (pad_token | default('')) ~ ' -->' }}
"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather « now » in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
MESSAGES = [
    {"role": "system", "content": "Be brief. <b>&amp;</b>"},
    {"role": "user", "content": "Weather in Zürich? 🌦"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "need the tool",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
        ],
    },
    {"role": "tool", "content": json.dumps({"temp": 21}), "tool_call_id": "abc123XYZ"},
]


@pytest.mark.parametrize("tools", [TOOLS, None])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_transformers(tools: list | None, add_generation_prompt: bool) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template  # a test dependency

    expected, _ = render_jinja_template(
        conversations=[[{k: v for k, v in m.items() if v is not None} for m in MESSAGES]],
        tools=tools,
        chat_template=TOOLS_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    template = ChatTemplate(TOOLS_TEMPLATE, "<s>", "</s>", special_tokens={"pad_token": "<pad>"})
    rendered = template.render(MESSAGES, tools, add_generation_prompt=add_generation_prompt)
    assert rendered == expected[0]
    assert '"description": "Weather « now » in a city"' in rendered or tools is None  # no ASCII/HTML escaping
    assert "<!-- 3 turns, <s></s><pad> -->" in rendered


def test_plain_values_and_dataclasses() -> None:
    @dataclass
    class Msg:
        role: str
        content: str

    template = ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}")
    assert (
        template.render([Msg("user", "hi"), {"role": "assistant", "content": "yo"}])
        == "user:hi;assistant:yo;"
    )


def test_raise_exception_becomes_chat_format_error() -> None:
    message = "Conversations must start with a user turn"
    template = ChatTemplate(
        f"{{% if messages[0]['role'] != 'user' %}}{{{{ raise_exception('{message}') }}}}{{% endif %}}ok"
    )
    assert template.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatFormatError, match=rf"^{message}$"):
        template.render([{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ raise_exception.__globals__['__builtins__'] }}",
        "{{ (messages|first).__init__.__globals__ }}",
        "{% set x = namespace() %}{% set x._secret = 1 %}{{ x }}",
        "{{ dict.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% set l = [] %}{{ l.append(1) }}",
        "{{ ''.__class__ }}",
        "{{ lipsum.__globals__ }}",
    ],
)
def test_sandbox_escapes_fail_safely(source: str) -> None:
    template = ChatTemplate(source)
    with pytest.raises(ChatFormatError) as info:
        template.render([{"role": "user", "content": "x"}])
    assert "sandbox" in str(info.value)


def test_template_errors_are_chat_format_errors() -> None:
    with pytest.raises(ChatFormatError, match="syntax error"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatFormatError, match="empty"):
        ChatTemplate("")
    concat = ChatTemplate("{% for m in messages %}{{ m['content'] + '!' }}{% endfor %}")
    with pytest.raises(ChatFormatError, match="chat template failed"):
        concat.render([{"role": "user", "content": ["a", "list"]}])
    with pytest.raises(ChatFormatError, match="empty"):
        concat.render([])
    with pytest.raises(ChatFormatError, match=r"messages\[1\]"):
        concat.render([{"role": "user", "content": "a"}, "not a message"])  # type: ignore[list-item]
    with pytest.raises(ChatFormatError, match="tools"):
        concat.render([{"role": "user", "content": "a"}], tools="nope")  # type: ignore[arg-type]


def test_tojson_and_strftime_now() -> None:
    template = ChatTemplate(
        "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=1) }}|{{ strftime_now('%Y') }}"
    )
    out = template.render([{"role": "user", "content": "é <&>"}], add_generation_prompt=False)
    first, second, year = out.split("|")
    assert first == '{"role": "user", "content": "é <&>"}'
    assert json.loads(second) == {"role": "user", "content": "é <&>"}
    assert year.isdigit() and len(year) == 4
