"""OutputProcessor: the core's token ids -> text, stop strings and `RequestOutput`s, per request.

The core (core.py) ends a sequence on ids alone; only here, after detokenizing, can a stop string
be seen. When one ends a sequence, `process_outputs` says so (`seqs_to_finish`) and the engine
finishes that sequence in the core before the step returns, so it never runs another token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mistral_nemo.engine.core import EngineCoreOutput
from mistral_nemo.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from mistral_nemo.engine.sampling_params import SamplingParams
from mistral_nemo.engine.sequence import FinishReason
from mistral_nemo.engine.stop_strings import StopStringFilter
from mistral_nemo.tokenizer import IncrementalDetokenizer, SpecialTokenPolicy, Tokenizer


@dataclass(eq=False)
class SeqTextState:
    """One sequence's output so far: streaming text, stop strings, token ids and logprobs."""

    index: int
    detokenizer: IncrementalDetokenizer
    stops: StopStringFilter
    include_stop_str: bool
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    delta_text: str = ""  # since the last RequestOutput
    delta_ids: list[int] = field(default_factory=list)

    def add_text(self, text: str) -> None:
        self.text += text
        self.delta_text += text

    def flush_text(self) -> None:
        """End without a stop string: the detokenizer's held bytes, then the stop filter's held text."""
        self.add_text(self.stops.add(self.detokenizer.flush()))
        self.add_text(self.stops.flush())


@dataclass(eq=False)
class RequestState:
    request_id: str
    prompt_ids: list[int]
    prompt_text: str | None
    seqs: list[SeqTextState]
    prompt_logprobs: list[TokenLogprob | None] | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)


@dataclass
class ProcessedOutputs:
    request_outputs: list[RequestOutput]
    seqs_to_finish: list[tuple[str, int]]  # (request id, sample index) a stop string ended


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.requests: dict[str, RequestState] = {}

    def add_request(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, prompt_text: str | None = None
    ) -> None:
        policy = SpecialTokenPolicy.SKIP if params.skip_special_tokens else SpecialTokenPolicy.KEEP
        seqs = [
            SeqTextState(
                index,
                IncrementalDetokenizer(self.tokenizer, policy),
                StopStringFilter(params.stop),
                params.include_stop_str_in_output,
                logprobs=[] if params.logprobs is not None else None,
            )
            for index in range(params.n)
        ]
        prompt_logprobs: list[TokenLogprob | None] | None = (
            [None] if params.prompt_logprobs is not None else None
        )
        self.requests[request_id] = RequestState(request_id, prompt_ids, prompt_text, seqs, prompt_logprobs)

    def abort_request(self, request_id: str) -> bool:
        return self.requests.pop(request_id, None) is not None

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def request_ids(self) -> list[str]:
        return list(self.requests)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        """Fold one core step into the requests' text; a RequestOutput for each request that moved."""
        touched: dict[str, RequestState] = {}
        to_finish: list[tuple[str, int]] = []
        for out in outputs:
            request = self.requests.get(out.request_id)
            if request is None:
                continue  # aborted meanwhile
            touched[out.request_id] = request
            if out.index == 0:
                request.num_cached_tokens = out.num_cached_tokens
            if out.new_prompt_logprobs and request.prompt_logprobs is not None:
                request.prompt_logprobs.extend(out.new_prompt_logprobs)
            state = request.seqs[out.index]
            if self._add_tokens(state, out) and out.finish_reason is None:
                to_finish.append((out.request_id, out.index))
        return ProcessedOutputs([self._request_output(r) for r in touched.values()], to_finish)

    # ---- internals -----------------------------------------------------------------------------

    def _add_tokens(self, state: SeqTextState, out: EngineCoreOutput) -> bool:
        """Take the step's new tokens; True when a stop string ended the sequence."""
        for i, token in enumerate(out.new_token_ids):
            state.token_ids.append(token)
            state.delta_ids.append(token)
            if state.logprobs is not None and out.new_logprobs is not None:
                state.logprobs.append(out.new_logprobs[i])
            last = i == len(out.new_token_ids) - 1
            if last and out.stop_token_id is not None:
                state.add_text(state.detokenizer.flush())
                state.add_text(state.stops.flush())
                state.stop_reason, state.finish_reason = out.stop_token_id, FinishReason.STOP
                return False
            state.add_text(state.stops.add(state.detokenizer.add(token)))
            if state.stops.stopped:
                state.stop_reason, state.finish_reason = state.stops.matched, FinishReason.STOP
                if state.include_stop_str and state.stops.matched:
                    state.add_text(state.stops.matched)
                return True
        if out.finish_reason is not None:  # max_tokens, the context, or an abort
            state.flush_text()
            state.finish_reason = out.finish_reason
        return False

    def _request_output(self, request: RequestState) -> RequestOutput:
        outputs = []
        for state in request.seqs:
            outputs.append(
                CompletionOutput(
                    index=state.index,
                    text=state.text,
                    token_ids=list(state.token_ids),
                    finish_reason=state.finish_reason.value if state.finish_reason else None,
                    stop_reason=state.stop_reason,
                    logprobs=list(state.logprobs) if state.logprobs is not None else None,
                    delta_text=state.delta_text,
                    delta_token_ids=state.delta_ids,
                )
            )
            state.delta_text, state.delta_ids = "", []
        finished = request.finished
        if finished:
            del self.requests[request.request_id]
        return RequestOutput(
            request_id=request.request_id,
            prompt_token_ids=request.prompt_ids,
            outputs=outputs,
            finished=finished,
            prompt=request.prompt_text,
            prompt_logprobs=request.prompt_logprobs,
            num_cached_tokens=request.num_cached_tokens,
        )
