"""Text <-> token ids, and conversations -> prompt ids: Tekken (Mistral NeMo) and byte-level BPE models."""

from __future__ import annotations

from pathlib import Path

from mistral_nemo.formats.gguf import GgufFileError, is_gguf_file, read_gguf_metadata
from mistral_nemo.tokenizer.base import Tokenizer
from mistral_nemo.tokenizer.bpe import BpeTokenizer
from mistral_nemo.tokenizer.chat_template import ChatTemplate
from mistral_nemo.tokenizer.detokenizer import IncrementalDetokenizer
from mistral_nemo.tokenizer.errors import ChatFormatError, TokenizerError, TokenizerFileError
from mistral_nemo.tokenizer.mistral_chat import EncodedChat, MistralChatEncoder
from mistral_nemo.tokenizer.tekken import SpecialTokenPolicy, TekkenTokenizer
from mistral_nemo.tokenizer.tool_ids import ToolCallIdMap
from mistral_nemo.tokenizer.tool_parser import ParsedToolCall, ToolCallParser, parse_tool_calls

__all__ = [
    "BpeTokenizer",
    "ChatFormatError",
    "ChatTemplate",
    "EncodedChat",
    "IncrementalDetokenizer",
    "MistralChatEncoder",
    "ParsedToolCall",
    "SpecialTokenPolicy",
    "TekkenTokenizer",
    "Tokenizer",
    "TokenizerError",
    "TokenizerFileError",
    "ToolCallIdMap",
    "ToolCallParser",
    "load_tokenizer",
    "parse_tool_calls",
]


def load_tokenizer(path: str | Path) -> TekkenTokenizer | BpeTokenizer:
    """Load the tokenizer in a file or a model folder, recognised by its contents, not its name.

    A Tekken JSON file (or a folder with one) gives a TekkenTokenizer; a GGUF file (magic b"GGUF")
    gives the BpeTokenizer its metadata describes; a folder with a Hugging Face tokenizer.json and
    no Tekken file gives a BpeTokenizer from tokenizer.json + tokenizer_config.json.
    """
    path = Path(path)
    if path.is_dir():
        tekken = _find_tekken_json(path)
        if tekken is not None:
            return TekkenTokenizer.from_file(tekken)
        if (path / "tokenizer.json").is_file():
            return BpeTokenizer.from_tokenizer_json(path)
        raise TokenizerFileError(f"no tokenizer in {path}: expected tekken.json or tokenizer.json")
    if not path.exists():
        raise TokenizerFileError(f"tokenizer not found: {path}")
    if is_gguf_file(path):
        try:
            fields = read_gguf_metadata(path)
        except GgufFileError as exc:  # the tokenizer's callers handle TokenizerError
            raise TokenizerFileError(str(exc)) from exc
        return BpeTokenizer.from_gguf_metadata(fields, name=path.stem)
    if _is_json_object(path):
        return TekkenTokenizer.from_file(path)  # says exactly what is wrong if it is not a Tekken file
    raise TokenizerFileError(
        f"{path} is not a tokenizer this version reads (expected a tekken.json, a GGUF file or a folder "
        "with tokenizer.json)"
    )


def _find_tekken_json(folder: Path) -> Path | None:
    """tekken.json if present (then loading it reports any damage); else any JSON that reads as Tekken."""
    preferred = folder / "tekken.json"
    if preferred.is_file():
        return preferred
    return next((p for p in sorted(folder.glob("*.json")) if _has_tekken_keys(p)), None)


def _has_tekken_keys(path: Path) -> bool:
    # A Tekken file opens with its config; HF config.json / tokenizer.json have none of these keys.
    try:
        with path.open("rb") as f:
            head = f.read(8192)
    except OSError:
        return False
    return b'"default_num_special_tokens"' in head or b'"token_bytes"' in head


def _is_json_object(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.lstrip()[:1] == b"{"
