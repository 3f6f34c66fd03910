"""Turns a scheduled step into one forward pass over the paged cache, and returns the logits needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mistral_nemo.engine.paged_cache import PagedKVCache, SeqSlice
from mistral_nemo.engine.scheduler import ScheduledSeq
from mistral_nemo.model.transformer import Transformer


@dataclass
class StepLogits:
    """float32 logits of the rows the engine asked for."""

    next_token: dict[int, torch.Tensor]  # seq_id -> [vocab]: the row that predicts the next token
    prompt: dict[int, tuple[int, torch.Tensor]]  # seq_id -> (first position, [n, vocab]) inside the prompt


class ModelRunner:
    def __init__(self, model: Transformer, cache: PagedKVCache) -> None:
        self.model = model
        self.cache = cache
        self.device = model.device

    @torch.inference_mode()
    def run(self, batch: list[ScheduledSeq]) -> StepLogits:
        tokens: list[int] = []
        positions: list[int] = []
        slot_mapping: list[torch.Tensor] = []
        slices: list[SeqSlice] = []
        rows: list[int] = []
        wants: list[tuple[int, str, int, int]] = []  # (seq_id, kind, first row index in `rows`, count)
        for item in batch:
            seq, start, count = item.seq, item.seq.num_computed, item.num_tokens
            end = start + count
            query_start = len(tokens)
            tokens += seq.all_ids[start:end]
            positions += range(start, end)
            slot_mapping.append(self.cache.slots_for(seq.block_table, start, end))
            slices.append(SeqSlice(query_start, count, self.cache.slots_for(seq.block_table, 0, end)))
            prompt_rows = min(end, len(seq.prompt_ids) - 1) - start  # rows predicting prompt tokens
            if seq.params.prompt_logprobs is not None and prompt_rows > 0:
                wants.append((seq.seq_id, "prompt", len(rows), prompt_rows))
                rows += range(query_start, query_start + prompt_rows)
            if end == len(seq):
                wants.append((seq.seq_id, "next", len(rows), 1))
                rows.append(query_start + count - 1)
        self.cache.begin_step(torch.cat(slot_mapping), slices)
        logits = self.model(
            torch.tensor(tokens, device=self.device),
            torch.tensor(positions, device=self.device),
            self.cache,
            output_rows=torch.tensor(rows, device=self.device, dtype=torch.long),
        ).float()
        result = StepLogits({}, {})
        starts = {item.seq.seq_id: item.seq.num_computed for item in batch}
        for seq_id, kind, first, count in wants:
            if kind == "next":
                result.next_token[seq_id] = logits[first]
            else:
                result.prompt[seq_id] = (starts[seq_id], logits[first : first + count])
        return result
