"""Turns a scheduled step into one forward pass over the paged cache, and returns the logits needed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from mistral_nemo.engine.paged_cache import PagedKVCache, SeqSlice
from mistral_nemo.engine.scheduler import ScheduledSeq
from mistral_nemo.model.multi_lora import AdapterSlots
from mistral_nemo.model.transformer import Transformer


@dataclass
class StepLogits:
    """float32 logits of the rows the engine asked for."""

    rows: torch.Tensor  # [n, vocab]: every row below indexes into this
    next_token: dict[int, int]  # seq_id -> row that predicts the sequence's next token
    prompt: dict[int, tuple[int, torch.Tensor]]  # seq_id -> (first position, [n, vocab]) inside the prompt
    # seq_id -> its 1 + K rows when drafts were scored: row j predicts the token after draft[:j]
    drafted: dict[int, torch.Tensor] = field(default_factory=dict)

    def next_token_rows(self, seq_ids: list[int]) -> torch.Tensor:
        """[len(seq_ids), vocab]: their next-token rows in order (no copy when that is every row in order)."""
        index = [self.next_token[s] for s in seq_ids]
        if index == list(range(self.rows.shape[0])):
            return self.rows
        return self.rows[torch.tensor(index, dtype=torch.long, device=self.rows.device)]


class ModelRunner:
    def __init__(self, model: Transformer, cache: PagedKVCache, adapters: AdapterSlots | None = None) -> None:
        self.model = model
        self.cache = cache
        self.device = model.device
        self.adapters = adapters  # LoRA adapters chosen per token (each sequence's lora_slot), if enabled

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq], drafts: Mapping[int, list[int]] | None = None) -> StepLogits:
        """One forward pass. `drafts` (seq_id -> tokens, for decoding sequences) are scored after each
        such sequence's last token in the same pass; their keys/values are written past num_computed."""
        decoding = all(item.num_tokens == 1 and item.seq.num_computed + 1 == len(item.seq) for item in batch)
        if self.cache.has_decode_kernel and decoding:
            return self._decode(batch, drafts or {})
        return self._general(batch, drafts)

    def _decode(self, batch: list[ScheduledSeq], drafts: Mapping[int, list[int]]) -> StepLogits:
        """One new token per sequence: a few Python ints per sequence, block tables as they are.

        A sequence with drafts becomes 1 + K rows sharing its block table, row j seeing the context up
        to its own position: every row's keys/values are written before attention, so the rows attend
        causally, as K + 1 single-token steps would, in one fused pass."""
        block_size = self.cache.block_size
        tokens, positions, write_slots, tables, lens = [], [], [], [], []
        adapter_slots: list[int] = []
        result = StepLogits(torch.empty(0), {}, {})
        spans: list[tuple[int, int, int]] = []  # (seq_id, first row, rows)
        for item in batch:
            seq = item.seq
            draft = drafts.get(seq.seq_id, [])
            spans.append((seq.seq_id, len(tokens), 1 + len(draft)))
            tokens += [seq.all_ids[seq.num_computed], *draft]
            adapter_slots += [seq.lora_slot] * (1 + len(draft))
            for position in range(seq.num_computed, seq.num_computed + 1 + len(draft)):
                positions.append(position)
                write_slots.append(
                    seq.block_table[position // block_size] * block_size + position % block_size
                )
                tables.append(seq.block_table)
                lens.append(position + 1)
        self.cache.begin_decode(write_slots, tables, lens)
        if self.adapters is not None:
            self.adapters.set_token_slots(adapter_slots)
        result.rows = self.model(
            torch.tensor(tokens, device=self.device), torch.tensor(positions, device=self.device), self.cache
        ).float()
        for seq_id, first, count in spans:
            if count == 1:
                result.next_token[seq_id] = first
            else:
                result.drafted[seq_id] = result.rows[first : first + count]
        return result

    def _general(
        self, batch: list[ScheduledSeq], drafts: Mapping[int, list[int]] | None = None
    ) -> StepLogits:
        """Prefill chunks and decodes mixed: per-token slots for the cache's PyTorch attention."""
        tokens: list[int] = []
        positions: list[int] = []
        slot_mapping: list[torch.Tensor] = []
        slices: list[SeqSlice] = []
        rows: list[int] = []
        adapter_slots: list[int] = []
        # (seq_id, kind, first row index in `rows`, count, first prompt position for "prompt")
        wants: list[tuple[int, str, int, int, int]] = []
        for item in batch:
            seq, start, count = item.seq, item.seq.num_computed, item.num_tokens
            end = start + count
            draft = drafts.get(seq.seq_id, []) if drafts else []
            query_start = len(tokens)
            tokens += seq.all_ids[start:end] + draft
            positions += range(start, end + len(draft))
            adapter_slots += [seq.lora_slot] * (count + len(draft))
            context_slots = self.cache.slots_for(seq.block_table, 0, end + len(draft))
            slot_mapping.append(context_slots[start:])
            slices.append(SeqSlice(query_start, count + len(draft), context_slots))
            # Rows predicting the wanted prompt tokens (row t predicts token t + 1).
            first = max(start, seq.params.prompt_logprobs_from - 1)
            prompt_rows = min(end, len(seq.prompt_ids) - 1) - first
            if seq.params.prompt_logprobs is not None and prompt_rows > 0:
                wants.append((seq.seq_id, "prompt", len(rows), prompt_rows, first))
                rows += range(query_start + first - start, query_start + first - start + prompt_rows)
            if draft:
                wants.append((seq.seq_id, "drafted", len(rows), 1 + len(draft), 0))
                rows += range(query_start + count - 1, query_start + count + len(draft))
            elif end == len(seq):
                wants.append((seq.seq_id, "next", len(rows), 1, 0))
                rows.append(query_start + count - 1)
        self.cache.begin_step(torch.cat(slot_mapping), slices)
        if self.adapters is not None:
            self.adapters.set_token_slots(adapter_slots)
        logits = self.model(
            torch.tensor(tokens, device=self.device),
            torch.tensor(positions, device=self.device),
            self.cache,
            output_rows=torch.tensor(rows, device=self.device, dtype=torch.long),
        ).float()
        result = StepLogits(logits, {}, {})
        for seq_id, kind, first, count, position in wants:
            if kind == "next":
                result.next_token[seq_id] = first
            elif kind == "drafted":
                result.drafted[seq_id] = logits[first : first + count]
            else:
                result.prompt[seq_id] = (position, logits[first : first + count])
        return result
