"""Data sources "a.jsonl:5.,dir:1." -> files with sampling weights; lines read with their location.

As in mistral-finetune: `data` (pretrain) and `instruct_data` are comma-separated `path[:weight]`
lists (weight default 1, strictly positive), each path a JSONL file or a folder searched recursively
for *.jsonl; the weights of both lists together are normalised to probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mistral_nemo.finetune.data.samples import (
    DataError,
    SampleType,
    TokenSample,
    chunk_tool_conversation,
    instruct_sample,
    pretrain_text,
)
from mistral_nemo.finetune.data.tokenize import tokenize_instruct, tokenize_pretrain
from mistral_nemo.tokenizer import Tokenizer


@dataclass(frozen=True)
class DataSource:
    path: Path
    sample_type: SampleType
    weight: float  # normalised: the probability of drawing the next window from this source

    @property
    def files(self) -> list[Path]:
        if self.path.is_dir():
            files = sorted(self.path.rglob("*.jsonl"))
            if not files:
                raise DataError(f"{self.path} holds no .jsonl file")
            return files
        return [self.path]


@dataclass(frozen=True)
class BadLine:
    file: Path
    line: int  # 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def parse_sources(pretrain: str, instruct: str, base: Path | None = None) -> list[DataSource]:
    """Both lists as sources with normalised weights; relative paths are taken from `base`."""
    parsed: list[tuple[Path, SampleType, float]] = []
    seen: set[Path] = set()
    for spec, kind in ((pretrain, SampleType.PRETRAIN), (instruct, SampleType.INSTRUCT)):
        for item in (spec or "").strip().split(","):
            item = item.strip()
            if not item:
                continue
            path_text, weight = _split_weight(item)
            path = Path(path_text).expanduser()
            if base is not None and not path.is_absolute():
                path = base / path
            if path in seen:
                raise DataError(f"{path_text} is listed twice; list each data source once")
            if not path.exists():
                raise DataError(f"data source {path_text} does not exist (a .jsonl file or a folder of them)")
            seen.add(path)
            parsed.append((path, kind, weight))
    total = sum(w for _, _, w in parsed)
    return [DataSource(p, kind, w / total) for p, kind, w in parsed]


def _split_weight(item: str) -> tuple[str, float]:
    path, sep, weight_text = item.rpartition(":")
    if not sep or "/" in weight_text or not weight_text:
        return item, 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        raise DataError(
            f"{item!r}: the weight after ':' must be a number (format: path/to/data.jsonl:2.)"
        ) from None
    if not weight > 0:
        raise DataError(f"{item!r}: data weights must be strictly positive, not {weight}")
    return path, weight


def encode_line(
    line: str, sample_type: SampleType, tokenizer: Tokenizer, chunk: bool = True
) -> list[TokenSample]:
    """One JSONL line -> its samples (a tool conversation may give several); DataError if unusable."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if sample_type is SampleType.PRETRAIN:
        return [tokenize_pretrain(pretrain_text(data), tokenizer)]
    sample = instruct_sample(data)
    samples = [sample, *(chunk_tool_conversation(sample) if chunk else [])]
    return [tokenize_instruct(s, tokenizer) for s in samples]


def read_samples(
    path: Path,
    sample_type: SampleType,
    tokenizer: Tokenizer,
    bad_lines: list[BadLine] | None = None,
    rank: int = 0,
    world_size: int = 1,
    chunk: bool = True,
) -> Iterator[TokenSample]:
    """Every usable sample of a JSONL file (lines i with i % world_size == rank); a malformed line is
    recorded in `bad_lines` and skipped, never fatal."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for index, line in enumerate(f):
            if index % world_size != rank or not line.strip():
                continue
            try:
                yield from encode_line(line, sample_type, tokenizer, chunk=chunk)
            except DataError as exc:
                if bad_lines is not None:
                    bad_lines.append(BadLine(path, index + 1, str(exc)))
