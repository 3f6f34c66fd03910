"""Packing samples into windows of exactly seq_len tokens, as mistral-finetune does.

Each sample becomes inputs x = tokens[:-1], targets y = tokens[1:] and mask = masks[1:] (the loss is
on predicting a trained token). Samples are concatenated; one that does not fit is split across
windows, and each piece is its own attention block (its positions restart at 0). Pieces whose mask
is all False are dropped, and so are windows with nothing to train. In training the sources are
endless (re-read each epoch, shuffled when asked) and each window comes from a source drawn with
its weight; in evaluation each source is read once and the last window is padded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mistral_nemo.finetune.data.samples import TokenSample


@dataclass
class Window:
    x: list[int]
    y: list[int]
    mask: list[bool]
    sizes: list[int]  # lengths of the attention blocks, summing to len(x)


@dataclass
class Batch:
    """Windows laid end to end (batch_size * seq_len tokens), with per-block positions."""

    x: torch.Tensor  # [T] int64
    y: torch.Tensor  # [T] int64
    mask: torch.Tensor  # [T] bool
    positions: torch.Tensor  # [T] int64, restarting at 0 in each block
    sizes: list[int]

    @classmethod
    def of(cls, windows: list[Window]) -> Batch:
        sizes = [s for w in windows for s in w.sizes]
        return cls(
            x=torch.tensor([t for w in windows for t in w.x], dtype=torch.int64),
            y=torch.tensor([t for w in windows for t in w.y], dtype=torch.int64),
            mask=torch.tensor([m for w in windows for m in w.mask], dtype=torch.bool),
            positions=torch.cat([torch.arange(s) for s in sizes]),
            sizes=sizes,
        )


def pack(samples: Iterable[TokenSample], seq_len: int, pad_last: bool = False) -> Iterator[Window]:
    x: list[int] = []
    y: list[int] = []
    mask: list[bool] = []
    sizes: list[int] = []
    for sample in samples:
        sx, sy, smask = sample.tokens[:-1], sample.tokens[1:], sample.masks[1:]
        pos = 0
        while pos < len(sx):
            take = min(seq_len - len(x), len(sx) - pos)
            piece = smask[pos : pos + take]
            if any(piece):
                x += sx[pos : pos + take]
                y += sy[pos : pos + take]
                mask += piece
                sizes.append(take)
            pos += take
            if len(x) == seq_len:
                if any(mask):
                    yield Window(x, y, mask, sizes)
                x, y, mask, sizes = [], [], [], []
    if pad_last and any(mask):
        missing = seq_len - len(x)
        yield Window(x + [0] * missing, y + [0] * missing, mask + [False] * missing, [*sizes, missing])


def endless(
    read: Callable[[], Iterable[TokenSample]], shuffle: bool, rng: np.random.RandomState
) -> Iterator[TokenSample]:
    """Epoch after epoch of one source; shuffled each epoch when asked (then held in memory)."""
    cached: list[TokenSample] | None = None
    while True:
        if shuffle:
            cached = cached if cached is not None else list(read())
            order = rng.permutation(len(cached))
            epoch: Iterable[TokenSample] = (cached[i] for i in order)
        else:
            epoch = read()
        empty = True
        for sample in epoch:
            empty = False
            yield sample
        if empty:
            raise ValueError("a training data source has no usable sample (see the data errors above)")


def interleave(
    windows: list[Iterator[Window]], probabilities: list[float], rng: np.random.RandomState
) -> Iterator[Window]:
    """Each next window from a source drawn with its probability (the sources are endless)."""
    while True:
        yield next(windows[rng.choice(len(windows), p=probabilities)])


def block_causal_mask(sizes: list[int]) -> torch.Tensor:
    """[T, T] bool: token i may attend to token j iff both are in the same block and j <= i."""
    block = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    same = block[:, None] == block[None, :]
    return same & torch.ones(len(block), len(block), dtype=torch.bool).tril()
