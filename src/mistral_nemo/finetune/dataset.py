"""The stream of training windows (sources mixed by weight) and the evaluation windows."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from mistral_nemo.finetune.config import TrainConfig
from mistral_nemo.finetune.data.packing import Window, endless, interleave, pack
from mistral_nemo.finetune.data.samples import SampleType
from mistral_nemo.finetune.data.sources import BadLine, DataSource, parse_sources, read_samples
from mistral_nemo.tokenizer import Tokenizer

_SHOWN_BAD_LINES = 20


class BadLineReporter(list[BadLine]):
    """Collects malformed lines; the first few are printed as they are met (each file:line once)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, int]] = set()

    def append(self, bad: BadLine) -> None:
        key = (str(bad.file), bad.line)
        if key in self._seen:
            return
        self._seen.add(key)
        super().append(bad)
        if len(self) <= _SHOWN_BAD_LINES:
            print(f"skipping {bad}", file=sys.stderr)


def training_windows(
    config: TrainConfig, tokenizer: Tokenizer, bad_lines: BadLineReporter, rank: int = 0, world_size: int = 1
) -> Iterator[Window]:
    sources = parse_sources(config.data.data, config.data.instruct_data)
    streams = [_source_windows(s, config, tokenizer, bad_lines, rank, world_size) for s in sources]
    rng = np.random.RandomState(np.array((config.seed, rank)))
    return interleave(streams, [s.weight for s in sources], rng)


def _source_windows(
    source: DataSource,
    config: TrainConfig,
    tokenizer: Tokenizer,
    bad_lines: BadLineReporter,
    rank: int,
    world_size: int,
) -> Iterator[Window]:
    instruct = source.sample_type is SampleType.INSTRUCT
    shuffle = config.data.instruct.shuffle if instruct else config.data.shuffle
    chunk = instruct and config.data.instruct.dynamic_chunk_fn_call
    rng = np.random.RandomState(np.array((config.seed, rank)))

    def read() -> Iterator[Any]:
        for file in source.files:
            yield from read_samples(file, source.sample_type, tokenizer, bad_lines, rank, world_size, chunk)

    return pack(endless(read, shuffle, rng), config.seq_len)


def eval_windows(config: TrainConfig, tokenizer: Tokenizer, bad_lines: BadLineReporter) -> list[Window]:
    """Every evaluation sample once, packed, the last window padded (no chunking, no shuffling)."""
    windows: list[Window] = []
    for source in parse_sources("", config.data.eval_instruct_data):
        for file in source.files:
            samples = read_samples(file, SampleType.INSTRUCT, tokenizer, bad_lines, chunk=False)
            windows += pack(samples, config.seq_len, pad_last=True)
    return windows
