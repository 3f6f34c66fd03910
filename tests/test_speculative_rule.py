"""Speculative decoding without a model: the n-gram proposer, the config, and the verification rule.

The rule is checked statistically: tokens emitted through draft-and-verify must follow the
same law as the sampler's own draws from the same logits (chi-square, fixed seeds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from mistral_nemo.engine.sampler import SamplingRow, process_logits, sample_batch, sampling_probs
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.engine.speculative.config import SpeculativeConfig, SpeculativeConfigError
from mistral_nemo.engine.speculative.ngram import TokenBuffer, propose_ngram
from mistral_nemo.engine.speculative.verify import verify_draft


def brute_force_ngram(tokens: list[int], k: int, low: int, high: int) -> list[int]:
    """The definition, one position at a time: longest suffix (low..high) seen earlier, latest first."""
    for n in range(min(high, len(tokens) - 1), low - 1, -1):
        suffix = tokens[-n:]
        for end in range(len(tokens) - 2, n - 2, -1):
            if tokens[end - n + 1 : end + 1] == suffix:
                return tokens[end + 1 : end + 1 + k]
    return []


def test_ngram_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    for trial in range(400):
        tokens = rng.integers(0, 3 + trial % 5, size=int(rng.integers(1, 40))).tolist()
        k, low = int(rng.integers(1, 6)), int(rng.integers(1, 3))
        high = low + int(rng.integers(0, 4))
        assert propose_ngram(np.array(tokens), k, low, high) == brute_force_ngram(tokens, k, low, high), (
            tokens
        )


def test_ngram_examples_and_buffer() -> None:
    tokens = [1, 2, 3, 4, 5, 9, 1, 2, 3, 4, 6, 7, 1, 2, 3]
    assert propose_ngram(np.array(tokens), 3, 1, 4) == [4, 6, 7]  # the latest of two 3-token matches
    assert propose_ngram(np.array(tokens), 3, 4, 4) == []  # no 4-token match
    assert propose_ngram(np.array([5, 6, 7]), 3, 1, 4) == []
    buffer, ids = TokenBuffer(), list(range(300))
    assert buffer.sync(ids).tolist() == ids
    ids += [7] * 500
    assert buffer.sync(ids).tolist() == ids  # grows past its first allocation
    assert buffer.sync(ids[:10]).tolist() == ids[:10]  # replaced (a different sequence)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"method": "ngram", "num_speculative_tokenz": 4},
            "unknown speculative_config key(s) ['num_speculative_tokenz']",
        ),
        ({"method": "eagle"}, "method 'eagle' is not supported"),
        ({"method": "ngram", "model": "small.gguf"}, "draft model"),
        ({"num_speculative_tokens": 0}, "num_speculative_tokens must be an integer between 1 and 16"),
        ({"prompt_lookup_min": 3, "prompt_lookup_max": 2}, "prompt_lookup_min (3) is above"),
        ("ngram", "must be a dict"),
    ],
)
def test_config_errors_name_the_problem(value: object, message: str) -> None:
    with pytest.raises(SpeculativeConfigError) as error:
        SpeculativeConfig.from_value(value)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_config_in_vllm_shape() -> None:
    config = SpeculativeConfig.from_value(
        {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3}
    )
    assert config == SpeculativeConfig("ngram", 5, 3, 3)
    low = SpeculativeConfig.from_value({"method": "ngram", "prompt_lookup_max": 2})
    assert low == SpeculativeConfig("ngram", 7, 2, 2)  # the default min follows a lower max down


LOGITS = torch.tensor([[1.0, 0.8, 0.6, 0.4, 0.2, 0.0, -0.2, 1.2]])
DRAWS = 3000


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.8, top_k=6, top_p=0.9, presence_penalty=0.5),
        SamplingParams(temperature=1.3, min_p=0.05, repetition_penalty=1.3, logit_bias={4: 1.0}),
    ],
    ids=["plain", "topk-topp-presence", "minp-repetition-bias"],
)
def test_rejection_rule_keeps_the_sampler_law(params: SamplingParams) -> None:
    """First emitted token: the same law as sample_batch's; after an accepted draft, the next row's law."""
    draft = [7, 1, 3]  # likely, middling, unlikely
    raw = LOGITS.repeat(4, 1) + torch.tensor([0.0, 0.1, -0.1, 0.05])[:, None] * torch.arange(8)[None, :]
    generator = torch.Generator().manual_seed(1)
    row = SamplingRow(params, generator, [0, 1], [2], frozenset())
    first, second = np.zeros(8), np.zeros(8)
    for _ in range(DRAWS):
        emitted = [t.token_id for t in verify_draft(raw, draft, row)]
        first[emitted[0]] += 1
        if emitted[0] == draft[0] and len(emitted) > 1:
            second[emitted[1]] += 1
    plain_row = SamplingRow(params, torch.Generator().manual_seed(2), [0, 1], [2], frozenset())
    plain = np.bincount(
        [t.token_id for t in sample_batch(raw[:1].repeat(DRAWS, 1), [plain_row] * DRAWS)], minlength=8
    )
    seen = (first + plain) > 0
    assert chi2_contingency(np.stack([first[seen], plain[seen]])).pvalue > 1e-3, (first, plain)
    # The second token: the law of row 1 with the accepted draft counted as output (penalties see it).
    after = SamplingRow(params, None, [0, 1], [2, draft[0]], frozenset())
    expected = sampling_probs(process_logits(raw[1:2], [after]), [params])[0].numpy() * second.sum()
    support = expected > 0
    assert second[~support].sum() == 0  # nothing outside the truncated support
    assert support.sum() >= 3 and second.sum() > DRAWS / 10  # a test with room to fail
    assert chisquare(second[support], expected[support]).pvalue > 1e-3, (second, expected)


def test_greedy_accepts_the_argmax_prefix() -> None:
    raw = torch.zeros(4, 8)
    raw[0, 7] = raw[1, 2] = raw[2, 5] = raw[3, 0] = 1.0  # argmax run: 7, 2, 5, 0
    row = SamplingRow(SamplingParams(temperature=0, logprobs=2), None, [1], [], frozenset())
    assert [t.token_id for t in verify_draft(raw, [7, 2, 6], row)] == [7, 2, 5]
    assert [t.token_id for t in verify_draft(raw, [7, 2, 5], row)] == [7, 2, 5, 0]  # bonus token
    first = verify_draft(raw, [1, 2, 5], row)
    assert [t.token_id for t in first] == [7]
    assert first[0].logprob == pytest.approx(float(torch.log_softmax(raw[0], -1)[7]))
    assert first[0].top_logprobs is not None and first[0].top_logprobs[0][0] == 7


def test_cli_flags_build_the_config() -> None:
    import argparse

    from mistral_nemo.entrypoints.model_options import add_engine_arguments, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    config = engine_config_from_args(
        parser.parse_args(["--speculative", "ngram", "--speculative-tokens", "6"])
    )
    assert config.speculative_config == SpeculativeConfig("ngram", 6)
    assert engine_config_from_args(parser.parse_args([])).speculative_config is None
    with pytest.raises(ValueError, match="--speculative-tokens needs --speculative ngram"):
        engine_config_from_args(parser.parse_args(["--speculative-tokens", "6"]))


def test_metrics_report_acceptance() -> None:
    from mistral_nemo.engine.llm_engine import EngineStats
    from mistral_nemo.entrypoints.server.metrics import ServerMetrics

    stats = EngineStats(
        1, 0, 0.1, 0, 0, 0, 10, 20, spec_verifications=4, spec_draft_tokens=16, spec_accepted_tokens=12
    )
    text = ServerMetrics(lambda: stats).render().decode()
    assert "mistral_nemo:spec_decode_acceptance_rate 0.75" in text
    assert "mistral_nemo:spec_decode_mean_accepted_length 3.0" in text
    assert "mistral_nemo:spec_decode_num_draft_tokens_total 16.0" in text


def test_draft_length_follows_acceptance() -> None:
    from mistral_nemo.engine.speculative.decoder import draft_length

    assert draft_length(20.0, 0.0, 7) == 7  # everything accepted: the whole K
    assert draft_length(20.0, 0.0, 3) == 3  # never past K
    assert draft_length(0.0, 5.0, 7) == 1  # nothing accepted: only the cheapest probe
    lengths = [draft_length(a, 1.0, 7) for a in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]  # longer drafts as acceptance rises
