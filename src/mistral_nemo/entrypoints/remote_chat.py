"""`mistral-nemo chat --url URL`: the terminal chat against a running server instead of a local model.

Answers stream from `POST /v1/chat/completions` (SSE); the conversation, the commands and the input
handling are chat_repl's. Ctrl-C stops an answer: closing the connection makes the server abort it.
Sampling fields the user gives no flag for are left out, so the server applies the model's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from mistral_nemo.engine.errors import RequestError
from mistral_nemo.entrypoints.chat_repl import Conversation
from mistral_nemo.entrypoints.model_options import SAMPLING_FLAGS  # same names as the request fields

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


class RemoteConversation(Conversation):
    """A conversation whose answers come from the server."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.system)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.url = args.url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)
        # Only the flags the user gave: the server fills the rest with the model's defaults.
        self.options: dict[str, Any] = {
            name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name, None) is not None
        }
        if not args.repetition_guard:
            raise ValueError("--no-repetition-guard applies to a local model; the server has no such guard")
        self.model = args.served_model or args.model or self._first_model()

    def answer_pieces(self, conversation: list[dict[str, Any]]) -> Iterator[str]:
        body = {"model": self.model, "messages": conversation, "stream": True, **self.options}
        return self._stream(body)

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
