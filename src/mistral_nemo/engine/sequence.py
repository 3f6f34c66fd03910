"""A Sequence: one stream of tokens being generated (a request with n > 1 has n of them)."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from mistral_nemo.engine.sampling_params import SamplingParams

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-turn token, stop token or stop string
    LENGTH = "length"  # max_tokens reached
    CONTEXT = "context"  # the model's context (max_model_len) is full
    ABORT = "abort"  # the client went away or asked to stop


@dataclass(eq=False)
class Sequence:
    """Token ids, where their keys/values live (block table), and how far the model has read them."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    index: int = 0  # which of the request's n samples
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    output_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is in the cache (prefix-cache hits included)
    num_cached_prompt: int = 0  # prompt tokens served by the prefix cache at admission
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    # For n > 1: the request's first sample; the others start once it has read the prompt,
    # so they find the prompt's blocks in the prefix cache instead of recomputing them.
    first_sibling: Sequence | None = None
    # prompt + output, kept alongside so that a step never rebuilds the whole context as a list.
    all_ids: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.all_ids = self.prompt_ids + self.output_ids

    def append_token(self, token_id: int) -> None:
        self.output_ids.append(token_id)
        self.all_ids.append(token_id)

    def __len__(self) -> int:
        return len(self.all_ids)

    @property
    def num_uncomputed(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self) - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def max_length(self, max_model_len: int) -> int:
        """The longest this sequence may grow: prompt + max_tokens, within the context."""
        if self.params.max_tokens is None:
            return max_model_len
        return min(max_model_len, len(self.prompt_ids) + self.params.max_tokens)
