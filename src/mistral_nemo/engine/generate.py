"""TEST ORACLE, not a generation path: prefill the prompt, then sample token by token with a dense KV cache.

Every command and API generates through the engine (LLMEngine / LLM); this loop stays only as an
independent reference for tests and for bench/compare.py's kernel-only figure. It ignores penalties,
min_tokens and include_stop_str_in_output, so never call it for users. Text is streamed through
the incremental detokenizer (never half a character) and the stop-string filter (never any
part of a stop string).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from mistral_nemo.engine.dense_cache import DenseKVCache
from mistral_nemo.engine.sampler import make_generator, sample_next
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.engine.stop_strings import StopStringFilter
from mistral_nemo.model.transformer import Transformer
from mistral_nemo.tokenizer import IncrementalDetokenizer, Tokenizer

PREFILL_CHUNK = 2048  # long prompts are prefilled in pieces to bound the attention mask's memory


class PromptTooLongError(ValueError):
    """The prompt leaves no room to generate within the model's context."""


@dataclass
class GenerationStep:
    text: str  # newly visible text (may be empty while bytes or a possible stop string are held back)
    token_id: int
    finish_reason: str | None  # None while running; then "stop", "length" or "context"


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


def stream_generate(
    model: Transformer, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams
) -> Iterator[GenerationStep]:
    """Yield one step per generated token; the last step carries the finish reason."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    context = model.args.max_seq_len
    room = context - len(prompt_ids)
    if room < 1:
        raise PromptTooLongError(f"the prompt has {len(prompt_ids)} tokens; the context holds {context}")
    max_new = room if params.max_tokens is None else min(params.max_tokens, room)
    length_reason = "length" if params.max_tokens is not None and params.max_tokens <= room else "context"
    stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(tokenizer.eog_ids))

    device = model.device
    cache = DenseKVCache(model.args, len(prompt_ids) + max_new, dtype=model.dtype, device=device)
    detokenizer = IncrementalDetokenizer(tokenizer)
    stops = StopStringFilter(params.stop)
    generator = make_generator(params, device)
    with torch.inference_mode():
        logits = _prefill(model, cache, torch.tensor(list(prompt_ids), device=device))
        for step in range(max_new):
            token = sample_next(logits, params, generator)
            if token in stop_ids:
                yield GenerationStep(stops.add(detokenizer.flush()) + stops.flush(), token, "stop")
                return
            text = stops.add(detokenizer.add(token))
            if stops.stopped:
                yield GenerationStep(text, token, "stop")
                return
            if step == max_new - 1:
                yield GenerationStep(
                    text + stops.add(detokenizer.flush()) + stops.flush(), token, length_reason
                )
                return
            yield GenerationStep(text, token, None)
            position = torch.tensor([cache.length], device=device)
            logits = model(torch.tensor([token], device=device), position, cache)[-1]
            cache.advance(1)


def generate(
    model: Transformer, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams
) -> Generation:
    """The whole generation at once."""
    texts, ids, reason = [], [], "length"
    for step in stream_generate(model, tokenizer, prompt_ids, params):
        texts.append(step.text)
        ids.append(step.token_id)
        reason = step.finish_reason or reason
    return Generation("".join(texts), ids, reason, len(prompt_ids))


def _prefill(model: Transformer, cache: DenseKVCache, prompt: torch.Tensor) -> torch.Tensor:
    """Run the prompt through the model; return the logits of its last token."""
    logits = None
    for chunk in prompt.split(PREFILL_CHUNK):
        positions = torch.arange(cache.length, cache.length + chunk.shape[0], device=prompt.device)
        last_row = torch.tensor([chunk.shape[0] - 1], device=prompt.device)
        logits = model(chunk, positions, cache, output_rows=last_row)[-1]
        cache.advance(chunk.shape[0])
    assert logits is not None
    return logits
