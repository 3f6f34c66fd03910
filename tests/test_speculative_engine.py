"""Speculative decoding in the engine, on the embedded SmolLM2 GGUF: lossless and leak-free.

Greedy output must be token for token what plain decoding gives (alone and batched, K = 1..8),
sampled output must follow the same law (chi-square over seeds), and every KV block taken for
drafts must come back after rejections, stops and aborts.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from mistral_nemo import LLM, SamplingParams
from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.llm_engine import LLMEngine
from mistral_nemo.model.loading import LoadedModel

PASSAGE = (
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n"
    "    return total / len(values)\n"
)
STORY = "The lighthouse keeper counted the ships every night, and every night the count was one short."
TASKS = [
    f"Repeat this code exactly:\n{PASSAGE}",
    f"Quote the first sentence of this text: {STORY} He never found out why.",
    f"Rename the function to average and show the code:\n{PASSAGE}",
    f"Summarise in one sentence: {STORY}",
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "List three primary colours.",
    "Count from one to ten in words.",
]
GREEDY = SamplingParams(max_tokens=16, temperature=0)


def ngram(k: int, **extra: int) -> dict:
    # matches from 1 token on: many drafts, many rejections, on these short prompts (more to check)
    return {
        "method": "ngram",
        "num_speculative_tokens": k,
        "disable_by_batch_size": 64,
        "prompt_lookup_min": 1,
        "prompt_lookup_max": 4,
        **extra,
    }


@pytest.fixture(scope="module")
def prompts(smollm2_loaded: LoadedModel) -> list[list[int]]:
    return [smollm2_loaded.tokenizer.encode_chat([{"role": "user", "content": t}]) for t in TASKS]


@pytest.fixture(scope="module")
def plain(smollm2_loaded: LoadedModel, prompts: list[list[int]]) -> list[list[int]]:
    outs = LLM(smollm2_loaded, num_blocks=256).generate(prompts, GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def assert_blocks_back(engine: LLMEngine) -> None:
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert not engine.scheduler.running and not engine.scheduler.waiting


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_greedy_identical_batched_and_alone(
    k: int, smollm2_loaded: LoadedModel, prompts: list[list[int]], plain: list[list[int]]
) -> None:
    llm = LLM(smollm2_loaded, num_blocks=256, enable_prefix_caching=False, speculative_config=ngram(k))
    batched = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in batched] == plain
    for i in (0, 3):  # alone: the step holds one sequence
        assert llm.generate(prompts[i], GREEDY, use_tqdm=False)[0].outputs[0].token_ids == plain[i]
    stats = llm.engine.stats()
    assert stats.spec_accepted_tokens > 0 and stats.spec_draft_tokens > stats.spec_accepted_tokens
    assert_blocks_back(llm.engine)


def test_stops_inside_an_accepted_run_truncate(smollm2_loaded: LoadedModel, prompts: list[list[int]]) -> None:
    """max_tokens, a stop string and a stop token falling inside drafted runs end exactly where plain does."""
    reference = LLM(smollm2_loaded, num_blocks=256)
    speculative = LLM(smollm2_loaded, num_blocks=256, speculative_config=ngram(8))
    full = reference.generate(prompts[0], GREEDY, use_tqdm=False)[0].outputs[0]
    cases = [
        SamplingParams(max_tokens=7, temperature=0, logprobs=3),
        SamplingParams(max_tokens=40, temperature=0, stop=["total +"], logprobs=1),
        SamplingParams(max_tokens=40, temperature=0, stop_token_ids=[full.token_ids[9]]),
        SamplingParams(max_tokens=40, temperature=0, stop=["/ len"], include_stop_str_in_output=True),
    ]
    for params in cases:
        want = reference.generate(prompts[0], params, use_tqdm=False)[0].outputs[0]
        got = speculative.generate(prompts[0], params, use_tqdm=False)[0].outputs[0]
        assert (got.token_ids, got.text, got.finish_reason, got.stop_reason) == (
            want.token_ids,
            want.text,
            want.finish_reason,
            want.stop_reason,
        ), params
        if want.logprobs is not None:
            assert got.logprobs is not None and len(got.logprobs) == len(want.logprobs)
            for a, b in zip(got.logprobs, want.logprobs, strict=True):
                assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-3)
                assert [t for t, _ in a.top or []] == [t for t, _ in b.top or []]
    assert speculative.engine.stats().spec_accepted_tokens > 0
    assert_blocks_back(speculative.engine)


def test_sampled_tokens_follow_the_same_law(smollm2_loaded: LoadedModel, prompts: list[list[int]]) -> None:
    """Over 200 seeds: the tokens at output positions 1..4 with speculation vs without (chi-square)."""
    seeds = range(200)
    params = [SamplingParams(max_tokens=5, temperature=1.0, top_p=0.95, seed=s) for s in seeds]
    counts = []
    for config in (None, ngram(4)):
        llm = LLM(
            smollm2_loaded,
            num_blocks=512,
            max_num_seqs=100,
            speculative_config=config and {**config, "disable_by_batch_size": 256},
        )
        outs = llm.generate([prompts[0]] * len(params), params, use_tqdm=False)
        counts.append([tuple(o.outputs[0].token_ids[1:5]) for o in outs])
        if config is not None:
            stats = llm.engine.stats()
            assert stats.spec_accepted_tokens > 50 and stats.spec_draft_tokens > stats.spec_accepted_tokens
            assert_blocks_back(llm.engine)
    for position in range(4):
        plain, spec = ([c[position] for c in group if len(c) > position] for group in counts)
        tokens = sorted(set(plain) | set(spec))
        table = np.array([[seq.count(t) for t in tokens] for seq in (plain, spec)])
        common = table.sum(axis=0) >= 10  # pool rare tokens so every cell has a useful expectation
        table = np.column_stack([table[:, common], table[:, ~common].sum(axis=1)])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] > 1:
            assert chi2_contingency(table).pvalue > 1e-3, (position, table)


def test_seeded_speculative_runs_repeat(smollm2_loaded: LoadedModel, prompts: list[list[int]]) -> None:
    params = SamplingParams(max_tokens=20, temperature=0.8, seed=7)
    runs = [
        LLM(smollm2_loaded, num_blocks=128, speculative_config=ngram(4)).generate(
            prompts[2], params, use_tqdm=False
        )
        for _ in range(2)
    ]
    assert runs[0][0].outputs[0].token_ids == runs[1][0].outputs[0].token_ids


def test_abort_mid_draft_returns_every_block(smollm2_loaded: LoadedModel, prompts: list[list[int]]) -> None:
    engine = LLMEngine(smollm2_loaded, EngineConfig(num_blocks=64, speculative_config=ngram(8)))
    for i, prompt in enumerate(prompts[:4]):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
    for _ in range(6):
        engine.step()
    assert engine.stats().spec_draft_tokens > 0 and engine.blocks.num_free < engine.blocks.num_blocks
    for i in range(4):
        assert engine.abort_request(str(i))
    assert_blocks_back(engine)
    assert engine.speculator is not None
    engine.speculator.propose([], [])
    assert not engine.speculator._state  # per-sequence drafting state dropped with the sequences


def test_rejected_drafts_give_their_blocks_back(
    smollm2_loaded: LoadedModel, prompts: list[list[int]]
) -> None:
    """With block size 1 every rejected draft token holds a block; after each step only len(seq) remain."""
    engine = LLMEngine(
        smollm2_loaded, EngineConfig(num_blocks=400, block_size=1, speculative_config=ngram(8))
    )
    engine.add_request("x", prompts[1], SamplingParams(max_tokens=40, temperature=0))
    while engine.has_unfinished_requests():
        engine.step()
        for seq in engine.scheduler.running:
            assert len(seq.block_table) <= len(seq)  # none past the sequence: drafts gave theirs back
    stats = engine.stats()
    assert stats.spec_draft_tokens > stats.spec_accepted_tokens  # there were rejections
    assert_blocks_back(engine)


def test_general_path_verifies_drafts_too(smollm2_loaded: LoadedModel, prompts: list[list[int]]) -> None:
    """Without the fused decode kernel (GPU, bf16) drafts go through the general path, mixed with prefills."""
    params = SamplingParams(max_tokens=10, temperature=0)
    outputs = []
    for config in (None, ngram(4)):
        llm = LLM(smollm2_loaded, num_blocks=128, speculative_config=config)
        llm.engine.cache.has_decode_kernel = False  # the path every step takes on a GPU
        if llm.engine.speculator is not None:
            llm.engine.speculator.draft_in_mixed_steps = True
        outputs.append([o.outputs[0].token_ids for o in llm.generate(prompts[:2], params, use_tqdm=False)])
    assert outputs[0] == outputs[1]
    assert llm.engine.stats().spec_accepted_tokens > 0
    assert_blocks_back(llm.engine)
