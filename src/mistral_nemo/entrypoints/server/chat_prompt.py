"""Chat messages -> prompt ids: the Mistral v3-Tekken encoder, or the model's own chat template.

Mistral's extras live here: `safe_prompt` (its guardrail system prompt, prepended) and a final
assistant message with `prefix: true`, which the answer continues. For a chat template, OpenAI's
shapes are normalised first (text parts, null assistant content), as vLLM does.

Encoding is CPU work: the endpoints call `build_prompt` in a worker thread, never on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mistral_nemo.entrypoints.server.errors import APIError
from mistral_nemo.entrypoints.server.protocol import ChatCompletionRequest
from mistral_nemo.entrypoints.server.state import is_tekken
from mistral_nemo.tokenizer import MistralChatEncoder, Tokenizer, ToolCallIdMap
from mistral_nemo.tokenizer.chat_template import openai_messages_for_template

ROLES = ("system", "user", "assistant", "tool")

# Mistral's guardrail prompt, prepended as a system message when a request sets safe_prompt.
SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. "
    "Ensure replies promote fairness and positivity."
)


@dataclass
class ChatPrompt:
    ids: list[int]
    tool_call_ids: ToolCallIdMap | None = None
    prefix: str = ""  # the text of a final assistant message with prefix: true


def build_prompt(tokenizer: Tokenizer, body: ChatCompletionRequest) -> ChatPrompt:
    messages = list(body.messages)
    if not messages:
        raise APIError(400, "messages must hold at least one message", param="messages")
    messages = [_developer_as_system(m) for m in messages]
    if body.safe_prompt:
        messages.insert(0, {"role": "system", "content": SAFE_PROMPT})
    tools = body.tools or None
    prefix = _prefix_text(messages[-1])
    if is_tekken(tokenizer):
        encoded = MistralChatEncoder(tokenizer).encode(messages, tools)
        return ChatPrompt(encoded.ids, encoded.tool_call_ids, prefix)
    _check_roles(messages)  # a chat template renders whatever it is given: check the basics here
    template = getattr(tokenizer, "chat_template", None)
    messages = openai_messages_for_template(messages, bool(template and template.reads_content_parts))
    if prefix:  # a chat template knows no prefix: render the turns before it, then append its text
        return ChatPrompt(
            tokenizer.encode_chat(messages[:-1], tools) + tokenizer.encode(prefix), None, prefix
        )
    return ChatPrompt(tokenizer.encode_chat(messages, tools))


def message_text_length(messages: list[Any]) -> int:
    """Characters of text content in the messages: the prompt holds at least these."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict)]
            total += sum(len(t) for t in texts if isinstance(t, str))
    return total


def _developer_as_system(message: Any) -> Any:
    """OpenAI's newer name for the system role."""
    if isinstance(message, dict) and message.get("role") == "developer":
        return {**message, "role": "system"}
    return message


def _check_roles(messages: list[Any]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(
                400, f"messages[{i}]: each message needs a role: one of {', '.join(ROLES)}", param="role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise APIError(
                400, f"messages[{i}]: content must be a string or a list of parts", param="content"
            )


def _prefix_text(message: Any) -> str:
    if not (
        isinstance(message, dict) and message.get("role") == "assistant" and message.get("prefix") is True
    ):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n\n".join(p for p in parts if isinstance(p, str) and p)
    return ""
