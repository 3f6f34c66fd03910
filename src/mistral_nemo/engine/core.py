"""EngineCore: token ids in, one batched step at a time, token ids (and their logprobs) out.

It owns what runs the model: the scheduler, the block manager, the paged KV cache, the model
runner, the sampler and the decoding constraints. It never sees text: stop strings, detokenizing
and `RequestOutput` belong to the output processor (output_processor.py), which asks the core to
finish a sequence when a stop string ends it. Everything that ends a sequence on ids alone (a stop
token or end of turn, max_tokens, the context) is decided here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from mistral_nemo.engine.adapters import AdapterRegistry
from mistral_nemo.engine.block_manager import BlockManager
from mistral_nemo.engine.config import EngineConfig
from mistral_nemo.engine.constraints import DecodingConstraint, apply_constraints
from mistral_nemo.engine.errors import RequestError
from mistral_nemo.engine.info import EngineInfo
from mistral_nemo.engine.lora_request import LoRARequest
from mistral_nemo.engine.model_runner import ModelRunner
from mistral_nemo.engine.outputs import TokenLogprob
from mistral_nemo.engine.paged_cache import PagedKVCache
from mistral_nemo.engine.sampler import (
    SampledToken,
    SamplingRow,
    make_generator,
    prompt_logprobs,
    sample_batch,
)
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.engine.scheduler import ScheduledSeq, Scheduler
from mistral_nemo.engine.sequence import FinishReason, Sequence
from mistral_nemo.engine.speculative.decoder import SpeculativeDecoder
from mistral_nemo.model.loading import LoadedModel
from mistral_nemo.model.multi_lora import AdapterSlots

if TYPE_CHECKING:
    from mistral_nemo.engine.structured_output import GrammarCompiler


@dataclass
class EngineCoreOutput:
    """What one sequence did in one step (every sequence the step ran gets one, even mid-prefill)."""

    request_id: str
    index: int  # which of the request's n samples
    new_token_ids: list[int] = field(default_factory=list)
    new_logprobs: list[TokenLogprob] | None = None  # one per new token, when params.logprobs is set
    new_prompt_logprobs: list[TokenLogprob] | None = None  # prompt positions read this step (index 0)
    prompt_logprobs_position: int = 0  # the prompt position of new_prompt_logprobs[0]
    finish_reason: FinishReason | None = None
    stop_token_id: int | None = None  # the stop / end-of-turn token that ended it
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache


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


@dataclass(eq=False)
class SeqDecoding:
    """The core's per-sequence decoding state: what the sampler reads and what ends the sequence."""

    seq: Sequence
    row: SamplingRow  # its id lists are the sequence's own lists, growing in place
    stop_ids: frozenset[int]
    constraint: DecodingConstraint | None


@dataclass(eq=False)
class CoreRequest:
    request_id: str
    params: SamplingParams
    seqs: list[SeqDecoding]
    arrival: float = field(default_factory=time.monotonic)
    lora_int_id: int | None = None  # the adapter it holds a use of (released when it is forgotten)

    @property
    def finished(self) -> bool:
        return all(s.seq.is_finished for s in self.seqs)


class EngineCore:
    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.loaded = loaded
        self.vocab_size: int = loaded.args.vocab_size
        self.eog_ids: frozenset[int] = frozenset(loaded.tokenizer.eog_ids)
        model = loaded.model
        self.max_model_len = min(
            self.config.max_model_len or loaded.args.max_seq_len, loaded.args.max_seq_len
        )
        block_size = self.config.block_size
        # The memory budget, but never more blocks than max_num_seqs full-length sequences can use.
        usable = self.config.max_num_seqs * -(-self.max_model_len // block_size)
        # model.args: this rank's heads under tensor parallelism (the whole model's otherwise).
        budget = self.config.kv_cache_memory // PagedKVCache.bytes_per_block(
            model.args, block_size, model.dtype
        )
        num_blocks = self.config.num_blocks or max(1, min(budget, usable))
        self.blocks = BlockManager(num_blocks, block_size, self.config.enable_prefix_caching)
        # model.args: under tensor parallelism, this rank's own heads (model/tensor_parallel.py).
        self.cache = PagedKVCache(model.args, num_blocks, block_size, model.dtype, model.device)
        # enable_lora wraps the model's target linears in place (model/multi_lora.py): per-token adapters.
        slots = AdapterSlots(model, self.config.max_loras) if self.config.enable_lora else None
        self.adapters = AdapterRegistry(slots, loaded.args) if slots is not None else None
        self.runner = ModelRunner(model, self.cache, slots)
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
                spec,  # type: ignore[arg-type]  # EngineConfig made it a SpeculativeConfig
                self.blocks,
                self.max_model_len,
                self.config.max_num_batched_tokens,
                draft_in_mixed_steps=not self.cache.has_decode_kernel,
            )
            if spec is not None
            else None
        )
        self.info = EngineInfo(
            model_name=loaded.name,
            max_model_len=self.max_model_len,
            vocab_size=self.vocab_size,
            block_size=block_size,
            kv_cache_blocks=num_blocks,
            max_num_seqs=self.config.max_num_seqs,
            max_queue=self.config.max_queue,
            prefix_caching=self.config.enable_prefix_caching,
        )
        self.requests: dict[str, CoreRequest] = {}
        self.by_seq_id: dict[int, SeqDecoding] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._grammar_compiler: GrammarCompiler | None = None

    # ---- requests ------------------------------------------------------------------------------

    def check_request_id(self, request_id: str) -> None:
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use")

    def add_request(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Queue a request. Raises RequestError / ContextLengthError / NeverFitsError / QueueFullError
        (and LoraError for an adapter file that cannot be read)."""
        self.check_request_id(request_id)
        vocab = self.vocab_size
        bad = next((t for t in prompt_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise RequestError(f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})")
        for field_name, ids in (
            ("logit_bias", params.logit_bias or ()),
            ("stop_token_ids", params.stop_token_ids),
        ):
            if any(not 0 <= t < vocab for t in ids):
                raise RequestError(f"{field_name} names a token id outside the vocabulary (0..{vocab - 1})")
        if params.prompt_logprobs_from > len(prompt_ids):
            raise RequestError(
                f"prompt_logprobs_from is {params.prompt_logprobs_from} but the prompt has "
                f"{len(prompt_ids)} tokens",
                param="prompt_logprobs_from",
            )
        self.scheduler.check(len(prompt_ids), params.max_tokens, params.n)
        if params.structured_outputs is not None and params.constraint is None:
            from mistral_nemo.engine.structured_output import structured_output_constraint  # llguidance

            params = params.clone(
                constraint=structured_output_constraint(self.grammar_compiler(), params.structured_outputs)
            )
        seqs = [self._new_seq(request_id, prompt_ids, params, i) for i in range(params.n)]
        for s in seqs[1:]:
            s.seq.first_sibling = seqs[0].seq
        request = CoreRequest(request_id, params, seqs)
        if lora_request is not None:  # last: nothing below raises, so the adapter's use is always released
            adapter = self._adapter_registry().acquire(lora_request)
            request.lora_int_id = lora_request.lora_int_id
            for s in seqs:
                s.seq.lora_slot, s.seq.cache_salt = adapter.slot, adapter.cache_salt
        self.requests[request_id] = request
        for s in seqs:
            self.by_seq_id[s.seq.seq_id] = s
            self.scheduler.add(s.seq)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request at once and free all its blocks; False if it is unknown or already done."""
        request = self.requests.get(request_id)
        if request is None:
            return False
        for s in request.seqs:
            if not s.seq.is_finished:
                self._finish(s, FinishReason.ABORT)
        self._forget(request)
        return True

    def finish_seq(self, request_id: str, index: int, reason: FinishReason) -> None:
        """End one sequence from outside (a stop string matched its text); nothing if already done."""
        request = self.requests.get(request_id)
        if request is None:
            return
        s = request.seqs[index]
        if not s.seq.is_finished:
            self._finish(s, reason)
        if request.finished:
            self._forget(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- LoRA adapters (vLLM's names) ----------------------------------------------------------

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Load an adapter ahead of its requests (raises LoraError naming a bad file)."""
        self._adapter_registry().add(lora_request)
        return True

    def remove_lora(self, lora_int_id: int) -> bool:
        """Unload an adapter no unfinished request uses; False if unknown or in use."""
        return self.adapters is not None and self.adapters.remove(lora_int_id)

    def list_loras(self) -> set[int]:
        return {lora.lora_int_id for lora in self.lora_requests()}

    def lora_requests(self) -> list[LoRARequest]:
        """The adapters loaded now, least recently used first."""
        return self.adapters.list() if self.adapters is not None else []

    def _adapter_registry(self) -> AdapterRegistry:
        if self.adapters is None:
            raise RequestError("this engine serves no LoRA adapters: create it with enable_lora=True")
        return self.adapters

    @property
    def capacity_tokens(self) -> int:
        """The most tokens one sequence can ever hold: the context, or the whole KV pool if smaller."""
        return self.info.capacity_tokens

    def grammar_compiler(self) -> GrammarCompiler:
        """The tokenizer's grammar view for structured output, built on first use (~1 s at 131k tokens)."""
        if self._grammar_compiler is None:
            from mistral_nemo.engine.structured_output import GrammarCompiler

            self._grammar_compiler = GrammarCompiler(self.loaded.tokenizer)
        return self._grammar_compiler

    # ---- stepping ------------------------------------------------------------------------------

    def step(self) -> list[EngineCoreOutput]:
        """Run one batched forward pass; one output per sequence it ran, in batch order."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        drafts = (
            self.speculator.propose(batch, self.scheduler.running, self._constrained(batch))
            if self.speculator is not None
            else {}
        )
        logits = self.runner.run(batch, drafts) if drafts else self.runner.run(batch)
        outputs: list[EngineCoreOutput] = []
        sampling: list[tuple[SeqDecoding, EngineCoreOutput]] = []
        for item in batch:
            s = self.by_seq_id[item.seq.seq_id]
            seq = s.seq
            out = EngineCoreOutput(seq.request_id, seq.index, num_cached_tokens=seq.num_cached_prompt)
            outputs.append(out)
            if seq.seq_id in logits.prompt:
                first, rows = logits.prompt[seq.seq_id]
                out.new_prompt_logprobs = self._prompt_logprobs(seq, first, rows)
                out.prompt_logprobs_position = first + 1  # row `first` predicts token first + 1
            seq.num_computed += item.num_tokens
            self.blocks.register_computed(seq)
            if seq.num_computed <= len(seq.prompt_ids):
                self.prompt_tokens_total += item.num_tokens
            if seq.seq_id in drafts:
                self._verify_draft(s, out, logits.drafted[seq.seq_id], drafts[seq.seq_id])
            elif seq.num_computed == len(seq):
                sampling.append((s, out))
        if sampling:
            next_logits = logits.next_token_rows([s.seq.seq_id for s, _ in sampling])
            next_logits = apply_constraints(next_logits, [s.constraint for s, _ in sampling])
            sampled = sample_batch(next_logits, [s.row for s, _ in sampling])
            for (s, out), token in zip(sampling, sampled, strict=True):
                self._append_token(s, token, out)
        for out in outputs:
            if out.finish_reason is not None:
                request = self.requests.get(out.request_id)
                if request is not None and request.finished:
                    self._forget(request)
        return outputs

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
                if self.speculator is not None
                else {}
            ),
        )

    # ---- internals -----------------------------------------------------------------------------

    def _new_seq(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, index: int
    ) -> SeqDecoding:
        seq = Sequence(request_id, list(prompt_ids), params, index=index)
        seq.generator = make_generator(params, self.runner.device, index=index)  # siblings: seed + index
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eog_ids)
        row = SamplingRow(params, seq.generator, seq.prompt_ids, seq.output_ids, stop_ids)
        constraint = params.constraint() if params.constraint is not None else None
        return SeqDecoding(seq, row, stop_ids, constraint)

    def _constrained(self, batch: list[ScheduledSeq]) -> set[int]:
        """The step's sequences under structured output: never drafted (drafts skip its grammar)."""
        return {item.seq.seq_id for item in batch if self.by_seq_id[item.seq.seq_id].constraint is not None}

    def _verify_draft(
        self, s: SeqDecoding, out: EngineCoreOutput, rows: torch.Tensor, draft: list[int]
    ) -> None:
        """Emit the verified run (accepted drafts + one token) until a stop, then roll back the rest."""
        assert self.speculator is not None
        for sampled in self.speculator.verify(s.seq, rows, draft, s.row):
            self._append_token(s, sampled, out)
            if s.seq.is_finished:
                break
        else:
            self.blocks.register_computed(s.seq)
        self.speculator.settle(s.seq)

    def _append_token(self, s: SeqDecoding, sampled: SampledToken, out: EngineCoreOutput) -> None:
        seq, token = s.seq, sampled.token_id
        if s.constraint is not None:
            s.constraint.accept(token)
        seq.append_token(token)
        self.generation_tokens_total += 1
        out.new_token_ids.append(token)
        if seq.params.logprobs is not None:
            if out.new_logprobs is None:
                out.new_logprobs = []
            out.new_logprobs.append(TokenLogprob(token, sampled.logprob, sampled.top_logprobs))
        if token in s.stop_ids:
            out.stop_token_id = token
            out.finish_reason = FinishReason.STOP
        elif seq.params.max_tokens is not None and len(seq.output_ids) >= seq.params.max_tokens:
            out.finish_reason = FinishReason.LENGTH
        elif len(seq) >= self.max_model_len:
            out.finish_reason = FinishReason.CONTEXT
        if out.finish_reason is not None:
            self._finish(s, out.finish_reason)

    def _finish(self, s: SeqDecoding, reason: FinishReason) -> None:
        s.seq.finish_reason = reason
        self.scheduler.finish(s.seq)

    def _forget(self, request: CoreRequest) -> None:
        del self.requests[request.request_id]
        if request.lora_int_id is not None and self.adapters is not None:
            self.adapters.release(request.lora_int_id)
        for s in request.seqs:
            self.by_seq_id.pop(s.seq.seq_id, None)

    def _prompt_logprobs(self, seq: Sequence, first: int, rows: torch.Tensor) -> list[TokenLogprob] | None:
        if seq.index != 0:
            return None
        k = seq.params.prompt_logprobs or 0
        targets = seq.prompt_ids[first : first + rows.shape[0] + 1]
        new: list[TokenLogprob] = []
        for token_id, entry in zip(targets[1:], prompt_logprobs(rows, targets, k)[1:], strict=True):
            assert entry is not None
            new.append(TokenLogprob(token_id, entry[0], entry[1]))
        return new
