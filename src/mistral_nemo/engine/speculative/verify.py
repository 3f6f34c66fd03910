"""Lossless verification of a deterministic draft against the model's rows for it.

Row j of ``raw`` [1 + K, V] is the model's logits for the token after draft[:j]. Each row is
processed exactly as the sampler would process it at that point (logit bias, min_tokens,
penalties over the output *including the accepted drafts before it*, then temperature, top-k,
top-p, min-p), giving the target law p_j. A deterministic draft x_j is a one-hot proposal q, so
the standard rule (Leviathan et al. 2023, Chen et al. 2023) reads: accept x_j with probability
p_j(x_j); on rejection draw from the residual max(0, p_j - q) normalised, i.e. p_j without x_j;
after K acceptances draw a bonus token from p_K. Each emitted token is then distributed exactly
as plain sampling would draw it. Greedy rows accept while the draft equals the argmax and emit
the argmax at the first difference: token for token what plain greedy decoding gives.
Uniforms come from the sequence's own generator, so seeded runs repeat.
"""

from __future__ import annotations

import torch

from mistral_nemo.engine.sampler import (
    SampledToken,
    SamplingRow,
    argmax_rows,
    process_logits,
    prompt_logprobs,
    sampling_probs,
)


def verify_draft(raw: torch.Tensor, draft: list[int], row: SamplingRow) -> list[SampledToken]:
    """The tokens to emit (accepted drafts, then one corrected or bonus token): 1 to K + 1 of them."""
    k = len(draft)
    if raw.shape[0] != k + 1:
        raise ValueError(f"a draft of {k} tokens needs {k + 1} rows of logits, got {raw.shape[0]}")
    x = _processed(raw, draft, row)
    if row.params.greedy:
        target = argmax_rows(x).tolist()
        accepted = 0
        while accepted < k and draft[accepted] == target[accepted]:
            accepted += 1
        emitted = [*draft[:accepted], target[accepted]]
    else:
        emitted = _rejection_sample(sampling_probs(x, [row.params] * (k + 1)), draft, row.generator)
    return _with_logprobs(raw, emitted, row)


def _processed(raw: torch.Tensor, draft: list[int], row: SamplingRow) -> torch.Tensor:
    """float32 rows after bias / min_tokens / penalties, each seeing the drafts before it as output."""
    rows = [
        SamplingRow(row.params, row.generator, row.prompt_ids, list(row.output_ids) + draft[:j], row.stop_ids)
        for j in range(len(draft) + 1)
    ]
    if not _adjusts(rows):
        return raw.float()
    return process_logits(raw, rows)


def _adjusts(rows: list[SamplingRow]) -> bool:
    p = rows[0].params
    return (
        bool(p.logit_bias)
        or (bool(rows[0].stop_ids) and len(rows[0].output_ids) < p.min_tokens)
        or p.repetition_penalty != 1.0
        or p.presence_penalty != 0.0
        or p.frequency_penalty != 0.0
    )


def _rejection_sample(probs: torch.Tensor, draft: list[int], generator: torch.Generator | None) -> list[int]:
    emitted: list[int] = []
    for j, token in enumerate(draft):
        p = probs[j]
        if _uniform(generator) < float(p[token]):
            emitted.append(token)
            continue
        residual = p.clone()
        residual[token] = 0.0
        emitted.append(_draw(residual, generator))
        return emitted
    emitted.append(_draw(probs[len(draft)], generator))
    return emitted


def _uniform(generator: torch.Generator | None) -> float:
    return float(torch.rand(1, dtype=torch.float64, generator=generator))


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Inverse-CDF draw from unnormalised float64 probabilities [V] with one uniform."""
    cdf = probs.cumsum(-1)
    u = torch.rand(1, dtype=torch.float64, generator=generator)
    picked = int(torch.searchsorted(cdf, u * cdf[-1], right=True))
    return min(picked, probs.shape[0] - 1)


def _with_logprobs(raw: torch.Tensor, emitted: list[int], row: SamplingRow) -> list[SampledToken]:
    """Raw-distribution logprobs (as the sampler reports them) of each emitted token, when asked."""
    if row.params.logprobs is None:
        return [SampledToken(t, None, None) for t in emitted]
    entries = prompt_logprobs(raw[: len(emitted)], [0, *emitted], row.params.logprobs)[1:]
    return [SampledToken(t, e[0], e[1]) for t, e in zip(emitted, entries, strict=True) if e is not None]
