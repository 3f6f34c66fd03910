"""`mistral-nemo chat`: talk to a model in the terminal, or answer one --prompt for scripts.

Answers stream through the engine (one request at a time). Sampling follows the model's own
defaults unless a flag says otherwise; an answer that falls into a loop is stopped with a note
(`--no-repetition-guard` lets it run to --max-tokens).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mistral_nemo.entrypoints import remote_chat
from mistral_nemo.entrypoints.chat_repl import Conversation, interactive, run_prompt
from mistral_nemo.entrypoints.interrupts import route_ctrl_c_to_main_thread
from mistral_nemo.entrypoints.model_options import (
    add_engine_arguments,
    add_model_argument,
    add_sampling_arguments,
)

if TYPE_CHECKING:
    from mistral_nemo.engine.llm_engine import LLMEngine
    from mistral_nemo.engine.sampling_params import SamplingParams

CHAT_MAX_TOKENS = 512  # an answer's length unless the model or --max-tokens says otherwise
LOOP_NOTE = "(stopped: the answer kept repeating itself; --no-repetition-guard lets it run on)"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("chat", help="chat with a model in the terminal")
    add_model_argument(parser)
    parser.add_argument("--prompt", help="answer this one message, print only the answer, and exit")
    parser.add_argument("--system", help="system prompt")
    add_sampling_arguments(parser, max_tokens=CHAT_MAX_TOKENS)
    parser.add_argument(
        "--no-repetition-guard",
        dest="repetition_guard",
        action="store_false",
        help="let an answer that repeats itself run to --max-tokens instead of stopping it",
    )
    add_engine_arguments(parser)
    remote_chat.add_arguments(parser)  # --url URL [--api-key KEY] [--model NAME]
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.prompt is None:
        route_ctrl_c_to_main_thread()  # before torch starts its threads
    conversation: Conversation
    if args.url:  # a running server answers instead of a local model
        remote = remote_chat.RemoteConversation(args)
        conversation, greeting = remote, f"Chatting with {remote.model} at {remote.url}."
    else:
        from mistral_nemo.entrypoints.model_options import engine_for_cli, load_for_cli, sampling_params

        loaded = load_for_cli(args)
        params = sampling_params(args, loaded.generation_defaults)
        conversation = LocalConversation(
            engine_for_cli(args, loaded), params, system=args.system, repetition_guard=args.repetition_guard
        )
        greeting = f"Chatting with {loaded.name}."
    if args.prompt is not None:
        run_prompt(conversation, args.prompt)
    else:
        interactive(conversation, greeting)
    return 0


class LocalConversation(Conversation):
    """Answers from a model in this process, through the engine."""

    def __init__(
        self,
        engine: LLMEngine,
        params: SamplingParams,
        system: str | None = None,
        repetition_guard: bool = True,
    ) -> None:
        super().__init__(system)
        self.engine, self.params, self.repetition_guard = engine, params, repetition_guard

    def answer_pieces(self, conversation: list[dict[str, Any]]) -> Iterator[str]:
        from mistral_nemo.entrypoints.model_options import stream_text
        from mistral_nemo.entrypoints.repetition_guard import RepetitionGuard

        prompt = self.engine.tokenizer.encode_chat(conversation)
        guard = RepetitionGuard() if self.repetition_guard else None
        yield from stream_text(self.engine, prompt, self.params, guard)
        if guard is not None and guard.fired:
            self.note = LOOP_NOTE
