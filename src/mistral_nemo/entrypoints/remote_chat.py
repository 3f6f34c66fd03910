"""`mistral-nemo chat --url URL`: the terminal chat against a running server instead of a local model.

Answers stream from `POST /v1/chat/completions` (SSE); the commands and the input handling are the
local chat's (chat_cmd). Ctrl-C stops an answer: closing the connection makes the server abort it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx

from mistral_nemo.engine.errors import RequestError

API_KEY_ENV = "MISTRAL_NEMO_API_KEY"  # the variable `mistral-nemo serve` reads its key from
TIMEOUT = httpx.Timeout(10.0, read=600.0)  # a long prompt on a CPU can take a while before its first token


class RemoteError(RequestError):
    """The server refused the request or could not be reached (one line, for the terminal)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a running server (instead of loading a model)")
    group.add_argument(
        "--url", help="talk to the `mistral-nemo serve` at this URL, e.g. http://127.0.0.1:8000"
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get(API_KEY_ENV),
        help=f"the server's API key, sent as Authorization: Bearer KEY (default: ${API_KEY_ENV})",
    )
    group.add_argument(
        "--model", dest="served_model", metavar="NAME", help="the served model (default: MODEL, or the first)"
    )


class RemoteSession:
    """A conversation whose answers come from the server (the interface of chat_cmd.ChatSession)."""

    def __init__(self, args: argparse.Namespace) -> None:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.url = args.url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)
        self.system: str | None = args.system
        self.messages: list[dict[str, Any]] = []
        self.options: dict[str, Any] = {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "max_tokens": args.max_tokens,
            **({"top_k": args.top_k} if args.top_k else {}),
            **({"seed": args.seed} if args.seed is not None else {}),
        }
        self.model = args.served_model or args.model or self._first_model()

    def reset(self) -> None:
        self.messages = []

    def reply(self, text: str, out: Any) -> str:
        """Add the user's message, stream the answer to `out`, keep it in the conversation."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        body = {
            "model": self.model,
            "messages": [*system, *self.messages, {"role": "user", "content": text}],
            "stream": True,
            **self.options,
        }
        pieces: list[str] = []
        stream = self._stream(body)
        try:
            for piece in stream:
                pieces.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            pass  # keep what was said so far
        finally:
            stream.close()  # closes the connection: the server aborts the answer
        out.write("\n")
        answer = "".join(pieces)
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer or " "}]
        return answer

    def _stream(self, body: dict[str, Any]) -> Iterator[str]:
        try:
            with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
                _check(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RemoteError(_one_line(_message(chunk) or data))
                    for choice in chunk.get("choices") or []:
                        if choice.get("index", 0) == 0 and (
                            piece := (choice.get("delta") or {}).get("content")
                        ):
                            yield piece
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None

    def _first_model(self) -> str:
        try:
            response = self.client.get("/v1/models")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        _check(response)
        models = [m["id"] for m in response.json().get("data", [])]
        if not models:
            raise RemoteError(f"{self.url} serves no model")
        return models[0]

    def _unreachable(self, exc: httpx.HTTPError) -> RemoteError:
        return RemoteError(f"cannot talk to {self.url}: {_one_line(str(exc)) or type(exc).__name__}")


def _check(response: httpx.Response) -> None:
    if response.is_success:
        return
    response.read()
    try:
        message = _message(response.json())
    except ValueError:
        message = None
    detail = message or response.text[:200] or response.reason_phrase
    raise RemoteError(f"the server answered {response.status_code}: {_one_line(detail)}")


def _message(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message")) if isinstance(error, dict) and error.get("message") else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run(args: argparse.Namespace) -> int:
    session = RemoteSession(args)
    if args.prompt is not None:
        session.reply(args.prompt, out=sys.stdout)
        return 0
    print(
        f"Chatting with {session.model} at {session.url}. /help for commands, Ctrl-D to quit.",
        file=sys.stderr,
    )
    from mistral_nemo.entrypoints.chat_cmd import _interactive  # chat_cmd imports this module

    _interactive(session)  # type: ignore[arg-type]
    return 0
