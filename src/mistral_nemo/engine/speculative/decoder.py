"""Per step: which running sequences get drafts and how many, then verification and KV rollback.

The engine asks `propose` after scheduling (drafts only for sequences that are decoding, not
constrained, with room left), runs one forward pass over each such sequence's last token plus
its drafts, then calls `verify` per sequence and `settle` once the emitted tokens are appended.

Whether drafting pays is decided per step and per sequence: never in a batch of
`disable_by_batch_size` or more, never when the lookup finds nothing (the step then stays the
plain fused decode), and per sequence the draft length is the k (1..K) that maximises tokens
emitted per unit of step cost, from the sequence's per-token acceptance so far; a growing pause
follows drafts that were all rejected.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

import torch

from mistral_nemo.engine.block_manager import BlockManager
from mistral_nemo.engine.sampler import SampledToken, SamplingRow
from mistral_nemo.engine.scheduler import ScheduledSeq
from mistral_nemo.engine.sequence import Sequence
from mistral_nemo.engine.speculative.config import SpeculativeConfig
from mistral_nemo.engine.speculative.ngram import TokenBuffer, propose_ngram
from mistral_nemo.engine.speculative.verify import verify_draft

MAX_PAUSE_STEPS = 32
# A step that verifies k drafts costs 1 + DRAFT_STEP_COST + k * DRAFT_ROW_COST plain fused decode steps.
# Fitted to bench/speculative.py on the 2-core Intel host (embedded model, 2026-12-06: K = 4 gave 1.50x at
# acceptance 0.75 input-grounded and 1.02x open-ended, which this model reproduces offline from the tokens).
DRAFT_STEP_COST = 0.3
DRAFT_ROW_COST = 0.12
DECAY = 0.7  # weight of the past in the per-sequence counts of accepted / rejected draft tokens


@dataclass
class SpeculativeStats:
    verifications: int = 0  # sequence-steps that verified a draft
    draft_tokens: int = 0  # tokens proposed
    accepted_tokens: int = 0  # of those, accepted

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Drafted tokens accepted per verification (each verification also emits one token of its own)."""
        return self.accepted_tokens / self.verifications if self.verifications else 0.0


@dataclass
class _SeqDrafting:
    tokens: TokenBuffer = field(default_factory=TokenBuffer)
    accepted: float = 1.0  # decayed counts of draft tokens accepted / rejected (prior: acceptance 2/3)
    rejected: float = 0.5
    pause: int = 0  # steps left without drafting
    next_pause: int = 1


class SpeculativeDecoder:
    def __init__(
        self,
        config: SpeculativeConfig,
        blocks: BlockManager,
        max_model_len: int,
        max_num_batched_tokens: int,
        draft_in_mixed_steps: bool = True,
    ) -> None:
        # draft_in_mixed_steps False: no drafts in a step that also prefills (on CPU, drafts ride the fused
        # decode kernel, which only pure decode steps use; a mixed step would pay the general path for them)
        self.draft_in_mixed_steps = draft_in_mixed_steps
        self.config = config
        self.blocks = blocks
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.stats = SpeculativeStats()
        self._state: dict[int, _SeqDrafting] = {}

    def propose(
        self, batch: list[ScheduledSeq], running: list[Sequence], constrained: Container[int] = ()
    ) -> dict[int, list[int]]:
        """seq_id -> draft tokens, for the decoding sequences of this step worth drafting for
        (`constrained`: the seq_ids under structured output, never drafted)."""
        if len(self._state) > len(running):  # drop what finished, aborted or preempted sequences left
            live = {seq.seq_id for seq in running}
            self._state = {k: v for k, v in self._state.items() if k in live}
        if len(running) >= self.config.disable_by_batch_size:
            return {}
        if not self.draft_in_mixed_steps and any(
            item.num_tokens != 1 or item.seq.num_uncomputed != 1 for item in batch
        ):
            return {}
        budget = self.max_num_batched_tokens - sum(item.num_tokens for item in batch)
        drafts: dict[int, list[int]] = {}
        cfg = self.config
        for item in batch:
            seq = item.seq
            if budget <= 0:
                break
            if item.num_tokens != 1 or seq.num_uncomputed != 1 or seq.seq_id in constrained:
                continue  # prefilling, or structured output (drafts are not run through its grammar)
            state = self._state.setdefault(seq.seq_id, _SeqDrafting())
            if state.pause > 0:
                state.pause -= 1
                continue
            room = min(seq.max_length(self.max_model_len) - len(seq) - 1, budget)
            wanted = min(room, draft_length(state.accepted, state.rejected, cfg.num_speculative_tokens))
            if wanted < 1:
                continue
            tokens = state.tokens.sync(seq.all_ids)
            draft = propose_ngram(tokens, wanted, cfg.prompt_lookup_min, cfg.prompt_lookup_max)
            if not draft or not self.blocks.ensure_capacity(seq, seq.num_computed + 1 + len(draft)):
                continue
            drafts[seq.seq_id] = draft
            budget -= len(draft)
        return drafts

    def verify(
        self, seq: Sequence, raw: torch.Tensor, draft: list[int], row: SamplingRow
    ) -> list[SampledToken]:
        """The tokens to emit for `seq`; marks its accepted drafts as computed."""
        emitted = verify_draft(raw, draft, row)
        accepted = len(emitted) - 1
        seq.num_computed += accepted  # their keys/values were written by this pass and stay valid
        self.stats.verifications += 1
        self.stats.draft_tokens += len(draft)
        self.stats.accepted_tokens += accepted
        state = self._state.get(seq.seq_id)
        if state is not None:
            state.accepted = DECAY * state.accepted + accepted
            state.rejected = DECAY * state.rejected + (1 if accepted < len(draft) else 0)
            if accepted == 0:
                state.pause, state.next_pause = state.next_pause, min(2 * state.next_pause, MAX_PAUSE_STEPS)
            else:
                state.next_pause = 1
        return emitted

    def settle(self, seq: Sequence) -> None:
        """After the emitted tokens are appended: give back blocks that only rejected drafts used."""
        if seq.is_finished:
            self._state.pop(seq.seq_id, None)
            return
        self.blocks.trim(seq, len(seq))


def draft_length(accepted: float, rejected: float, max_tokens: int) -> int:
    """The k in 1..max_tokens with the most expected tokens per unit of step cost, for a sequence
    whose draft tokens so far were `accepted` / `rejected` (decayed counts).

    With per-token acceptance a, a draft of k emits (1 - a^(k+1)) / (1 - a) tokens on average (the
    accepted run plus one). When no k beats a plain step, still 1: the cheapest probe keeps the
    estimate fresh, and the pause after a fully rejected draft bounds what probing costs.
    """
    a = accepted / (accepted + rejected)
    best_k, best = 1, 0.0
    for k in range(1, max_tokens + 1):
        emitted = (1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1.0
        value = emitted / (1 + DRAFT_STEP_COST + k * DRAFT_ROW_COST)
        if value > best:
            best_k, best = k, value
    return best_k if best > 1.0 else 1
