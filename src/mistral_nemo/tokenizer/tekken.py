"""Tekken: the tiktoken-style byte-level BPE tokenizer of Mistral NeMo (tekken.json).

Ids 0 .. num_special-1 are control tokens (<unk>, <s>, </s>, [INST], ...); the BPE
vocabulary follows, so a BPE rank r has id r + num_special. The ranks are handed to
tiktoken already shifted, which keeps ordering (all BPE merging compares) and lets
tiktoken return final ids with no per-token Python work.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from mistral_nemo.tokenizer.errors import TokenizerError, TokenizerFileError

# The control-token table that tekken.json files before v7 imply when they carry no
# "special_tokens" list (NeMo's tekken_240718.json is one of them).
DEFAULT_CONTROL_TOKENS: tuple[str, ...] = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
)
FILLER_TEMPLATE = "<SPECIAL_{id}>"


class SpecialTokenPolicy(enum.Enum):
    """What decode does with control tokens."""

    SKIP = "skip"  # leave them out (the default: what a user should see)
    KEEP = "keep"  # write their text, e.g. "[INST]"
    RAISE = "raise"  # refuse to decode them


@dataclass(frozen=True)
class TekkenConfig:
    """The fields of a tekken.json that shape the tokenizer."""

    pattern: str
    vocab_size: int
    num_special_tokens: int
    version: str | None


class TekkenTokenizer:
    """Encode text to ids and back with a tekken.json vocabulary."""

    def __init__(
        self,
        ranked_pieces: Sequence[bytes],
        special_tokens: Sequence[str],
        config: TekkenConfig,
        name: str = "tekken",
    ) -> None:
        num_special = config.num_special_tokens
        inner_vocab = config.vocab_size - num_special
        if len(special_tokens) > num_special:
            raise TokenizerFileError(
                f"{len(special_tokens)} special tokens listed but default_num_special_tokens is {num_special}"
            )
        if len(ranked_pieces) < inner_vocab:
            raise TokenizerFileError(
                f"vocab has {len(ranked_pieces)} entries but default_vocab_size {config.vocab_size} "
                f"- {num_special} special tokens needs {inner_vocab}"
            )
        fillers = [FILLER_TEMPLATE.format(id=i) for i in range(len(special_tokens), num_special)]
        self._special: list[str] = [*special_tokens, *fillers]
        if len(set(self._special)) != len(self._special):
            raise TokenizerFileError("special token strings must be unique")
        self._special_ids: dict[str, int] = {text: i for i, text in enumerate(self._special)}
        self._pieces: list[bytes] = list(ranked_pieces[:inner_vocab])
        ranks = {piece: rank + num_special for rank, piece in enumerate(self._pieces)}
        if len(ranks) != inner_vocab:
            raise TokenizerFileError("vocab holds the same token_bytes twice")
        self.config = config
        self.name = name
        try:
            self._bpe = tiktoken.Encoding(
                name=name, pat_str=config.pattern, mergeable_ranks=ranks, special_tokens={}
            )
        except Exception as exc:  # tiktoken reports a bad regex as a plain ValueError
            raise TokenizerFileError(f"config.pattern is not a usable regex: {exc}") from exc

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> TekkenTokenizer:
        """Load a tekken.json; a broken or truncated file raises TokenizerFileError naming the problem."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TokenizerFileError(f"tokenizer file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerFileError(f"cannot read tokenizer file {path}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenizerFileError(
                f"{path} is not valid JSON (truncated or corrupt?): {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
        try:
            return cls.from_dict(data, name=path.stem)
        except TokenizerFileError as exc:
            raise TokenizerFileError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any, name: str = "tekken") -> TekkenTokenizer:
        """Build from the parsed JSON of a tekken.json file."""
        if not isinstance(data, dict) or "vocab" not in data or "config" not in data:
            raise TokenizerFileError("not a tekken tokenizer: expected an object with 'config' and 'vocab'")
        config = _read_config(data["config"])
        pieces = _read_vocab(data["vocab"])
        specials = _read_special_tokens(data.get("special_tokens"))
        return cls(pieces, specials, config, name=name)

    # ---- sizes and named ids -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, control tokens included (131072 for NeMo)."""
        return self.config.vocab_size

    @property
    def num_special_tokens(self) -> int:
        return len(self._special)

    @property
    def bos_id(self) -> int:
        return self.special_id("<s>")

    @property
    def eos_id(self) -> int:
        return self.special_id("</s>")

    @property
    def unk_id(self) -> int:
        return self.special_id("<unk>")

    @property
    def pad_id(self) -> int:
        return self.special_id("<pad>")

    @property
    def add_bos(self) -> bool:
        """Mistral prompts always start with <s>."""
        return True

    @property
    def eog_ids(self) -> frozenset[int]:
        """Ids that end a generated turn."""
        return frozenset({self.eos_id})

    @property
    def tool_calls_id(self) -> int | None:
        """The [TOOL_CALLS] control token, or None when the vocabulary has no tool-call format."""
        try:
            return self.special_id("[TOOL_CALLS]")
        except TokenizerError:
            return None

    def special_id(self, text: str) -> int:
        """The id of a control token by its text, e.g. special_id("[INST]") == 3."""
        try:
            return self._special_ids[text]
        except KeyError:
            raise TokenizerError(f"unknown control token {text!r}") from None

    def is_special(self, token_id: int) -> bool:
        return 0 <= token_id < len(self._special)

    # ---- text <-> ids --------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text to ids. Text never produces a control id, whatever it contains."""
        ids = self._bpe.encode_ordinary(text)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], special: SpecialTokenPolicy = SpecialTokenPolicy.SKIP) -> str:
        """Ids to text. Runs of BPE ids are decoded together; bytes that are not UTF-8 become U+FFFD."""
        parts: list[str] = []
        run: list[int] = []
        for token_id in ids:
            if self.is_special(token_id):
                if run:
                    parts.append(self._bpe.decode_bytes(run).decode("utf-8", errors="replace"))
                    run = []
                parts.append(self._special_text(token_id, special))
            else:
                self._check_id(token_id)
                run.append(token_id)
        if run:
            parts.append(self._bpe.decode_bytes(run).decode("utf-8", errors="replace"))
        return "".join(parts)

    def id_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes of a BPE token; a control token gives its text encoded as UTF-8."""
        if self.is_special(token_id):
            return self._special[token_id].encode()
        self._check_id(token_id)
        return self._pieces[token_id - len(self._special)]

    def id_to_piece(self, token_id: int) -> str:
        """A token as text (control tokens by name; partial UTF-8 shown as U+FFFD)."""
        return self.id_to_bytes(token_id).decode("utf-8", errors="replace")

    def piece_to_id(self, piece: str | bytes) -> int | None:
        """The id of a control token's text or of one exact BPE piece, or None."""
        if isinstance(piece, str):
            if piece in self._special_ids:
                return self._special_ids[piece]
            piece = piece.encode()
        try:
            return self._bpe.encode_single_token(piece)
        except KeyError:
            return None

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Encode an OpenAI-style conversation in the Mistral v3-Tekken format, ready for generation."""
        from mistral_nemo.tokenizer.mistral_chat import MistralChatEncoder

        return MistralChatEncoder(self).encode(messages, tools).ids

    # ---- helpers -------------------------------------------------------------------------------

    def _special_text(self, token_id: int, policy: SpecialTokenPolicy) -> str:
        if policy is SpecialTokenPolicy.SKIP:
            return ""
        if policy is SpecialTokenPolicy.KEEP:
            return self._special[token_id]
        raise TokenizerError(f"control token {self._special[token_id]!r} (id {token_id}) in decode input")

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.config.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")


def _read_config(raw: Any) -> TekkenConfig:
    if not isinstance(raw, dict):
        raise TokenizerFileError("'config' must be an object")
    for key in ("pattern", "default_vocab_size", "default_num_special_tokens"):
        if key not in raw:
            raise TokenizerFileError(f"config.{key} is missing")
    pattern, vocab_size, num_special = (
        raw["pattern"],
        raw["default_vocab_size"],
        raw["default_num_special_tokens"],
    )
    if not isinstance(pattern, str) or not pattern:
        raise TokenizerFileError("config.pattern must be a non-empty string")
    if not isinstance(vocab_size, int) or not isinstance(num_special, int) or num_special < 3:
        raise TokenizerFileError("config.default_vocab_size and default_num_special_tokens must be integers")
    if vocab_size <= num_special + 256:
        raise TokenizerFileError(
            f"config.default_vocab_size {vocab_size} leaves no room for 256 byte tokens after "
            f"{num_special} special tokens"
        )
    version = raw.get("version")
    return TekkenConfig(pattern, vocab_size, num_special, version if isinstance(version, str) else None)


def _read_vocab(raw: Any) -> list[bytes]:
    if not isinstance(raw, list):
        raise TokenizerFileError("'vocab' must be a list")
    pieces: list[bytes] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or "token_bytes" not in entry or "rank" not in entry:
            raise TokenizerFileError(f"vocab[{i}] must be an object with 'rank' and 'token_bytes'")
        if entry["rank"] != i:
            raise TokenizerFileError(
                f"vocab[{i}] has rank {entry['rank']}; ranks must be 0, 1, 2, ... in order"
            )
        try:
            piece = base64.b64decode(entry["token_bytes"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise TokenizerFileError(f"vocab[{i}].token_bytes is not valid base64") from None
        if i < 256 and piece != bytes([i]):
            raise TokenizerFileError(f"vocab[{i}] must be the single byte {i:#04x}")
        pieces.append(piece)
    return pieces


def _read_special_tokens(raw: Any) -> list[str]:
    if raw is None:
        return list(DEFAULT_CONTROL_TOKENS)
    if not isinstance(raw, list):
        raise TokenizerFileError("'special_tokens' must be a list")
    texts: list[str] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("token_str"), str):
            raise TokenizerFileError(f"special_tokens[{i}] must be an object with a 'token_str' string")
        if entry.get("rank") != i:
            raise TokenizerFileError(f"special_tokens[{i}] has rank {entry.get('rank')}; expected {i}")
        texts.append(entry["token_str"])
    return texts
