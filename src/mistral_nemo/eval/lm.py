"""MistralNemoLM: lm-eval's model interface on this project's engine (the public `LLM` API).

Registered in lm-eval as `mistral-nemo`, so `lm_eval.simple_evaluate(model="mistral-nemo",
model_args="pretrained=PATH,quantization=none")` works once `mistral_nemo.eval` is imported.
Tokenization follows lm-eval's `hf` backend: the tokenizer's own BOS default (a Mistral model's
`<s>`; none for SmolLM2), no second BOS when the text already starts with it, and BOS (else EOS) as
the context of an empty-context request. Loglikelihoods come from the engine's prompt logprobs
(log-softmax of float32 logits), all requests of a task submitted together so the engine batches
them; `is_greedy` compares token ids with the top-1 prompt logprob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models: its registry loads them only while empty)
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from mistral_nemo.engine.llm import LLM
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.tokenizer import Tokenizer

# Requests handed to the engine at once: large enough to fill its batches, small enough that the
# progress bar moves and the prompt-logprob rows of one chunk stay a few hundred MB at most.
CHUNK = 64
GENERATION_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k"}

# lm-eval's (context, continuation) cache key, context ids, continuation ids
LoglikelihoodRequest = tuple[Any, list[int], list[int]]


@register_model("mistral-nemo")
class MistralNemoLM(TemplateLM):
    """lm-eval LM on an `LLM`; build it from a loaded `LLM` or from a model path like the CLI."""

    def __init__(
        self,
        pretrained: str | None = None,
        llm: LLM | None = None,
        quantization: str = "auto",
        dtype: str | None = None,
        device: str | None = None,
        add_bos_token: bool | None = None,
        max_gen_toks: int = 256,
        batch_size: int | str = CHUNK,
        show_progress: bool = True,
        **engine_options: Any,
    ) -> None:
        super().__init__()
        self.llm = (
            llm
            if llm is not None
            else LLM(pretrained, quantization=quantization, dtype=dtype, device=device, **engine_options)
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.add_bos_token = self.tokenizer.add_bos if add_bos_token is None else bool(add_bos_token)
        self.max_gen_toks = int(max_gen_toks)
        self.chunk = CHUNK if str(batch_size).startswith("auto") else max(1, int(batch_size))
        self.show_progress = show_progress

    # ---- what TemplateLM asks for --------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_id)

    @property
    def prefix_token_id(self) -> int:
        bos = _optional_id(self.tokenizer, "bos_id")
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return int(self.llm.engine.max_model_len)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name", type(self.tokenizer).__name__))

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        if add_special_tokens is None and self._starts_with_bos(string):
            bos = False  # as lm-eval's hf backend: never a second BOS
        return self.tokenizer.encode(string, bos=bool(bos))

    def _starts_with_bos(self, string: str) -> bool:
        bos = _optional_id(self.tokenizer, "bos_id")
        return bos is not None and string.startswith(self.tokenizer.id_to_piece(bos))

    # ---- scoring -------------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: Sequence[LoglikelihoodRequest], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of the continuation's logprobs, whether greedy decoding gives the continuation)."""
        window = self.max_length - 1  # one slot for the token the engine must generate
        prompts: list[list[int]] = []
        spans: list[int] = []
        for _, context, continuation in requests:
            whole = (context + continuation)[-window:]
            prompts.append(whole)
            spans.append(min(len(continuation), len(whole) - 1))
        unique = {tuple(p): None for p in prompts}  # the same (context, continuation) scored once
        logprobs = self._prompt_logprobs([list(p) for p in unique], disable_tqdm)
        scored = dict(zip(unique, logprobs, strict=True))
        results = []
        for prompt, span in zip(prompts, spans, strict=True):
            entries = scored[tuple(prompt)][len(prompt) - span :]
            total = sum(e.logprob for e in entries)
            greedy = all(e.top and e.top[0][0] == e.token_id for e in entries)
            results.append((float(total), bool(greedy)))
        return results

    def _prompt_logprobs(self, prompts: list[list[int]], disable_tqdm: bool) -> list[list[Any]]:
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        out: list[list[Any]] = []
        with self._bar(len(prompts), "loglikelihood", disable_tqdm) as bar:
            for start in range(0, len(prompts), self.chunk):
                batch = prompts[start : start + self.chunk]
                for result in self.llm.generate(batch, params, use_tqdm=False):
                    out.append(list(result.prompt_logprobs or []))
                bar.update(len(batch))
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scores: disjoint windows of the whole text, as lm-eval's hf backend cuts them."""
        per_request: list[list[LoglikelihoodRequest]] = []
        for (text,) in (r.args for r in requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text, add_special_tokens=False),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length - 1,
                context_len=1,
            )
            per_request.append([(None, ctx, cont) for ctx, cont in map(make_disjoint_window, windows)])
        flat = [w for windows in per_request for w in windows]
        scores = iter(self._loglikelihood_tokens(flat, disable_tqdm=disable_tqdm))
        return [sum(next(scores)[0] for _ in windows) for windows in per_request]

    # ---- generation ----------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        prompts: list[list[int]] = []
        params: list[SamplingParams] = []
        for context, gen_kwargs in (r.args for r in requests):
            sampling, room = self._generation_params(dict(gen_kwargs))
            prompts.append(self.tok_encode(context)[-room:])
            params.append(sampling)
        texts: list[str] = []
        with self._bar(len(prompts), "generate_until", disable_tqdm) as bar:
            for start in range(0, len(prompts), self.chunk):
                end = start + self.chunk
                outputs = self.llm.generate(prompts[start:end], params[start:end], use_tqdm=False)
                texts += [o.outputs[0].text for o in outputs]
                bar.update(len(outputs))
        return texts

    def _generation_params(self, gen_kwargs: dict[str, Any]) -> tuple[SamplingParams, int]:
        unknown = sorted(set(gen_kwargs) - GENERATION_KWARGS)
        if unknown:
            known = ", ".join(sorted(GENERATION_KWARGS))
            raise ValueError(f"generation_kwargs {unknown} are not supported (known: {known})")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tokenizer.decode([self.eot_token_id])
        if eos_text and eos_text not in until:
            until.append(eos_text)  # as the hf backend does; the engine stops on EOS anyway
        max_tokens = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        greedy = not gen_kwargs.get("do_sample", False) or float(gen_kwargs.get("temperature", 0.0)) == 0.0
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if greedy else float(gen_kwargs.get("temperature", 1.0)),
            top_p=float(gen_kwargs.get("top_p", 1.0)),
            top_k=int(gen_kwargs.get("top_k", 0)),
            stop=[s for s in until if s],
        )
        return sampling, max(1, self.max_length - max_tokens)

    def _bar(self, total: int, desc: str, disable: bool) -> Any:
        return tqdm(total=total, desc=desc, unit="item", disable=disable or not self.show_progress)


def _optional_id(tokenizer: Tokenizer, name: str) -> int | None:
    try:
        return int(getattr(tokenizer, name))
    except Exception:  # the tokenizer has no such token (TokenizerError) or attribute
        return None
