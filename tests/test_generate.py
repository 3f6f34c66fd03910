"""Single-request generation: sampling, stop strings, and decoding with the cache vs re-feeding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mistral_nemo.engine.generate import PromptTooLongError, generate, stream_generate
from mistral_nemo.engine.sampler import make_generator, sample_next
from mistral_nemo.engine.sampling_params import SamplingParams, SamplingParamsError
from mistral_nemo.engine.stop_strings import StopStringFilter
from mistral_nemo.model.loading import LoadedModel, load
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder


@pytest.fixture(scope="module")
def small_nemo(tmp_path_factory) -> LoadedModel:
    folder = write_mistral_folder(random_reference_model(seed=7), tmp_path_factory.mktemp("nemo"))
    return load(folder, dtype=torch.float32, device="cpu")


# ---- stop strings -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc\n", max_size=40),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=10),
)
def test_stop_filter_equals_cutting_at_first_stop(text: str, stops: list[str], cuts: list[int]) -> None:
    chunks, last = [], 0
    for cut in sorted(set(cuts)):
        chunks.append(text[last:cut])
        last = max(last, cut)
    chunks.append(text[last:])
    stop_filter = StopStringFilter(stops)
    shown = "".join(stop_filter.add(c) for c in chunks) + stop_filter.flush()
    # Generation ends as soon as a stop string is complete: after each chunk (one token's text),
    # the text is cut at the earliest stop string it contains; later chunks never happen.
    expected, stopped, so_far = text, False, ""
    for chunk in chunks:
        so_far += chunk
        hits = [i for i in (so_far.find(s) for s in stops) if i >= 0]
        if hits:
            expected, stopped = so_far[: min(hits)], True
            break
    assert shown == expected
    assert stop_filter.stopped == stopped


def test_stop_string_split_across_pieces_is_never_shown() -> None:
    stop_filter = StopStringFilter(["</answer>"])
    shown = [stop_filter.add(p) for p in ["The result", " is 4</", "ans", "wer> and more"]]
    assert shown == ["The result", " is 4", "", ""]
    assert stop_filter.stopped


# ---- sampler ------------------------------------------------------------------------------------


def test_sampling_params_are_validated() -> None:
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"max_tokens": 0}, {"stop": [""]}):
        with pytest.raises(SamplingParamsError):
            SamplingParams(**bad)


def test_sampler_greedy_top_k_and_seed() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    best = int(logits.argmax())
    assert sample_next(logits, SamplingParams(temperature=0), None) == best
    top1 = SamplingParams(temperature=1.0, top_k=1, seed=3)
    assert sample_next(logits, top1, make_generator(top1)) == best
    tiny_p = SamplingParams(temperature=1.0, top_p=1e-6, seed=3)
    assert sample_next(logits, tiny_p, make_generator(tiny_p)) == best
    seeded = SamplingParams(temperature=1.5, seed=42)
    draws = [
        [sample_next(logits, seeded, g) for _ in range(20)]
        for g in (make_generator(seeded), make_generator(seeded))
    ]
    assert draws[0] == draws[1]
    assert len(set(draws[0])) > 1  # high temperature really samples


def test_top_k_never_picks_outside_the_top() -> None:
    logits = torch.randn(500, generator=torch.Generator().manual_seed(1))
    allowed = set(torch.topk(logits, 5).indices.tolist())
    params = SamplingParams(temperature=5.0, top_k=5, seed=0)
    generator = make_generator(params)
    assert {sample_next(logits, params, generator) for _ in range(200)} <= allowed


# ---- generation ---------------------------------------------------------------------------------


def test_greedy_with_cache_equals_refeeding_the_sequence(small_nemo: LoadedModel) -> None:
    model, tokenizer = small_nemo.model, small_nemo.tokenizer
    prompt = tokenizer.encode("The quick brown fox", bos=True)
    result = generate(model, tokenizer, prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    sequence = list(prompt)
    for _ in range(12):  # the oracle: a full causal forward per step, no cache
        sequence.append(int(model.logits(torch.tensor(sequence))[-1].argmax()))
    assert result.token_ids == sequence[len(prompt) :]
    assert result.finish_reason == "length"
    assert result.text == tokenizer.decode(result.token_ids)


def test_stream_text_concatenates_to_decode(small_nemo: LoadedModel) -> None:
    tokenizer = small_nemo.tokenizer
    prompt = tokenizer.encode_chat([{"role": "user", "content": "Say something"}])
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=5, ignore_eos=True)
    steps = list(stream_generate(small_nemo.model, tokenizer, prompt, params))
    assert len(steps) == 30 and steps[-1].finish_reason == "length"
    assert all(s.finish_reason is None for s in steps[:-1])
    assert "".join(s.text for s in steps) == tokenizer.decode([s.token_id for s in steps])


def test_seeded_sampling_repeats(small_nemo: LoadedModel) -> None:
    prompt = small_nemo.tokenizer.encode("Once", bos=True)
    params = SamplingParams(max_tokens=10, temperature=0.9, seed=11, ignore_eos=True)
    first = generate(small_nemo.model, small_nemo.tokenizer, prompt, params)
    second = generate(small_nemo.model, small_nemo.tokenizer, prompt, params)
    assert first.token_ids == second.token_ids


def test_stop_token_and_stop_string(small_nemo: LoadedModel) -> None:
    model, tokenizer = small_nemo.model, small_nemo.tokenizer
    prompt = tokenizer.encode("abc", bos=True)
    free = generate(model, tokenizer, prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    stop_at = free.token_ids[3]
    stopped = generate(
        model, tokenizer, prompt, SamplingParams(max_tokens=8, temperature=0, stop_token_ids=[stop_at])
    )
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(stop_at) + 1]
    stop_text = free.text[5:8]
    if stop_text:
        by_string = generate(
            model, tokenizer, prompt, SamplingParams(max_tokens=8, temperature=0, stop=[stop_text])
        )
        assert by_string.finish_reason == "stop"
        assert by_string.text == free.text[: free.text.find(stop_text)]


def test_context_limit(small_nemo: LoadedModel) -> None:
    model, tokenizer = small_nemo.model, small_nemo.tokenizer
    short_context = small_nemo.args.with_changes(max_seq_len=20)
    original = model.args
    model.args = short_context
    try:
        prompt = tokenizer.encode("one two three four five six seven eight", bos=True)
        result = generate(
            model, tokenizer, prompt, SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
        )
        assert result.finish_reason == "context"
        assert len(prompt) + len(result.token_ids) == 20
        with pytest.raises(PromptTooLongError, match="20"):
            generate(model, tokenizer, list(range(1000, 1020)), SamplingParams())
    finally:
        model.args = original
