"""Byte-level (GPT-2 style) BPE tokenizers of non-Tekken models, built on Hugging Face `tokenizers`.

Two sources: the tokenizer a GGUF file embeds (`tokenizer.ggml.*` metadata, e.g. SmolLM2) and a
Hugging Face folder (tokenizer.json + tokenizer_config.json). Tokens a GGUF marks control (type 3)
or user-defined (type 4) become added tokens that text containing them encodes to, as in llama.cpp
and transformers; control tokens are the "special" ones that decode(SKIP) leaves out.

GGUF pre-tokenization follows llama.cpp's `tokenizer.ggml.pre` types (see bpe_pretokenize.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models

from mistral_nemo.tokenizer.bpe_pretokenize import (
    PRE_TOKENIZER_NAMES,
    byte_to_unicode,
    pre_tokenizer_for,
    token_bytes,
)
from mistral_nemo.tokenizer.chat_template import ChatTemplate
from mistral_nemo.tokenizer.errors import ChatFormatError, TokenizerError, TokenizerFileError
from mistral_nemo.tokenizer.tekken import SpecialTokenPolicy

_CONTROL, _USER_DEFINED = 3, 4
# Control tokens that end a turn in chat models (llama.cpp's end-of-generation list, in part).
_EOG_TEXTS = frozenset(
    ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>")
)
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class BpeTokenizer:
    """Same interface as TekkenTokenizer, for a byte-level BPE vocabulary with a jinja chat template."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        tokens: Sequence[str | None],
        *,
        bos_id: int | None,
        eos_id: int | None,
        chat_template: str | None = None,
        add_bos: bool = False,
        eog_ids: Iterable[int] = (),
        template_tokens: Mapping[str, str] | None = None,
        name: str = "bpe",
    ) -> None:
        """`template_tokens`: further chat-template variables such as unk_token / pad_token."""
        self._tok = tokenizer
        self._tokens = list(tokens)
        self._added = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._special = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
        self._bytes: list[bytes | None] = [None] * len(self._tokens)
        self._bos_id, self._eos_id = bos_id, eos_id
        self.add_bos = add_bos
        self.name = name
        eog = {i for i in eog_ids if 0 <= i < len(self._tokens)}
        eog |= {i for i in self._special if self._tokens[i] in _EOG_TEXTS}
        self.eog_ids: frozenset[int] = frozenset(eog | ({eos_id} if eos_id is not None else set()))
        self.chat_template: ChatTemplate | None = None
        if chat_template:
            bos_text, eos_text = self._text_of(bos_id), self._text_of(eos_id)
            self.chat_template = ChatTemplate(
                chat_template, bos_text, eos_text, special_tokens=template_tokens
            )

    # ---- loading -------------------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, fields: Mapping[str, Any], name: str = "gguf") -> BpeTokenizer:
        """Build from `read_gguf_metadata(...)` of a file whose tokenizer.ggml.model is "gpt2"."""
        model = fields.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise TokenizerFileError(
                f"GGUF tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') vocabularies "
                "are supported"
            )
        tokens = _list_of(fields, "tokenizer.ggml.tokens", str)
        merges = _list_of(fields, "tokenizer.ggml.merges", str)
        types = (
            _list_of(fields, "tokenizer.ggml.token_type", int)
            if "tokenizer.ggml.token_type" in fields
            else []
        )
        if types and len(types) != len(tokens):
            raise TokenizerFileError(
                f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
            )
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # as llama.cpp does
        pre = fields.get("tokenizer.ggml.pre", "")
        pre_tokenizer, ignore_merges = pre_tokenizer_for(pre if isinstance(pre, str) else "")
        pairs = []
        for rank, merge in enumerate(merges):
            cut = merge.find(" ", 1)  # llama.cpp: the first space after the first character
            if cut < 0:
                raise TokenizerFileError(f"tokenizer.ggml.merges[{rank}] = {merge!r} is not two tokens")
            pairs.append((merge[:cut], merge[cut + 1 :]))
        vocab = {t: i for i, t in enumerate(tokens)}
        try:
            bpe = models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)
        except Exception as exc:  # tokenizers reports a merge of unknown tokens as a plain Exception
            raise TokenizerFileError(f"GGUF BPE vocabulary and merges do not fit together: {exc}") from None
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.ByteLevel()
        added: dict[int, list[AddedToken]] = {_CONTROL: [], _USER_DEFINED: []}
        for t, kind in zip(tokens, types, strict=False):
            if kind in added:
                added[kind].append(AddedToken(t, special=kind == _CONTROL, normalized=False))
        tok.add_special_tokens(added[_CONTROL])
        tok.add_tokens(added[_USER_DEFINED])

        def token_id(key: str) -> int | None:
            value = fields.get(f"tokenizer.ggml.{key}")
            return value if isinstance(value, int) and 0 <= value < len(tokens) else None

        specials = {"unk_token": token_id("unknown_token_id"), "pad_token": token_id("padding_token_id")}
        template = fields.get("tokenizer.chat_template")
        add_bos = fields.get(
            "tokenizer.ggml.add_bos_token", PRE_TOKENIZER_NAMES.get(pre) in ("llama3", "tekken")
        )
        return cls(
            tok,
            tokens,
            bos_id=token_id("bos_token_id"),
            eos_id=token_id("eos_token_id"),
            chat_template=template if isinstance(template, str) else None,
            add_bos=bool(add_bos),
            eog_ids=[i for i in (token_id("eot_token_id"), token_id("eom_token_id")) if i is not None],
            template_tokens={k: tokens[i] for k, i in specials.items() if i is not None},
            name=name,
        )

    @classmethod
    def from_tokenizer_json(
        cls, path: str | Path, tokenizer_config: Mapping[str, Any] | None = None
    ) -> BpeTokenizer:
        """Load a Hugging Face tokenizer.json (or a folder holding one, its tokenizer_config.json and
        chat_template.jinja). Only byte-level BPE (a ByteLevel decoder) is accepted."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = folder / "tokenizer.json" if path.is_dir() else path
        try:
            text = file.read_text(encoding="utf-8")
            data = json.loads(text)
            if tokenizer_config is None and (folder / "tokenizer_config.json").is_file():
                tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise TokenizerFileError(f"tokenizer file not found: {exc.filename}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerFileError(f"cannot read tokenizer files in {folder}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise TokenizerFileError(f"{file} is not a Hugging Face tokenizer.json")
        if data["model"].get("type") != "BPE" or not _has_byte_level(data.get("decoder")):
            raise TokenizerFileError(
                f"{file}: only byte-level BPE tokenizers (ByteLevel decoder) are supported"
            )
        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:
            raise TokenizerFileError(f"{file} cannot be loaded: {exc}") from None
        tok.no_truncation()
        tok.no_padding()
        config = dict(tokenizer_config or {})
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():  # transformers prefers the separate file
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        texts = {k: _token_text(config.get(k)) for k in _NAMED_SPECIALS}
        n = tok.get_vocab_size(with_added_tokens=True)
        return cls(
            tok,
            [tok.id_to_token(i) for i in range(n)],
            bos_id=tok.token_to_id(texts["bos_token"]) if texts["bos_token"] else None,
            eos_id=tok.token_to_id(texts["eos_token"]) if texts["eos_token"] else None,
            chat_template=template if isinstance(template, str) else None,
            add_bos=bool(config.get("add_bos_token", False)),
            template_tokens={k: v for k, v in texts.items() if v is not None},
            name=folder.name,
        )

    # ---- sizes and named ids -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def bos_id(self) -> int:
        if self._bos_id is None:
            raise TokenizerError("this tokenizer has no BOS token")
        return self._bos_id

    @property
    def eos_id(self) -> int:
        if self._eos_id is None:
            raise TokenizerError("this tokenizer has no EOS token")
        return self._eos_id

    @property
    def tool_calls_id(self) -> int | None:
        """The [TOOL_CALLS] control token, or None when the vocabulary has no tool-call format."""
        try:
            return self.special_id("[TOOL_CALLS]")
        except TokenizerError:
            return None

    def special_id(self, text: str) -> int:
        """The id of an added (control or user-defined) token by its text, e.g. "<|im_start|>"."""
        try:
            return self._added[text]
        except KeyError:
            raise TokenizerError(f"unknown control token {text!r}") from None

    def is_special(self, token_id: int) -> bool:
        """Control tokens: the ones decode(SKIP) leaves out."""
        return token_id in self._special

    # ---- text <-> ids --------------------------------------------------------------------------

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text to ids; the text of an added token (e.g. "<|im_start|>") encodes to that token."""
        # encode_batch releases the GIL, encode holds it: a long text must not stall the other threads
        # (the server encodes in a worker thread beside its event loop).
        ids = self._tok.encode_batch([text], add_special_tokens=False)[0].ids
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], special: SpecialTokenPolicy = SpecialTokenPolicy.SKIP) -> str:
        """Ids to text, as transformers' decode(skip_special_tokens=special is SKIP) gives it."""
        ids = list(ids)
        for token_id in ids:
            self._check_id(token_id)
            if special is SpecialTokenPolicy.RAISE and token_id in self._special:
                raise TokenizerError(
                    f"control token {self._tokens[token_id]!r} (id {token_id}) in decode input"
                )
        return self._tok.decode(ids, skip_special_tokens=special is SpecialTokenPolicy.SKIP)

    def id_to_bytes(self, token_id: int) -> bytes:
        """The raw bytes of a token (the GPT-2 byte spelling undone); an added token gives its text."""
        self._check_id(token_id)
        cached = self._bytes[token_id]
        if cached is None:
            cached = self._bytes[token_id] = token_bytes(self._tokens[token_id] or "")
        return cached

    def id_to_piece(self, token_id: int) -> str:
        """A token as text (control tokens by name; partial UTF-8 shown as U+FFFD)."""
        return self.id_to_bytes(token_id).decode("utf-8", errors="replace")

    def piece_to_id(self, piece: str | bytes) -> int | None:
        """The id of an added token's text or of one exact BPE piece given as text or bytes, or None."""
        if isinstance(piece, str):
            if piece in self._added:
                return self._added[piece]
            piece = piece.encode("utf-8")
        spelling = byte_to_unicode()
        return self._tok.token_to_id("".join(spelling[b] for b in piece))

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text the chat template makes of a conversation."""
        if self.chat_template is None:
            raise ChatFormatError("this model has no chat template (tokenizer.chat_template)")
        return self.chat_template.render(messages, tools, add_generation_prompt=add_generation_prompt)

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[int]:
        """An OpenAI-style conversation through the chat template, ready for generation (no extra BOS)."""
        return self.encode(self.render_chat(messages, tools))

    # ---- helpers -------------------------------------------------------------------------------

    def _text_of(self, token_id: int | None) -> str | None:
        return self._tokens[token_id] if token_id is not None else None

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(
                f"token id {token_id} is outside the vocabulary (0..{len(self._tokens) - 1})"
            )


def _list_of(fields: Mapping[str, Any], key: str, kind: type) -> list[Any]:
    value = fields.get(key)
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise TokenizerFileError(f"GGUF metadata {key} is missing or not a list of {kind.__name__}")
    return value


def _has_byte_level(decoder: Any) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return decoder.get("type") == "Sequence" and any(_has_byte_level(d) for d in decoder.get("decoders", []))


def _token_text(value: Any) -> str | None:
    """A tokenizer_config special token: a string or a serialized AddedToken {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
