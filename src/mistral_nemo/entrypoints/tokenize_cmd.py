"""`mistral-nemo tokenize`: show the ids and pieces of a text or of a whole chat prompt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mistral_nemo.tokenizer import BpeTokenizer, TekkenTokenizer, load_tokenizer
from mistral_nemo.tokenizer.errors import ChatFormatError, TokenizerError


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "tokenize",
        help="print the token ids and pieces of a text or a conversation",
        description=(
            "Print token ids and pieces. Give a TEXT (or '-' for standard input), or --chat FILE with a "
            'JSON conversation: a list of messages, or an object {"messages": [...], "tools": [...]} '
            "as in an OpenAI chat request."
        ),
    )
    parser.add_argument("text", nargs="?", help="text to tokenize; '-' reads standard input")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="tekken.json, a GGUF file, or a model folder (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--chat", type=Path, metavar="FILE", help="encode a conversation in the model's chat format"
    )
    parser.add_argument("--bos", action="store_true", help="prepend <s> to a plain text")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.chat is None):
        raise TokenizerError("give either a TEXT or --chat FILE (exactly one)")
    if args.tokenizer is None:
        from mistral_nemo.model.embedded import embedded_model_path

        args.tokenizer = embedded_model_path()
    tokenizer = load_tokenizer(args.tokenizer)
    if args.chat is not None:
        messages, tools = _read_conversation(args.chat)
        ids = tokenizer.encode_chat(messages, tools)  # the model's own format: Tekken's, or its template
    else:
        text = sys.stdin.read() if args.text == "-" else args.text
        ids = tokenizer.encode(text, bos=args.bos)
    _print(tokenizer, ids, as_json=args.json)
    return 0


def _read_conversation(path: Path) -> tuple[list[Any], list[Any] | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ChatFormatError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(data, list):
        return data, None
    if isinstance(data, dict) and "messages" in data:
        return data["messages"], data.get("tools")
    raise ChatFormatError(f"{path} must hold a list of messages or an object with 'messages'")


def _piece(tokenizer: TekkenTokenizer | BpeTokenizer, token_id: int) -> str:
    """The token's text, quoted; a token holding part of a character shows its bytes (b'\\xf0\\x9f')."""
    raw = tokenizer.id_to_bytes(token_id)
    try:
        return json.dumps(raw.decode("utf-8"), ensure_ascii=False)
    except UnicodeDecodeError:
        return repr(raw)


def _print(tokenizer: TekkenTokenizer | BpeTokenizer, ids: list[int], as_json: bool) -> None:
    if as_json:
        pieces = [tokenizer.id_to_piece(i) for i in ids]
        raw = [tokenizer.id_to_bytes(i).hex() for i in ids]
        print(json.dumps({"count": len(ids), "ids": ids, "pieces": pieces, "bytes": raw}, ensure_ascii=False))
        return
    pieces = [_piece(tokenizer, i) for i in ids]
    print(f"{len(ids)} tokens")
    for token_id, piece in zip(ids, pieces, strict=True):
        kind = "control" if tokenizer.is_special(token_id) else "text"
        print(f"{token_id:>8}  {kind:<7}  {piece}")
