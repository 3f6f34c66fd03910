"""Render a Hugging Face / GGUF jinja chat template the way transformers' `apply_chat_template` does.

The environment matches transformers (utils/chat_template_utils.py): an ImmutableSandboxedEnvironment
with trim_blocks, lstrip_blocks and the loopcontrols extension; `raise_exception`, `strftime_now`,
a `tojson` filter that does not HTML-escape (json.dumps with ensure_ascii=False, indent, separators,
sort_keys), a restricted `dict` and a `namespace` that refuses underscore names; one difference: an
unsafe attribute (`''.__class__`) fails at once instead of rendering as "". Messages get the same
preparation: keys whose value is None are dropped, everything is rebuilt from plain JSON types, and
`reasoning_content` / `thinking` / `reasoning` are aliased. Templates are untrusted code: any failure,
sandbox violations included, becomes a ChatFormatError carrying the template's message.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mistral_nemo.tokenizer.errors import ChatFormatError

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
MAX_DEPTH = 64  # how deeply a message, tool or template variable may nest


class _TemplateRaised(Exception):
    """`raise_exception(message)` called by a template."""


def _raise_exception(message: Any) -> None:
    raise _TemplateRaised(str(message))


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict(...)` for templates, without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's namespace, refusing underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})"
            )


class _Sandbox(ImmutableSandboxedEnvironment):
    """Fails at the first unsafe attribute (jinja would hand back an Undefined that renders as "")."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


class ChatTemplate:
    """A compiled chat template; `render` turns OpenAI-style messages into the prompt text."""

    def __init__(
        self,
        source: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        """`special_tokens` adds template variables such as unk_token / pad_token (bos/eos win over it)."""
        if not isinstance(source, str) or not source:
            raise ChatFormatError("the chat template is empty")
        if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < (3, 1, 6):
            raise ChatFormatError(
                f"chat templates need jinja2>=3.1.6 (sandbox fixes); found {jinja2.__version__}"
            )
        self.source = source
        self.variables: dict[str, str] = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        if bos_token is not None:
            self.variables["bos_token"] = bos_token
        if eos_token is not None:
            self.variables["eos_token"] = eos_token
        try:
            environment = _environment()
            self._ast = environment.parse(source)
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatFormatError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise ChatFormatError(f"chat template cannot be compiled: {exc}") from None

    @property
    def reads_content_parts(self) -> bool:
        """True if the template loops over a message's content (OpenAI parts), as vLLM detects it.

        Such a template wants `[{"type": "text", "text": ...}]`; any other wants a string. Seen:
        `{% for part in message['content'] %}`, `message.content`, or a variable named *content.
        """
        for loop in self._ast.find_all(jinja2.nodes.For):
            kinds = (jinja2.nodes.Getattr, jinja2.nodes.Getitem, jinja2.nodes.Name)
            for node in [loop.iter, *loop.iter.find_all(kinds)]:
                if isinstance(node, jinja2.nodes.Getattr):
                    key = node.attr
                elif isinstance(node, jinja2.nodes.Getitem):
                    key = getattr(node.arg, "value", None)
                else:
                    key = node.name
                if isinstance(key, str) and key.endswith("content"):
                    return True
        return False

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text; `extra` are further template variables (e.g. enable_thinking=False)."""
        chat = _prepare_messages(messages)
        if tools is not None:
            if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
                raise ChatFormatError("tools must be a list of objects", param="tools")
            for i, tool in enumerate(tools):
                if not isinstance(tool, Mapping):
                    raise ChatFormatError(
                        f"tools[{i}] must be an object, got {type(tool).__name__}", param="tools"
                    )
        variables = {**self.variables, **_plain(extra)}
        plain_tools = _plain(list(tools)) if tools is not None else None
        try:
            return self._template.render(
                messages=chat,
                tools=plain_tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except _TemplateRaised as exc:
            raise ChatFormatError(str(exc)) from None
        except jinja2.exceptions.SecurityError as exc:
            raise ChatFormatError(f"chat template refused by the sandbox: {exc}") from None
        except jinja2.TemplateError as exc:
            raise ChatFormatError(f"chat template failed: {exc.message or exc}") from None
        except (RecursionError, MemoryError) as exc:
            raise ChatFormatError(f"chat template failed: {type(exc).__name__}") from None
        except Exception as exc:  # templates are code: TypeError, KeyError... from the conversation's shape
            raise ChatFormatError(f"chat template failed: {type(exc).__name__}: {exc}") from None


def _prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ChatFormatError("messages must be a list of message objects", param="messages")
    if not messages:
        raise ChatFormatError("the conversation is empty", param="messages")
    chat: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        plain = _plain(message)  # dataclasses and pydantic models become dicts too
        if not isinstance(plain, dict):
            raise ChatFormatError(f"must be an object, got {type(message).__name__}", message_index=i)
        plain = {k: v for k, v in plain.items() if v is not None}
        reasoning = next((plain[k] for k in _REASONING_FIELDS if plain.get(k) is not None), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        chat.append(plain)
    return chat


def _plain(value: Any, depth: int = 0) -> Any:
    """Rebuild a value from plain JSON types, so the template sees no methods beyond theirs.

    Nesting is bounded (MAX_DEPTH): a client's 500-deep list is a clear error, not a RecursionError.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if depth >= MAX_DEPTH:
        raise ChatFormatError(f"the conversation is nested deeper than {MAX_DEPTH} levels")
    depth += 1
    if isinstance(value, Mapping):
        return {_plain(k, depth): _plain(v, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, depth) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, depth) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump(), depth - 1)
    return f"<{type(value).__name__}>"


def openai_messages_for_template(messages: list[Any], content_parts: bool) -> list[Any]:
    """OpenAI messages in the shape a chat template can render (vLLM normalises the same way).

    `content_parts` (ChatTemplate.reads_content_parts) False: text parts are joined by newlines
    into one string. An assistant message whose content is null (a tool-call message, as the
    openai SDK sends it back) gets "" so that templates that concatenate content still render.
    Parts that are not text are refused: these models read text only.
    """
    prepared: list[Any] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            prepared.append(message)
            continue
        content = message.get("content")
        if content is None and message.get("role") == "assistant":
            message = {**message, "content": ""}
        elif isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise ChatFormatError(
                        f'content[{j}] must be a text part {{"type": "text", "text": ...}}; '
                        f"this model reads text only (got type {kind!r})",
                        message_index=i,
                        param="content",
                    )
                texts.append(part["text"])
            if not content_parts:
                message = {**message, "content": "\n".join(texts)}
        prepared.append(message)
    return prepared
