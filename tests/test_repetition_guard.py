"""A runaway repetition ends: chat stops an answer that loops, with a note, unless told not to."""

from __future__ import annotations

import io

import pytest

from mistral_nemo.entrypoints.chat_cmd import LOOP_NOTE, LocalConversation
from mistral_nemo.entrypoints.cli import build_parser
from mistral_nemo.entrypoints.model_options import sampling_params, single_request_engine
from mistral_nemo.entrypoints.repetition_guard import MIN_SPAN, RepetitionGuard
from mistral_nemo.model.loading import LoadedModel


@pytest.mark.parametrize(
    ("tokens", "looping"),
    [
        ([7] * MIN_SPAN, True),  # one token over and over
        ([1, 2, 3] * 16, True),  # "la femme, la femme, ..."
        (list(range(20)) * 4, True),  # a whole sentence, four times
        ([7] * (MIN_SPAN - 1), False),  # too short to call a loop
        ([1, 2, 3] * 15 + [4, 5, 6], False),  # the loop ended
        (list(range(200)), False),  # no repetition
        (list(range(80)) * 2, False),  # a long block twice (a repeated paragraph) is not a loop
    ],
)
def test_guard_fires_only_on_loops(tokens: list[int], looping: bool) -> None:
    guard = RepetitionGuard()
    assert guard.add(tokens) is looping
    assert guard.fired is looping


def test_guard_fires_at_the_first_looping_token() -> None:
    guard = RepetitionGuard()
    tokens = [9, 8] + [1, 2] * (MIN_SPAN // 2)
    fired_at = next(i for i, t in enumerate(tokens) if guard.add([t]))
    assert fired_at == len(tokens) - 1  # the 48th token of the loop, not later


def _answer(loaded: LoadedModel, argv: list[str]) -> tuple[str, LocalConversation]:
    args = build_parser().parse_args(["chat", *argv])
    conversation = LocalConversation(
        single_request_engine(loaded),
        sampling_params(args, loaded.generation_defaults),
        repetition_guard=args.repetition_guard,
    )
    return conversation.reply("Tell me about the sea.", out=io.StringIO()), conversation


def test_chat_stops_a_looping_answer_with_a_note(smollm2_loaded: LoadedModel) -> None:
    # A repetition penalty below 1 rewards repeating: the embedded model loops at once.
    looping = ["--repetition-penalty", "0.3", "--max-tokens", "72"]
    guarded, conversation = _answer(smollm2_loaded, looping)
    assert conversation.note == LOOP_NOTE
    unguarded, free = _answer(smollm2_loaded, [*looping, "--no-repetition-guard"])
    assert free.note is None
    assert unguarded.startswith(guarded) and len(unguarded) > len(guarded)
    tokenizer = smollm2_loaded.tokenizer
    assert len(tokenizer.encode(guarded)) < len(tokenizer.encode(unguarded))  # it stopped before max_tokens
