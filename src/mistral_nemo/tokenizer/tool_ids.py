"""Tool-call ids: Mistral models know 9 alphanumeric characters; clients send anything.

OpenAI clients send ids like "call_abc123..." or UUIDs. Each is mapped to a 9-character id
derived from a hash of it, so the same client id always gives the same prompt tokens (prefix
caching keeps working across turns), and the map remembers the way back for responses.
"""

from __future__ import annotations

import hashlib
import re

MISTRAL_TOOL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def is_mistral_tool_call_id(value: str) -> bool:
    return bool(MISTRAL_TOOL_CALL_ID.match(value))


def _derive_id(client_id: str, attempt: int) -> str:
    digest = int.from_bytes(hashlib.sha256(f"{attempt}:{client_id}".encode()).digest(), "big")
    chars = []
    for _ in range(9):
        digest, index = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[index])
    return "".join(chars)


class ToolCallIdMap:
    """A two-way map between client tool-call ids and 9-character Mistral ids, for one conversation."""

    def __init__(self) -> None:
        self._to_mistral: dict[str, str] = {}
        self._to_client: dict[str, str] = {}

    def to_mistral(self, client_id: str) -> str:
        """The 9-character id to put in the prompt for a client's id (valid ids pass through)."""
        if client_id in self._to_mistral:
            return self._to_mistral[client_id]
        if is_mistral_tool_call_id(client_id) and client_id not in self._to_client:
            mistral_id = client_id
        else:
            attempt = 0
            mistral_id = _derive_id(client_id, attempt)
            # A clash needs two ids in one conversation hashing alike (1 in 62**9); still handled.
            while mistral_id in self._to_client or mistral_id in self._to_mistral:
                attempt += 1
                mistral_id = _derive_id(client_id, attempt)
        self._to_mistral[client_id] = mistral_id
        self._to_client[mistral_id] = client_id
        return mistral_id

    def to_client(self, mistral_id: str) -> str:
        """The client's id for a Mistral id seen in this conversation; an unknown id is returned as is."""
        return self._to_client.get(mistral_id, mistral_id)

    def __len__(self) -> int:
        return len(self._to_mistral)
