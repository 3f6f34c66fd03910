"""Streaming ids -> text that never splits a UTF-8 character.

A BPE token can end in the middle of a multi-byte character (emoji, CJK); its bytes are
held back until the character completes. The pieces returned by `add` plus `flush` equal
`tokenizer.decode(all ids)` exactly, invalid bytes included (they become U+FFFD in both).
"""

from __future__ import annotations

import codecs
from typing import Protocol

from mistral_nemo.tokenizer.errors import TokenizerError
from mistral_nemo.tokenizer.tekken import SpecialTokenPolicy


class ByteTokenizer(Protocol):
    """What the detokenizer needs from a tokenizer."""

    def is_special(self, token_id: int) -> bool: ...

    def id_to_bytes(self, token_id: int) -> bytes: ...

    def id_to_piece(self, token_id: int) -> str: ...


class IncrementalDetokenizer:
    """Feed ids one at a time (or a few), read text as soon as it is complete."""

    def __init__(
        self, tokenizer: ByteTokenizer, special: SpecialTokenPolicy = SpecialTokenPolicy.SKIP
    ) -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Take one id; return the text that became complete (often "", never half a character)."""
        if self._tokenizer.is_special(token_id):
            if self._special is SpecialTokenPolicy.RAISE:  # before flushing: the held bytes stay pending
                raise TokenizerError(f"control token id {token_id} in a stream decoded with special=RAISE")
            # decode() decodes the BPE runs on each side of a control token separately,
            # so a character cannot span one: flush what is pending first.
            text = self._decoder.decode(b"", final=True)
            self._decoder.reset()
            if self._special is SpecialTokenPolicy.KEEP:
                text += self._tokenizer.id_to_piece(token_id)
            return text
        return self._decoder.decode(self._tokenizer.id_to_bytes(token_id))

    def add_many(self, token_ids: list[int]) -> str:
        return "".join(self.add(t) for t in token_ids)

    @property
    def pending_bytes(self) -> int:
        """How many bytes are held back waiting for the rest of a character."""
        return len(self._decoder.getstate()[0])

    def flush(self) -> str:
        """End of stream: whatever is held back, as U+FFFD if it never completed."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text
