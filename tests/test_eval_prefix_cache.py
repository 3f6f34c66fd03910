"""Loglikelihood requests share their context through the prefix cache, and score exactly as without it.

A request that asks for prompt logprobs only from `prompt_logprobs_from` on lets the engine serve
the positions before it from cached KV blocks. The eval model class asks for the continuation's
logprobs only, so the four endings of a hellaswag-like question compute their shared context once.
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from mistral_nemo.engine.errors import RequestError
from mistral_nemo.engine.llm import LLM
from mistral_nemo.engine.sampling_params import SamplingParams, SamplingParamsError
from mistral_nemo.eval.lm import MistralNemoLM
from mistral_nemo.model.loading import load
from tests.gguf_fixture import smollm2_gguf_path

# Two hellaswag-style questions (activity label, context, four endings), long enough to fill blocks.
QUESTIONS = [
    (
        "Roof shingle removal: A man is sitting on a roof. He is using a wide flat tool to pry the old "
        "shingles loose, one row after another, while a second worker collects the pieces in a bucket and "
        "carries them down the ladder. The man",
        [
            " is holding a rubber ball in his hand and throws it at the neighbour's dog.",
            " starts pulling up roofing on the roof and throws the pieces into a pile below.",
            " is speaking to the camera about the weather and the best season for painting.",
            " climbs down and begins to sweep the driveway with a long broom.",
        ],
    ),
    (
        "Making a sandwich: A woman stands in a bright kitchen with bread, cheese, lettuce and tomatoes laid "
        "out on a wooden board. She spreads butter on two slices and then reaches for the knife. She",
        [
            " slices the tomatoes thinly and layers them on the bread with the cheese.",
            " puts on her running shoes and goes out for a jog around the park.",
            " plays a song on the piano while the kettle boils on the stove.",
            " paints the kitchen wall a pale shade of green.",
        ],
    ),
]


def requests() -> list[Instance]:
    return [
        Instance("loglikelihood", doc={}, arguments=(context, ending), idx=i)
        for context, endings in QUESTIONS
        for i, ending in enumerate(endings)
    ]


@pytest.fixture(scope="module")
def llms() -> dict[str, LLM]:
    # Float layers, the path that must match lm-eval's hf backend; one loaded model, two engines.
    loaded = load(smollm2_gguf_path(), dtype=torch.float32, device="cpu", quantization="none")
    return {
        "cached": LLM(loaded, kv_cache_memory="32MiB"),
        "uncached": LLM(loaded, kv_cache_memory="32MiB", enable_prefix_caching=False),
    }


def test_loglikelihoods_identical_with_and_without_prefix_cache(llms: dict[str, LLM]) -> None:
    scores = {
        name: MistralNemoLM(llm=llm, show_progress=False).loglikelihood(requests())
        for name, llm in llms.items()
    }
    cached, uncached = scores["cached"], scores["uncached"]
    assert len(cached) == len(uncached) == 8
    for (ll, greedy), (ref_ll, ref_greedy) in zip(cached, uncached, strict=True):
        # The same sums up to float32 rounding (the context's keys/values came from another batch):
        # measured 5e-7 relative at most, the bar against lm-eval's hf backend is 1e-4.
        assert ll == pytest.approx(ref_ll, rel=1e-5)
        assert greedy == ref_greedy
    # The right answer wins on both sides (the model is small, but these are easy).
    assert max(range(4), key=lambda i: cached[i][0]) == max(range(4), key=lambda i: uncached[i][0])

    # The cache really served the contexts: each question's three later endings found every full
    # block of the context (all but the last context token, whose row scores the first ending token).
    lm = MistralNemoLM(llm=llms["cached"], show_progress=False)
    block = llms["cached"].engine.config.block_size
    expected = 0
    for context, _ in QUESTIONS:
        context_len = len(lm.tok_encode(context))
        expected += 3 * ((context_len - 1) // block) * block
    stats = llms["cached"].engine.stats()
    assert stats.prefix_cache_hits == expected > 0
    assert llms["uncached"].engine.stats().prefix_cache_hits == 0


def test_prompt_logprobs_from_reports_only_the_asked_positions(llms: dict[str, LLM]) -> None:
    llm = llms["cached"]
    prompt = llm.get_tokenizer().encode(QUESTIONS[0][0] + QUESTIONS[0][1][1], bos=True)
    first = len(prompt) - 12
    full = llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=2))[0]
    for _ in range(2):  # the second run serves the start of the prompt from the cache
        part = llm.generate(
            [prompt],
            SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=2, prompt_logprobs_from=first),
        )[0]
        entries = part.prompt_logprobs or []
        assert len(entries) == len(prompt) and all(e is None for e in entries[:first])
        for got, want in zip(entries[first:], (full.prompt_logprobs or [])[first:], strict=True):
            assert got is not None and want is not None
            assert got.token_id == want.token_id
            assert got.logprob == pytest.approx(want.logprob, rel=1e-5, abs=1e-5)
            assert [t for t, _ in got.top] == [t for t, _ in want.top]
    assert part.num_cached_tokens > 0


def test_prompt_logprobs_from_is_checked(llms: dict[str, LLM]) -> None:
    with pytest.raises(SamplingParamsError, match="prompt_logprobs_from"):
        SamplingParams(prompt_logprobs=1, prompt_logprobs_from=-1)
    with pytest.raises(RequestError, match="prompt_logprobs_from is 9 but the prompt has 3 tokens"):
        llms["cached"].engine.add_request(
            "x", [1, 2, 3], SamplingParams(prompt_logprobs=1, prompt_logprobs_from=9)
        )
