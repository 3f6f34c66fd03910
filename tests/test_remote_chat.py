"""`mistral-nemo chat --url`: the terminal chat against the real server (embedded model, loopback)."""

from __future__ import annotations

import io
import subprocess

import pytest

from mistral_nemo.entrypoints.cli import main
from tests.conftest import console_script
from tests.server_fixture import API_KEY, RunningServer, smol_server

QUESTION = "What is the capital of France?"
__all__ = ["smol_server"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def server(smol_server: RunningServer) -> str:
    return smol_server.base_url


def _chat(*args: str) -> subprocess.CompletedProcess[str]:
    command = [console_script("mistral-nemo"), "chat", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_prompt_answers_from_the_server(server: str) -> None:
    result = _chat("--url", server, "--api-key", API_KEY, "--prompt", QUESTION, "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Loaded" not in result.stderr  # no local model


def test_wrong_key_is_a_one_line_error(server: str) -> None:
    result = _chat("--url", server, "--api-key", "wrong", "--prompt", QUESTION)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("mistral-nemo chat: error: the server answered 401: incorrect API key")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "the server answered 404: the model 'no-such-model' does not exist"),
        (["--max-tokens", "100000"], "the server answered 400: "),
    ],
)
def test_server_errors_are_one_line(server: str, args: list[str], message: str, capsys) -> None:
    argv = ["chat", "--url", server, "--api-key", API_KEY, "--prompt", QUESTION, *args]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"mistral-nemo chat: error: {message}"), err


def test_unreachable_server(capsys) -> None:
    assert main(["chat", "--url", "http://127.0.0.1:9", "--prompt", QUESTION]) == 2
    assert capsys.readouterr().err.startswith("mistral-nemo chat: error: cannot talk to http://127.0.0.1:9")


def test_interactive_keeps_the_conversation(server: str, monkeypatch, capsys) -> None:
    lines = [QUESTION, "/help", "And of Germany?", "/system You are terse.", "Hi", "/exit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    sent: list[list[dict]] = []
    from mistral_nemo.entrypoints import remote_chat

    answer_pieces = remote_chat.RemoteConversation.answer_pieces

    def spy(self, conversation):
        sent.append(conversation)
        return answer_pieces(self, conversation)

    monkeypatch.setattr(remote_chat.RemoteConversation, "answer_pieces", spy)
    assert (
        main(["chat", "--url", server, "--api-key", API_KEY, "--temperature", "0", "--max-tokens", "20"]) == 0
    )
    out, err = capsys.readouterr()
    assert "Paris" in out
    assert "Chatting with" in err and "/reset" in err and "(system prompt set; conversation cleared)" in err
    assert [[m["role"] for m in messages] for messages in sent] == [
        ["user"],
        ["user", "assistant", "user"],
        ["system", "user"],
    ]
    assert sent[1][0]["content"] == QUESTION and "Paris" in sent[1][1]["content"]
    assert sent[2][0]["content"] == "You are terse."
