"""LLMEngine: requests in, one batched step at a time, outputs out (synchronous core of serving)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mistral_nemo.engine.block_manager import BlockManager
from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.constraints import DecodingConstraint, apply_constraints
from mistral_nemo.engine.errors import RequestError
from mistral_nemo.engine.model_runner import ModelRunner
from mistral_nemo.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from mistral_nemo.engine.paged_cache import PagedKVCache
from mistral_nemo.engine.sampler import SamplingRow, make_generator, prompt_logprobs, sample_batch
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.engine.scheduler import Scheduler
from mistral_nemo.engine.sequence import FinishReason, Sequence
from mistral_nemo.engine.speculative.decoder import SpeculativeDecoder
from mistral_nemo.engine.stop_strings import StopStringFilter
from mistral_nemo.model.loading import LoadedModel
from mistral_nemo.tokenizer import IncrementalDetokenizer, SpecialTokenPolicy

if TYPE_CHECKING:
    from mistral_nemo.engine.structured_output import GrammarCompiler


@dataclass
class _SeqText:
    """Per-sequence output state: streaming text, stop strings, logprobs."""

    detokenizer: IncrementalDetokenizer
    stops: StopStringFilter
    stop_ids: frozenset[int]
    text: str = ""
    delta_text: str = ""
    delta_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    stop_reason: int | str | None = None
    constraint: DecodingConstraint | None = None
    row: SamplingRow | None = None  # what the sampler reads; its id lists grow in place


@dataclass
class _Request:
    request_id: str
    prompt_ids: list[int]
    prompt_text: str | None
    params: SamplingParams
    seqs: list[Sequence]
    arrival: float = field(default_factory=time.monotonic)
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int
    prompt_tokens: int
    generation_tokens: int
    spec_verifications: int = 0  # sequence-steps that verified drafts
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0


class LLMEngine:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        model = loaded.model
        self.max_model_len = min(
            self.config.max_model_len or loaded.args.max_seq_len, loaded.args.max_seq_len
        )
        block_size = self.config.block_size
        # The memory budget, but never more blocks than max_num_seqs full-length sequences can use.
        usable = self.config.max_num_seqs * -(-self.max_model_len // block_size)
        budget = self.config.kv_cache_memory // PagedKVCache.bytes_per_block(
            loaded.args, block_size, model.dtype
        )
        num_blocks = self.config.num_blocks or max(1, min(budget, usable))
        self.blocks = BlockManager(num_blocks, block_size, self.config.enable_prefix_caching)
        self.cache = PagedKVCache(loaded.args, num_blocks, block_size, model.dtype, model.device)
        self.runner = ModelRunner(model, self.cache)
        self.scheduler = Scheduler(
            self.blocks,
            self.max_model_len,
            self.config.max_num_seqs,
            self.config.max_num_batched_tokens,
            self.config.max_queue,
        )
        spec = self.config.speculative_config
        self.speculator = (
            SpeculativeDecoder(
                spec,  # type: ignore[arg-type]
                self.blocks,
                self.max_model_len,
                self.config.max_num_batched_tokens,
                draft_in_mixed_steps=not self.cache.has_decode_kernel,
            )
            if spec is not None
            else None
        )
        self._requests: dict[str, _Request] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._grammar_compiler: GrammarCompiler | None = None

    # ---- requests ------------------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, prompt_text: str | None = None
    ) -> None:
        """Queue a request. Raises RequestError / ContextLengthError / NeverFitsError / QueueFullError."""
        if request_id in self._requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            prompt_text, prompt_ids = prompt, self.tokenizer.encode(prompt, bos=self.tokenizer.add_bos)
        else:
            prompt_ids = [int(t) for t in prompt]
        vocab = self.loaded.args.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})")
        for field_name, ids in (
            ("logit_bias", params.logit_bias or ()),
            ("stop_token_ids", params.stop_token_ids),
        ):
            if any(not 0 <= t < vocab for t in ids):
                raise RequestError(f"{field_name} names a token id outside the vocabulary (0..{vocab - 1})")
        self.scheduler.check(len(prompt_ids), params.max_tokens, params.n)
        if params.structured_outputs is not None and params.constraint is None:
            from mistral_nemo.engine.structured_output import structured_output_constraint  # llguidance

            params = params.clone(
                constraint=structured_output_constraint(self.grammar_compiler(), params.structured_outputs)
            )
        seqs = [self._new_seq(request_id, prompt_ids, params, i) for i in range(params.n)]
        for seq in seqs[1:]:
            seq.first_sibling = seqs[0]
        request = _Request(request_id, prompt_ids, prompt_text, params, seqs)
        if params.prompt_logprobs is not None:
            request.prompt_logprobs = [None]
        self._requests[request_id] = request
        for seq in seqs:
            self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request at once and free all its blocks; False if it is unknown or already done."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)
                seq.finish_reason = FinishReason.ABORT
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def capacity_tokens(self) -> int:
        """The most tokens one sequence can ever hold: the context, or the whole KV pool if smaller."""
        return min(self.max_model_len, self.blocks.num_blocks * self.blocks.block_size)

    def request_ids(self) -> list[str]:
        return list(self._requests)

    def grammar_compiler(self) -> GrammarCompiler:
        """The tokenizer's grammar view for structured output, built on first use (~1 s at 131k tokens)."""
        if self._grammar_compiler is None:
            from mistral_nemo.engine.structured_output import GrammarCompiler

            self._grammar_compiler = GrammarCompiler(self.tokenizer)
        return self._grammar_compiler

    # ---- stepping ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one batched forward pass; return the outputs of every request that moved."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        drafts = self.speculator.propose(batch, self.scheduler.running) if self.speculator else {}
        logits = self.runner.run(batch, drafts) if drafts else self.runner.run(batch)
        sampling: list[Sequence] = []
        for item in batch:
            seq = item.seq
            if seq.seq_id in logits.prompt:
                self._record_prompt_logprobs(seq, *logits.prompt[seq.seq_id])
            seq.num_computed += item.num_tokens
            self.blocks.register_computed(seq)
            if seq.num_computed <= len(seq.prompt_ids):
                self.prompt_tokens_total += item.num_tokens
            if seq.seq_id in drafts:
                self._verify_draft(seq, logits.drafted[seq.seq_id], drafts[seq.seq_id])
            elif seq.num_computed == len(seq):
                sampling.append(seq)
        if sampling:
            rows = [seq.state.row for seq in sampling]
            next_logits = logits.next_token_rows([seq.seq_id for seq in sampling])
            next_logits = apply_constraints(next_logits, [seq.state.constraint for seq in sampling])
            for seq, sampled in zip(sampling, sample_batch(next_logits, rows), strict=True):
                self._append_token(seq, sampled)
        touched = {item.seq.request_id for item in batch}
        return [self._request_output(self._requests[r]) for r in touched if r in self._requests]

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.blocks.usage,
            prefix_cache_queries=self.blocks.prefix_queries,
            prefix_cache_hits=self.blocks.prefix_hits,
            preemptions=self.scheduler.num_preemptions,
            prompt_tokens=self.prompt_tokens_total,
            generation_tokens=self.generation_tokens_total,
            **(
                {
                    "spec_verifications": self.speculator.stats.verifications,
                    "spec_draft_tokens": self.speculator.stats.draft_tokens,
                    "spec_accepted_tokens": self.speculator.stats.accepted_tokens,
                }
                if self.speculator
                else {}
            ),
        )

    # ---- internals -----------------------------------------------------------------------------

    def _new_seq(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, index: int
    ) -> Sequence:
        seq = Sequence(request_id, list(prompt_ids), params, index=index)
        seq.generator = make_generator(params, self.runner.device, index=index)  # siblings: seed + index
        policy = SpecialTokenPolicy.SKIP if params.skip_special_tokens else SpecialTokenPolicy.KEEP
        stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else frozenset(self.tokenizer.eog_ids)
        )
        seq.state = _SeqText(
            IncrementalDetokenizer(self.tokenizer, policy),
            StopStringFilter(params.stop),
            stop_ids,
            logprobs=[] if params.logprobs is not None else None,
            constraint=params.constraint() if params.constraint is not None else None,
        )
        seq.state.row = SamplingRow(params, seq.generator, seq.prompt_ids, seq.output_ids, stop_ids)
        return seq

    def _verify_draft(self, seq: Sequence, rows: torch.Tensor, draft: list[int]) -> None:
        """Emit the verified run (accepted drafts + one token) until a stop, then roll back the rest."""
        assert self.speculator is not None
        for sampled in self.speculator.verify(seq, rows, draft, seq.state.row):
            self._append_token(seq, sampled)
            if seq.is_finished:
                break
        else:
            self.blocks.register_computed(seq)
        self.speculator.settle(seq)

    def _append_token(self, seq: Sequence, sampled: Any) -> None:
        state: _SeqText = seq.state
        token = sampled.token_id
        if state.constraint is not None:
            state.constraint.accept(token)
        seq.append_token(token)
        self.generation_tokens_total += 1
        state.delta_ids.append(token)
        if state.logprobs is not None:
            state.logprobs.append(TokenLogprob(token, sampled.logprob, sampled.top_logprobs))
        if token in state.stop_ids:
            self._add_text(state, state.detokenizer.flush())
            self._add_text(state, state.stops.flush())
            state.stop_reason = token
            return self._finish(seq, FinishReason.STOP)
        self._add_text(state, state.stops.add(state.detokenizer.add(token)))
        if state.stops.stopped:
            state.stop_reason = state.stops.matched
            if seq.params.include_stop_str_in_output and state.stops.matched:
                self._add_text(state, state.stops.matched)
            return self._finish(seq, FinishReason.STOP)
        if seq.params.max_tokens is not None and len(seq.output_ids) >= seq.params.max_tokens:
            return self._finish(seq, FinishReason.LENGTH, flush=True)
        if len(seq) >= self.max_model_len:
            return self._finish(seq, FinishReason.CONTEXT, flush=True)
        return None

    def _finish(self, seq: Sequence, reason: FinishReason, flush: bool = False) -> None:
        if flush:
            state: _SeqText = seq.state
            self._add_text(state, state.stops.add(state.detokenizer.flush()))
            self._add_text(state, state.stops.flush())
        seq.finish_reason = reason
        self.scheduler.finish(seq)

    @staticmethod
    def _add_text(state: _SeqText, text: str) -> None:
        state.text += text
        state.delta_text += text

    def _record_prompt_logprobs(self, seq: Sequence, first: int, rows: torch.Tensor) -> None:
        request = self._requests[seq.request_id]
        if seq.index != 0 or request.prompt_logprobs is None:
            return
        k = seq.params.prompt_logprobs or 0
        targets = seq.prompt_ids[first : first + rows.shape[0] + 1]
        for token_id, entry in zip(targets[1:], prompt_logprobs(rows, targets, k)[1:], strict=True):
            assert entry is not None
            request.prompt_logprobs.append(TokenLogprob(token_id, entry[0], entry[1]))

    def _request_output(self, request: _Request) -> RequestOutput:
        outputs = []
        for seq in request.seqs:
            state: _SeqText = seq.state
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=state.text,
                    token_ids=list(seq.output_ids),
                    finish_reason=seq.finish_reason.value if seq.finish_reason else None,
                    stop_reason=state.stop_reason,
                    logprobs=list(state.logprobs) if state.logprobs is not None else None,
                    delta_text=state.delta_text,
                    delta_token_ids=state.delta_ids,
                )
            )
            state.delta_text, state.delta_ids = "", []
        finished = all(seq.is_finished for seq in request.seqs)
        if finished:
            del self._requests[request.request_id]
        return RequestOutput(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_ids,
            outputs=outputs,
            finished=finished,
            prompt=request.prompt_text,
            prompt_logprobs=request.prompt_logprobs,
            num_cached_tokens=request.seqs[0].num_cached_prompt,
        )
