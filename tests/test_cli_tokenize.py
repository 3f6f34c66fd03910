"""`mistral-nemo tokenize`, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mistral_common.protocol.instruct.request import ChatCompletionRequest

from tests.conftest import console_script


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cli = console_script("mistral-nemo")
    return subprocess.run([cli, *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_text_ids_match_reference(tekken_path: Path, reference) -> None:
    text = "Bonjour, 世界! def f(x):\n\treturn x  # 🎉"
    result = run_cli("tokenize", "--tokenizer", str(tekken_path), "--json", text)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = reference.instruct_tokenizer.tokenizer.encode(text, bos=False, eos=False)
    assert out["ids"] == expected
    assert out["count"] == len(expected)
    assert b"".join(bytes.fromhex(h) for h in out["bytes"]).decode() == text


def test_table_shows_pieces_and_partial_bytes(tekken_path: Path) -> None:
    result = run_cli("tokenize", "--tokenizer", str(tekken_path), "Hi 🎉")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "4 tokens"
    assert '"Hi"' in lines[1]
    assert "b' \\xf0\\x9f'" in lines[2]  # half an emoji is shown as bytes, not as U+FFFD


def test_stdin_and_bos(tekken_path: Path, tekken) -> None:
    result = run_cli(
        "tokenize", "--tokenizer", str(tekken_path), "--json", "--bos", "-", stdin="line one\nline two"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ids"] == [1, *tekken.encode("line one\nline two")]


def test_chat_file_matches_reference(tmp_path: Path, tekken_path: Path, reference) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "a1b2c3d4e",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "a1b2c3d4e", "content": '{"celsius": 21}'},
    ]
    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps({"messages": messages, "tools": tools}))
    result = run_cli("tokenize", "--tokenizer", str(tekken_path), "--chat", str(conversation), "--json")
    assert result.returncode == 0, result.stderr
    expected = reference.encode_chat_completion(
        ChatCompletionRequest(model="m", messages=messages, tools=tools)
    )
    assert json.loads(result.stdout)["ids"] == expected.tokens


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokenizer", "/nonexistent/tekken.json", "x"], "tokenizer not found"),
        (["--tokenizer", "{tekken}"], "give either a TEXT or --chat FILE"),
        (["--tokenizer", "{tekken}", "--chat", "{bad_chat}"], "messages[0]"),
        (["--tokenizer", "{tekken}", "--chat", "{not_json}"], "is not valid JSON"),
    ],
)
def test_errors_are_one_line_not_tracebacks(tmp_path: Path, tekken_path: Path, args: list[str], message: str):
    bad_chat = tmp_path / "bad.json"
    bad_chat.write_text(json.dumps([{"role": "assistant", "content": "hello"}]))
    not_json = tmp_path / "not.json"
    not_json.write_text("[{")
    paths = {"tekken": str(tekken_path), "bad_chat": str(bad_chat), "not_json": str(not_json)}
    result = run_cli("tokenize", *[a.format(**paths) for a in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
