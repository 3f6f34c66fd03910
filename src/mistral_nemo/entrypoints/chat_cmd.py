"""`mistral-nemo chat`: talk to a model in the terminal, or answer one --prompt for scripts.

Answers stream through the batching engine (one request at a time), one text delta per step.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mistral_nemo.engine.errors import RequestError
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.entrypoints import remote_chat
from mistral_nemo.entrypoints.model_options import (
    add_engine_arguments,
    add_model_argument,
    add_sampling_arguments,
    engine_for_cli,
    load_for_cli,
    sampling_params,
    stream_text,
)
from mistral_nemo.tokenizer.errors import ChatFormatError

NEMO_TEMPERATURE = 0.3  # Mistral's recommendation for NeMo (lower than for earlier models)
HELP = """Commands:
  /system TEXT   set the system prompt (and start over)
  /reset         forget the conversation
  /exit          quit (Ctrl-D works too)
  /help          this text
End a line with \\ to continue on the next line, or wrap several lines in \"\"\"."""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("chat", help="chat with a model in the terminal")
    add_model_argument(parser)
    parser.add_argument("--prompt", help="answer this one message, print only the answer, and exit")
    parser.add_argument("--system", help="system prompt")
    add_sampling_arguments(parser, temperature=NEMO_TEMPERATURE, max_tokens=512)
    add_engine_arguments(parser)
    remote_chat.add_arguments(parser)  # --url URL [--api-key KEY] [--model NAME]
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.url:  # a running server answers instead of a local model
        return remote_chat.run(args)
    params = sampling_params(args)
    loaded = load_for_cli(args)
    session = ChatSession(engine_for_cli(args, loaded), params, system=args.system)
    if args.prompt is not None:
        session.reply(args.prompt, out=sys.stdout)
        return 0
    print(f"Chatting with {loaded.name}. /help for commands, Ctrl-D to quit.", file=sys.stderr)
    _interactive(session)
    return 0


class ChatSession:
    """A conversation: its messages, and streaming the model's answers into it."""

    def __init__(self, engine: LLMEngine, params: SamplingParams, system: str | None = None) -> None:
        self.engine = engine
        self.params = params
        self.system = system
        self.messages: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.messages = []

    def reply(self, text: str, out: Any) -> str:
        """Add the user's message, stream the answer to `out`, keep it in the conversation."""
        conversation = [*self._system_messages(), *self.messages, {"role": "user", "content": text}]
        prompt = self.engine.tokenizer.encode_chat(conversation)
        pieces: list[str] = []
        try:
            for piece in stream_text(self.engine, prompt, self.params):
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:  # stream_text has aborted the request
            pieces.append("")  # keep what was said so far
        out.write("\n")
        answer = "".join(pieces)
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer or " "}]
        return answer

    def _system_messages(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system else []


def _interactive(session: ChatSession) -> None:
    while True:
        text = _read_message()
        if text is None:
            return
        if text.startswith("/"):
            if not _command(session, text):
                return
            continue
        if not text.strip():
            continue
        try:
            session.reply(text, out=sys.stdout)
        except (RequestError, ChatFormatError) as exc:
            print(f"error: {exc}. /reset to start over.", file=sys.stderr)


def _command(session: ChatSession, text: str) -> bool:
    """Run a /command; False means quit."""
    name, _, rest = text.partition(" ")
    if name in ("/exit", "/quit", "/bye"):
        return False
    if name == "/reset":
        session.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif name == "/system":
        session.system = rest.strip() or None
        session.reset()
        print("(system prompt set; conversation cleared)", file=sys.stderr)
    elif name == "/help":
        print(HELP, file=sys.stderr)
    else:
        print(f"unknown command {name}; /help lists them", file=sys.stderr)
    return True


def _read_message() -> str | None:
    """One message: a line, lines joined by a trailing backslash, or a \"\"\" block. None at end of input."""
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
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return None
