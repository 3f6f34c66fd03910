"""The terminal conversation shared by `chat` (a local model) and `chat --url` (a running server).

A Conversation keeps the messages and streams each answer into them; where answers come from is
the subclass's one method. The prompt loop reads messages (line editing and history through
Python's readline on a terminal), runs /commands, and survives Ctrl-C: at the prompt it says how
to leave (Ctrl-D or /bye, as Ollama does); during an answer it stops the answer and keeps what was said.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from mistral_nemo.engine.errors import RequestError
from mistral_nemo.tokenizer.errors import ChatFormatError

HELP = """Commands:
  /system TEXT   set the system prompt (and start over)
  /reset         forget the conversation
  /bye           quit (also /exit, or Ctrl-D)
  /help          this text
End a line with \\ to continue on the next line, or wrap several lines in \"\"\".
Ctrl-C stops an answer; the arrow keys edit the line and recall earlier ones."""
LEAVE_HINT = "(Use Ctrl-D or /bye to exit.)"


class Conversation:
    """Messages so far, and a system prompt; `reply` adds a turn."""

    def __init__(self, system: str | None = None) -> None:
        self.system = system
        self.messages: list[dict[str, Any]] = []
        self.note: str | None = None  # why the last answer stopped early, for the terminal

    def reset(self) -> None:
        self.messages = []

    def answer_pieces(self, conversation: list[dict[str, Any]]) -> Iterator[str]:
        """Stream the answer to `conversation` (the subclass's one job); set self.note to explain an
        early stop."""
        raise NotImplementedError

    def reply(self, text: str, out: TextIO) -> str:
        """Add the user's message, stream the answer to `out`, keep both in the conversation."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        conversation = [*system, *self.messages, {"role": "user", "content": text}]
        self.note = None
        pieces: list[str] = []
        stream = self.answer_pieces(conversation)
        try:
            for piece in stream:
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            self.note = "(stopped)"  # keep what was said so far
        finally:
            stream.close()  # aborts the request (locally, or by closing the connection)
        out.write("\n")
        answer = "".join(pieces)
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer or " "}]
        return answer


def run_prompt(conversation: Conversation, prompt: str) -> None:
    """--prompt: one answer on stdout; a note on stderr if it stopped early."""
    conversation.reply(prompt, out=sys.stdout)
    if conversation.note:
        print(conversation.note, file=sys.stderr)


def interactive(conversation: Conversation, greeting: str) -> None:
    """The prompt loop, until Ctrl-D or /bye."""
    _enable_line_editing()
    print(f"{greeting} /help for commands, Ctrl-D or /bye to quit.", file=sys.stderr)
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:
            print(f"\n{LEAVE_HINT}", file=sys.stderr)
            continue
        if text is None:
            return
        if text.startswith("/"):
            if not run_command(conversation, text):
                return
            continue
        if not text.strip():
            continue
        try:
            conversation.reply(text, out=sys.stdout)
        except (RequestError, ChatFormatError) as exc:
            print(f"error: {exc}. /reset to start over.", file=sys.stderr)
        if conversation.note:
            print(conversation.note, file=sys.stderr)


def run_command(conversation: Conversation, text: str) -> bool:
    """Run a /command; False means quit."""
    name, _, rest = text.partition(" ")
    if name in ("/bye", "/exit", "/quit"):
        return False
    if name == "/reset":
        conversation.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif name == "/system":
        conversation.system = rest.strip() or None
        conversation.reset()
        print("(system prompt set; conversation cleared)", file=sys.stderr)
    elif name == "/help":
        print(HELP, file=sys.stderr)
    else:
        print(f"unknown command {name}; /help lists them", file=sys.stderr)
    return True


def read_message() -> str | None:
    """One message: a line, lines joined by a trailing backslash, or a \"\"\" block. None at end of
    input; Ctrl-C (KeyboardInterrupt) passes to the caller."""
    try:
        line = input(">>> ")
        if line.strip() == '"""' or (line.startswith('"""') and not line.rstrip().endswith('"""')):
            lines = [line.removeprefix('"""')] if line.strip() != '"""' else []
            while not (line := input("... ")).rstrip().endswith('"""'):
                lines.append(line)
            lines.append(line.rstrip().removesuffix('"""'))
            return "\n".join(lines).strip("\n")
        parts = []
        while line.endswith("\\"):
            parts.append(line[:-1])
            line = input("... ")
        parts.append(line)
        return "\n".join(parts)
    except EOFError:
        print(file=sys.stderr)
        return None


def _enable_line_editing() -> None:
    """On a terminal, importing readline gives input() line editing and an in-session history."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):  # Windows without pyreadline: plain input() still works
            import readline  # noqa: F401
