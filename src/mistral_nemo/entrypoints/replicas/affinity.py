"""The routing key of a request: requests of one conversation share it, so they share a replica.

A conversation's later turns repeat its first messages, and the replica that answered them holds
their KV blocks in its prefix cache. The key is a hash of what every turn starts with:
- chat (`messages`): the messages up to and including the first user message (system prompt,
  tools and first question stay the same while the conversation grows);
- text completions (`prompt`): the first PROMPT_PREFIX_CHARS characters of the (first) prompt.
Requests that are not JSON, or have neither field, have no key and go to any replica.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PROMPT_PREFIX_CHARS = 256  # about a prompt's first 50-80 tokens: its system text, few-shot header...


def conversation_key(body: bytes) -> str | None:
    """A short stable hash of the conversation's opening, or None when the request has none."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None  # the replica answers the 400 that a single server would
    if not isinstance(request, dict):
        return None
    opening = _chat_opening(request.get("messages"))
    if opening is None:
        opening = _prompt_opening(request.get("prompt"))
    if opening is None:
        return None
    text = json.dumps(opening, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _chat_opening(messages: Any) -> list[Any] | None:
    if not isinstance(messages, list) or not messages:
        return None
    for position, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return messages[: position + 1]
    return messages[:1]


def _prompt_opening(prompt: Any) -> Any:
    if isinstance(prompt, list) and prompt:  # several prompts, or token ids
        prompt = prompt[0] if isinstance(prompt[0], (str, list)) else prompt
    if isinstance(prompt, str) and prompt:
        return prompt[:PROMPT_PREFIX_CHARS]
    if isinstance(prompt, list) and prompt:  # token ids: about as many tokens as the characters above
        return prompt[: PROMPT_PREFIX_CHARS // 4]
    return None
