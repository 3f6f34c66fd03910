"""The batched sampler: parameter validation, logits processors, filters, seeds and logprobs."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from mistral_nemo.engine.sampler import (
    SampledToken,
    SamplingRow,
    make_generator,
    process_logits,
    prompt_logprobs,
    sample_batch,
    sample_next,
)
from mistral_nemo.engine.sampling_params import SamplingParams, SamplingParamsError

VOCAB = 64


def _logits(rows: int, vocab: int = VOCAB, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def _row(
    params: SamplingParams,
    prompt: list[int] | None = None,
    output: list[int] | None = None,
    stop_ids: frozenset[int] = frozenset(),
    index: int = 0,
) -> SamplingRow:
    return SamplingRow(params, make_generator(params, index=index), prompt or [], output or [], stop_ids)


# ---- SamplingParams ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_tokens", 0),
        ("n", 0),
        ("n", 129),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("top_k", 1.5),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("presence_penalty", 2.5),
        ("presence_penalty", -2.1),
        ("frequency_penalty", -3.0),
        ("frequency_penalty", 2.01),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", 2.5),
        ("logit_bias", {5: 101.0}),
        ("logit_bias", {-1: 1.0}),
        ("logit_bias", {"abc": 1.0}),
        ("logit_bias", [1, 2]),
        ("min_tokens", -1),
        ("min_tokens", 17),  # above max_tokens=16
        ("logprobs", -1),
        ("logprobs", 21),
        ("prompt_logprobs", 21),
        ("seed", "7"),
        ("stop", [""]),
        ("stop_token_ids", [-3]),
    ],
)
def test_out_of_range_parameter_is_named(name: str, value: object) -> None:
    with pytest.raises(SamplingParamsError, match=name) as error:
        SamplingParams(**{name: value})
    assert error.value.param == name  # what a server reports as the field at fault


def test_params_normalisation_and_clone() -> None:
    params = SamplingParams(
        top_k=-1, logit_bias={"12": 5, 7: -100}, stop="END", max_tokens=None, min_tokens=50
    )
    assert params.top_k == 0
    assert params.logit_bias == {12: 5.0, 7: -100.0}
    assert params.stop == ["END"]
    assert SamplingParams(temperature=0).greedy and not params.greedy
    copy = params.clone(temperature=0.5)
    assert copy.temperature == 0.5 and copy.logit_bias == params.logit_bias
    assert copy.logit_bias is not params.logit_bias and copy.stop is not params.stop
    with pytest.raises(SamplingParamsError, match="top_p"):
        params.clone(top_p=2.0)


# ---- logits processors ---------------------------------------------------------------------------


def test_greedy_is_argmax_of_each_row() -> None:
    logits = _logits(6)
    rows = [_row(SamplingParams(temperature=0)) for _ in range(6)]
    assert [t.token_id for t in sample_batch(logits, rows)] == logits.argmax(-1).tolist()
    assert sample_next(logits[2], SamplingParams(temperature=0), None) == int(logits[2].argmax())


def test_logit_bias_forces_and_bans() -> None:
    logits = _logits(1)
    worst, best = int(logits[0].argmin()), int(logits[0].argmax())
    forced = SamplingParams(temperature=1.0, seed=1, logit_bias={worst: 100})
    banned = SamplingParams(temperature=0, logit_bias={str(best): -100})
    for _ in range(20):
        token = sample_batch(logits, [_row(forced)])[0].token_id
        assert token == worst
    assert sample_batch(logits, [_row(banned)])[0].token_id == int(logits[0].topk(2).indices[1])
    hot = SamplingParams(temperature=2.0, seed=2, logit_bias={best: -100})
    generator = make_generator(hot)
    row = SamplingRow(hot, generator, [], [], frozenset())
    assert all(sample_batch(logits, [row])[0].token_id != best for _ in range(200))


def test_min_tokens_masks_stop_ids_until_reached() -> None:
    logits = _logits(1)
    eos = int(logits[0].argmax())
    stops = frozenset({eos, 3})
    params = SamplingParams(temperature=0, min_tokens=2)
    for produced, expect_eos in ((0, False), (1, False), (2, True), (5, True)):
        row = _row(params, output=[9] * produced, stop_ids=stops)
        token = sample_batch(logits, [row])[0].token_id
        assert (token == eos) == expect_eos
        masked = process_logits(logits, [row])[0]
        assert torch.isinf(masked[[eos, 3]]).all() == (not expect_eos)


def test_presence_and_frequency_penalties_match_direct_computation() -> None:
    logits = _logits(3)
    prompt, output = [1, 2, 2, 40], [5, 5, 5, 7, 2, 63]
    params = [
        SamplingParams(presence_penalty=0.7, frequency_penalty=0.3),
        SamplingParams(presence_penalty=-1.5, frequency_penalty=2.0),
        SamplingParams(),  # untouched neighbour
    ]
    rows = [_row(p, prompt, output) for p in params]
    got = process_logits(logits, rows)
    for i, p in enumerate(params):
        expected = logits[i].clone()
        for token, count in Counter(output).items():  # prompt tokens (1, 40) are not penalised
            expected[token] -= p.presence_penalty + p.frequency_penalty * count
        torch.testing.assert_close(got[i], expected, rtol=0, atol=1e-6)
    assert torch.equal(got[2], logits[2])


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty: float) -> None:
    logits = _logits(2, seed=3)
    prompt, output = [0, 4, 4, 10, 33], [4, 50, 12, 12]
    rows = [_row(SamplingParams(repetition_penalty=penalty), prompt, output) for _ in range(2)]
    reference = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt + output] * 2), logits.clone())
    torch.testing.assert_close(process_logits(logits, rows), reference, rtol=0, atol=0)


def test_processing_leaves_the_callers_logits_alone() -> None:
    logits = _logits(1)
    before = logits.clone()
    params = SamplingParams(logit_bias={1: 50}, repetition_penalty=1.5, presence_penalty=1.0)
    sample_batch(logits, [_row(params, [1, 2], [3], frozenset({4}))])
    assert torch.equal(logits, before)


# ---- filters -------------------------------------------------------------------------------------


def _allowed(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> set[int]:
    """The reference: the tokens each filter keeps, computed one row at a time."""
    probs = torch.softmax(logits / temperature, -1)
    order = probs.argsort(descending=True)
    keep = order[:top_k] if top_k else order
    kept = probs[keep] / probs[keep].sum()
    mass_before = kept.cumsum(0) - kept
    keep = keep[mass_before < top_p]
    return {int(t) for t in keep if probs[t] >= min_p * probs[order[0]]}


@pytest.mark.parametrize(
    ("top_k", "top_p", "min_p"),
    [(5, 1.0, 0.0), (0, 0.6, 0.0), (0, 1.0, 0.2), (8, 0.8, 0.05), (3, 0.99, 0.5), (1, 1.0, 0.0)],
)
def test_filters_never_pick_outside_the_allowed_set(top_k: int, top_p: float, min_p: float) -> None:
    logits = _logits(1, scale=1.5, seed=top_k)
    params = SamplingParams(temperature=1.3, top_k=top_k, top_p=top_p, min_p=min_p, seed=4)
    allowed = _allowed(logits[0], 1.3, top_k, top_p, min_p)
    row = _row(params)
    seen = {t.token_id for t in sample_batch(logits.expand(400, -1), [row] * 400)}
    assert seen <= allowed
    assert len(seen) >= min(len(allowed), 2)  # it really samples within the set


@pytest.mark.parametrize("top_k", [0, 3])
def test_temperature_sampling_follows_softmax(top_k: int) -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0, 1.0, 0.5]])  # unsorted, so the top-k path must map back
    temperature, draws = 0.7, 20_000
    params = SamplingParams(temperature=temperature, top_k=top_k, seed=123)
    row = _row(params)
    tokens = [t.token_id for t in sample_batch(logits.expand(draws, -1), [row] * draws)]
    counts = torch.bincount(torch.tensor(tokens), minlength=5).double()
    scaled = logits[0].double() / temperature
    if top_k:
        scaled[scaled.argsort(descending=True)[top_k:]] = float("-inf")
    expected = torch.softmax(scaled, -1) * draws
    kept = expected > 0
    assert counts[~kept].sum() == 0
    chi_square = float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())
    assert chi_square < {4: 18.47, 2: 13.82}[int(kept.sum()) - 1]  # p = 0.001 at those degrees of freedom


# ---- seeds and batching ---------------------------------------------------------------------------


def _run(configs: list[tuple[SamplingParams, int]], logits_per_step: list[torch.Tensor]) -> list[list[int]]:
    """Sample several steps for the given (params, logits-row) pairs, feeding outputs back."""
    rows = [_row(p, prompt=[1, 2, 3]) for p, _ in configs]
    for step_logits in logits_per_step:
        picked = torch.stack([step_logits[source] for _, source in configs])
        for row, token in zip(rows, sample_batch(picked, rows), strict=True):
            row.output_ids.append(token.token_id)
    return [list(r.output_ids) for r in rows]


def test_seeded_rows_draw_the_same_tokens_alone_or_batched() -> None:
    steps = [_logits(4, vocab=1000, seed=s, scale=1.0) for s in range(12)]
    seeded = [
        (SamplingParams(temperature=1.0, seed=11), 0),
        (SamplingParams(temperature=0.8, top_p=0.9, seed=12), 1),
        (SamplingParams(temperature=1.2, top_k=50, min_p=0.01, seed=13, presence_penalty=0.5), 2),
        (SamplingParams(temperature=0, repetition_penalty=1.2), 3),
    ]
    others = [
        (SamplingParams(temperature=1.0), 3),  # unseeded
        (SamplingParams(temperature=0), 0),
        (SamplingParams(temperature=0.5, top_k=3, top_p=0.5, seed=99, frequency_penalty=1.0), 1),
        (SamplingParams(temperature=1.0, min_p=0.3, logit_bias={5: 3.0}, logprobs=3), 2),
    ]
    alone = [_run([config], steps)[0] for config in seeded]
    assert len(set(alone[0])) > 1
    batched = _run(seeded + others, steps)[: len(seeded)]
    mixed_order = _run([others[0], seeded[2], others[1], seeded[0], seeded[3], others[2], seeded[1]], steps)
    assert batched == alone
    assert [mixed_order[3], mixed_order[6], mixed_order[1], mixed_order[4]] == alone


def test_n_sequences_get_distinct_seeds() -> None:
    params = SamplingParams(temperature=1.0, seed=5, n=2)
    logits = _logits(1, vocab=1000, scale=0.1)
    first, second = (make_generator(params, index=i) for i in range(2))
    assert [sample_next(logits[0], params, first) for _ in range(10)] != [
        sample_next(logits[0], params, second) for _ in range(10)
    ]


# ---- logprobs ------------------------------------------------------------------------------------


def test_logprobs_are_raw_and_top_k_is_true_top_k() -> None:
    logits = _logits(4)
    raw = torch.log_softmax(logits, -1)
    params = [
        SamplingParams(temperature=0.5, seed=1, logprobs=5, logit_bias={3: 10.0}, presence_penalty=1.0),
        SamplingParams(temperature=0, logprobs=0),
        SamplingParams(temperature=1.0, seed=2),
        SamplingParams(temperature=0, logprobs=20, top_k=2),
    ]
    out = sample_batch(logits, [_row(p, output=[3, 4]) for p in params])
    assert isinstance(out[0], SampledToken)
    for i, (p, token) in enumerate(zip(params, out, strict=True)):
        if p.logprobs is None:
            assert token.logprob is None and token.top_logprobs is None
            continue
        assert token.logprob == pytest.approx(float(raw[i, token.token_id]), abs=1e-6)
        top = raw[i].topk(p.logprobs)
        assert token.top_logprobs is not None and len(token.top_logprobs) == p.logprobs
        assert [t for t, _ in token.top_logprobs] == top.indices.tolist()
        assert [v for _, v in token.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_prompt_logprobs_match_log_softmax() -> None:
    prompt = [4, 17, 17, 2, 60, 33]
    logits = _logits(len(prompt))  # the last row (prediction after the prompt) is ignored
    result = prompt_logprobs(logits, prompt, 3)
    raw = torch.log_softmax(logits, -1)
    assert len(result) == len(prompt) and result[0] is None
    for t in range(len(prompt) - 1):
        entry = result[t + 1]
        assert entry is not None
        logprob, top = entry
        assert logprob == pytest.approx(float(raw[t, prompt[t + 1]]), abs=1e-6)
        assert [tok for tok, _ in top] == raw[t].topk(3).indices.tolist()
        assert [v for _, v in top] == pytest.approx(raw[t].topk(3).values.tolist(), abs=1e-6)
    assert [e[1] for e in prompt_logprobs(logits, prompt, 0)[1:]] == [[]] * 5  # type: ignore[index]
    assert prompt_logprobs(logits[:0], [9], 2) == [None]
    with pytest.raises(ValueError, match="rows"):
        prompt_logprobs(logits[:2], prompt, 1)


# ---- accepted extremes stay sound (issue 11 item 7) ----------------------------------------------


@pytest.mark.parametrize("temperature", [1e-38, 1e-30, 1e-6])
def test_tiny_temperature_is_greedy(temperature: float) -> None:
    # 1e-38 divided the logits past float32's range: softmax gave NaN and "ectableectable...".
    logits = _logits(8, seed=5)
    rows = [_row(SamplingParams(temperature=temperature, seed=i)) for i in range(8)]
    assert [t.token_id for t in sample_batch(logits, rows)] == logits.argmax(-1).tolist()


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-9])
def test_top_p_below_float32_keeps_the_top_token(top_p: float) -> None:
    # 1e-300 rounds to 0 in float32, which masked every token and drew a random one.
    logits = _logits(8, seed=6)
    for seed in range(5):
        rows = [_row(SamplingParams(temperature=1.0, top_p=top_p, seed=seed + 10 * i)) for i in range(8)]
        assert [t.token_id for t in sample_batch(logits, rows)] == logits.argmax(-1).tolist()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tiny_repetition_penalty_prefers_the_best_seen_token(temperature: float) -> None:
    # 1e-38 sent seen positive logits to inf (NaN probabilities); exactly, logit / 1e-38 keeps their order,
    # so the best seen token with a positive logit wins by a margin no float32 softmax can resolve.
    logits = _logits(4, seed=7)
    prompt = [3, 9, 17, 30, 41, 50]
    seen = logits[:, prompt]
    expected = [prompt[int(row.argmax())] for row in seen]
    assert (seen.max(-1).values > 0).all()
    params = SamplingParams(temperature=temperature, repetition_penalty=1e-38, seed=1)
    rows = [_row(params, prompt=prompt, index=i) for i in range(4)]
    processed = process_logits(logits, rows)
    assert not processed.isnan().any() and not (processed == float("inf")).any()
    assert [t.token_id for t in sample_batch(logits, rows)] == expected


def test_ordinary_repetition_penalty_is_not_shifted() -> None:
    # Only rows that overflow take the float64 path: ordinary penalties stay bit-identical to HF's.
    logits = _logits(2, seed=8)
    prompt = [1, 2, 3]
    rows = [_row(SamplingParams(temperature=0, repetition_penalty=1.3), prompt=prompt) for _ in range(2)]
    reference = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt, prompt]), logits.clone())
    assert torch.equal(process_logits(logits, rows), reference)


def test_greedy_ties_pick_the_first_index_like_torch() -> None:
    logits = torch.zeros(3, VOCAB)
    logits[0, [5, 9]] = 1.0
    logits[1, [0, VOCAB - 1]] = 2.0
    logits[2, 7] = float("nan")  # NaN counts as the maximum in torch.argmax
    rows = [_row(SamplingParams(temperature=0)) for _ in range(3)]
    assert [t.token_id for t in sample_batch(logits, rows)] == logits.argmax(-1).tolist() == [5, 0, 7]
