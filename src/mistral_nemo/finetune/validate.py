"""`finetune --validate`: check every line of the data, count tokens, estimate epochs (like
mistral-finetune's utils/validate_data.py), without loading the model's weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mistral_nemo.finetune.config import TrainConfig
from mistral_nemo.finetune.data.samples import SampleType
from mistral_nemo.finetune.data.sources import BadLine, DataSource, parse_sources, read_samples
from mistral_nemo.tokenizer import Tokenizer


@dataclass
class SourceReport:
    path: Path
    kind: str  # "pretrain", "instruct" or "eval"
    weight: float
    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    expected_epochs: float | None = None


@dataclass
class ValidationReport:
    sources: list[SourceReport] = field(default_factory=list)
    errors: list[BadLine] = field(default_factory=list)
    tokens_per_step: int = 0
    train_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.samples for s in self.sources)

    def lines(self) -> list[str]:
        out = [str(e) for e in self.errors]
        for s in self.sources:
            epochs = f", about {s.expected_epochs:.2f} epochs" if s.expected_epochs is not None else ""
            out.append(
                f"{s.path} ({s.kind}, weight {s.weight:.3f}): {s.samples} samples, {s.tokens:,} tokens, "
                f"{s.trained_tokens:,} trained{epochs}"
            )
            if not s.samples:
                out.append(f"{s.path}: no usable sample")
        out.append(
            f"{self.train_tokens:,} tokens will be seen in training ({self.tokens_per_step:,} per step); "
            f"{len(self.errors)} malformed line(s)"
        )
        return out


def validate_data(config: TrainConfig, tokenizer: Tokenizer, world_size: int = 1) -> ValidationReport:
    report = ValidationReport()
    report.tokens_per_step = config.seq_len * config.batch_size * config.num_microbatches * world_size
    report.train_tokens = report.tokens_per_step * config.max_steps
    train = parse_sources(config.data.data, config.data.instruct_data)
    evals = parse_sources("", config.data.eval_instruct_data) if config.data.eval_instruct_data else []
    for source, kind in [*((s, s.sample_type.value) for s in train), *((s, "eval") for s in evals)]:
        entry = _count(source, kind, tokenizer, report.errors, config.data.instruct.dynamic_chunk_fn_call)
        if kind != "eval" and entry.tokens:
            entry.expected_epochs = report.train_tokens * source.weight / entry.tokens
        report.sources.append(entry)
    return report


def _count(
    source: DataSource, kind: str, tokenizer: Tokenizer, errors: list[BadLine], chunk: bool
) -> SourceReport:
    entry = SourceReport(source.path, kind, source.weight if kind != "eval" else 0.0)
    chunk = chunk and source.sample_type is SampleType.INSTRUCT and kind != "eval"
    for file in source.files:
        for sample in read_samples(file, source.sample_type, tokenizer, errors, chunk=chunk):
            entry.samples += 1
            entry.tokens += len(sample.tokens)
            entry.trained_tokens += sum(sample.masks)
    return entry
