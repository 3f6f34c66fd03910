"""The one `Tokenizer` protocol: what Tekken, the BPE / GGUF tokenizer (and any later one) offer the
model loaders, the engine and the server."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from mistral_nemo.tokenizer.tekken import SpecialTokenPolicy


@runtime_checkable
class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def add_bos(self) -> bool: ...

    @property
    def eog_ids(self) -> frozenset[int]:
        """Ids that end a generated turn."""
        ...

    @property
    def tool_calls_id(self) -> int | None:
        """The control token that opens tool calls ([TOOL_CALLS]), or None: no tool-call format."""
        ...

    def special_id(self, text: str) -> int: ...

    def is_special(self, token_id: int) -> bool: ...

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int], special: SpecialTokenPolicy = SpecialTokenPolicy.SKIP) -> str: ...

    def id_to_bytes(self, token_id: int) -> bytes: ...

    def id_to_piece(self, token_id: int) -> str:
        """A token as text (control tokens by name; partial UTF-8 shown as U+FFFD)."""
        ...

    def piece_to_id(self, piece: str | bytes) -> int | None: ...

    def encode_chat(self, messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> list[int]: ...
