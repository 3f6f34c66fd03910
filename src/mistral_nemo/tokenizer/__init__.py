"""Text <-> token ids, and conversations -> prompt ids, for Mistral NeMo (Tekken) models."""

from __future__ import annotations

from pathlib import Path

from mistral_nemo.tokenizer.detokenizer import IncrementalDetokenizer
from mistral_nemo.tokenizer.errors import ChatFormatError, TokenizerError, TokenizerFileError
from mistral_nemo.tokenizer.mistral_chat import EncodedChat, MistralChatEncoder
from mistral_nemo.tokenizer.tekken import SpecialTokenPolicy, TekkenTokenizer
from mistral_nemo.tokenizer.tool_ids import ToolCallIdMap
from mistral_nemo.tokenizer.tool_parser import ParsedToolCall, ToolCallParser, parse_tool_calls

__all__ = [
    "ChatFormatError",
    "EncodedChat",
    "IncrementalDetokenizer",
    "MistralChatEncoder",
    "ParsedToolCall",
    "SpecialTokenPolicy",
    "TekkenTokenizer",
    "TokenizerError",
    "TokenizerFileError",
    "ToolCallIdMap",
    "ToolCallParser",
    "load_tokenizer",
    "parse_tool_calls",
]


def load_tokenizer(path: str | Path) -> TekkenTokenizer:
    """Load the tokenizer in a file or a model folder, recognised by its contents, not its name."""
    path = Path(path)
    if path.is_dir():
        return TekkenTokenizer.from_file(_find_tekken_json(path))
    if not path.exists():
        raise TokenizerFileError(f"tokenizer not found: {path}")
    if _looks_like_tekken(path):
        return TekkenTokenizer.from_file(path)
    raise TokenizerFileError(f"{path} is not a tokenizer this version reads (expected a tekken.json)")


def _find_tekken_json(folder: Path) -> Path:
    preferred = folder / "tekken.json"
    if preferred.is_file():
        return preferred
    for candidate in sorted(folder.glob("*.json")):
        if _looks_like_tekken(candidate):
            return candidate
    raise TokenizerFileError(f"no Tekken tokenizer (tekken.json) in {folder}")


def _looks_like_tekken(path: Path) -> bool:
    """A JSON object file; TekkenTokenizer.from_file then says exactly what is wrong, if anything."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.lstrip()[:1] == b"{"
