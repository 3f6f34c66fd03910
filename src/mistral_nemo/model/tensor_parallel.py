"""Megatron-style tensor parallelism: which part of each weight a rank holds, and the layers that
join the ranks' partial results (torch.distributed: gloo on CPU, NCCL on GPUs).

Column-parallel (split by output rows, no communication): wq/wk/wv by whole KV-head groups (a
rank's query heads are exactly those that read its KV heads, so GQA stays local), w1/w3 by hidden
units. Row-parallel (split by input columns, one sum all-reduce after): wo and w2. Embedding and
output head are vocabulary-parallel: each rank holds a range of token rows; the embedding sums the
ranks' rows (each token is found on exactly one rank), the head all-gathers the logit columns.

Splits may be uneven (SmolLM2-135M has 3 KV heads for 2 ranks: 2 + 1): a sum all-reduce does not
care how the work was divided, and the all-gather pads to the largest share.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.weights import copy_out_of_maps, drop_mapped_pages, private_file_maps

# Hidden-unit boundaries fall on multiples of this (when the size allows): int4 / int8 groups of
# 32 or 64 input columns of w2 then never straddle two ranks.
_HIDDEN_ALIGN = 64


class TensorParallelError(ValueError):
    """A model that cannot be split this way, or a rank that was lost."""


def split_range(total: int, world: int, rank: int, unit: int = 1) -> tuple[int, int]:
    """[start, end) of rank's share of `total` items handed out in units of `unit`, earlier ranks
    taking one extra unit when they do not divide evenly (so rank 0 holds the largest share)."""
    units = total // unit
    base, extra = divmod(units, world)
    start = rank * base + min(rank, extra)
    end = start + base + (1 if rank < extra else 0)
    return start * unit, min(end * unit, total) if rank < world - 1 else total


@dataclass(frozen=True)
class TensorParallelShard:
    """Rank `rank` of `world`: its KV-head groups, hidden units and vocabulary rows of `args`."""

    rank: int
    world: int
    args: ModelArgs  # the whole model's

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise TensorParallelError(f"rank {self.rank} is outside 0..{self.world - 1}")
        if self.args.n_kv_heads < self.world:
            raise TensorParallelError(
                f"tensor parallel size {self.world} is more than the model's "
                f"{self.args.n_kv_heads} KV heads; use at most {self.args.n_kv_heads} ranks"
            )

    @property
    def kv_heads(self) -> tuple[int, int]:
        return split_range(self.args.n_kv_heads, self.world, self.rank)

    @property
    def q_heads(self) -> tuple[int, int]:
        group = self.args.n_heads // self.args.n_kv_heads
        start, end = self.kv_heads
        return start * group, end * group

    @property
    def hidden(self) -> tuple[int, int]:
        hidden = self.args.hidden_dim
        unit = _HIDDEN_ALIGN if hidden % _HIDDEN_ALIGN == 0 and hidden >= _HIDDEN_ALIGN * self.world else 1
        return split_range(hidden, self.world, self.rank, unit)

    @property
    def vocab(self) -> tuple[int, int]:
        return split_range(self.args.vocab_size, self.world, self.rank)

    def vocab_shares(self) -> list[int]:
        """How many vocabulary rows each rank holds."""
        ranges = (split_range(self.args.vocab_size, self.world, r) for r in range(self.world))
        return [end - start for start, end in ranges]

    def local_args(self) -> ModelArgs:
        """The shape of this rank's part: its heads, hidden units and vocabulary rows (head_dim kept)."""
        (q0, q1), (k0, k1), (h0, h1), (v0, v1) = self.q_heads, self.kv_heads, self.hidden, self.vocab
        return self.args.with_changes(
            n_heads=q1 - q0, n_kv_heads=k1 - k0, hidden_dim=h1 - h0, vocab_size=v1 - v0
        )

    def slice_of(self, name: str) -> tuple[int, int, int] | None:
        """(dim, start, end) of this rank's part of tensor `name`; None: every rank holds it whole."""
        hd = self.args.head_dim
        (q0, q1), (k0, k1), (h0, h1), (v0, v1) = self.q_heads, self.kv_heads, self.hidden, self.vocab
        if name in ("tok_embeddings.weight", "output.weight"):
            return 0, v0, v1
        leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
        table = {
            "wq": (0, q0 * hd, q1 * hd),
            "wk": (0, k0 * hd, k1 * hd),
            "wv": (0, k0 * hd, k1 * hd),
            "wo": (1, q0 * hd, q1 * hd),
            "w1": (0, h0, h1),
            "w3": (0, h0, h1),
            "w2": (1, h0, h1),
        }
        return table.get(leaf) if name.endswith(".weight") else None

    def shard(self, name: str, item: torch.Tensor | nn.Module) -> torch.Tensor | nn.Module:
        """This rank's part of one loaded tensor or compact linear (a private copy, not a file view)."""
        where = self.slice_of(name)
        if where is None:
            return item
        dim, start, end = where
        if isinstance(item, torch.Tensor):
            return item.narrow(dim, start, end - start).clone()
        from mistral_nemo.model.quant.shard import shard_linear  # quantized layers: with their scales

        return shard_linear(name, item, dim, start, end)


def shard_stream(
    tensors: Iterable[tuple[str, torch.Tensor | nn.Module]],
    shard: TensorParallelShard,
    files: list[Path],
    already_cut: bool = False,
) -> Iterator[tuple[str, torch.Tensor | nn.Module]]:
    """Each tensor as this rank's part, the file pages it was read from released after each one: a
    rank's resident memory stays near its share of the model, never the whole file.

    already_cut: the reader read only this rank's parts (get_slice, see read_checkpoint); they are
    only copied out of the file's map (chunk by chunk) where they are still views of it."""
    earlier = private_file_maps(files)
    for name, item in tensors:
        if not already_cut:
            part = shard.shard(name, item)
        elif isinstance(item, torch.Tensor):
            part = copy_out_of_maps(item, private_file_maps(files) - earlier, _COPY_CHUNK)
        else:
            part = item  # a compact layer: its readers copy its buffers
        del item
        drop_mapped_pages(private_file_maps(files) - earlier)
        yield name, part


_COPY_CHUNK = 16 << 20  # bytes of a part copied between two releases of the file pages read


class VocabParallelEmbedding(nn.Module):
    """Rows [start, end) of the embedding; tokens outside give zeros, and the ranks' rows are summed."""

    def __init__(self, weight: nn.Parameter, start: int, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.weight, self.start, self.group = weight, start, group

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = tokens - self.start
        inside = (local >= 0) & (local < self.weight.shape[0])
        rows = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)
        rows = rows * inside[:, None].to(rows.dtype)
        dist.all_reduce(rows, group=self.group)
        return rows


class VocabParallelHead(nn.Module):
    """This rank's logit columns, all-gathered (padded to the largest share) into the whole vocabulary."""

    def __init__(self, inner: nn.Module, shares: list[int], group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.inner, self.shares, self.group = inner, shares, group

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        local = self.inner(h)
        width = max(self.shares)
        if local.shape[-1] < width:
            local = F.pad(local, (0, width - local.shape[-1]))
        parts = [torch.empty_like(local) for _ in self.shares]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat([p[..., :n] for p, n in zip(parts, self.shares, strict=True)], dim=-1)


class ReduceAfter(nn.Module):
    """A row-parallel linear (wo, w2): this rank's input columns, then the ranks' partial sums added."""

    def __init__(self, inner: nn.Module, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        self.inner, self.group = inner, group
        self.in_features, self.out_features = inner.in_features, inner.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        dist.all_reduce(out, group=self.group)
        return out


def parallelize(model: nn.Module, shard: TensorParallelShard, group: dist.ProcessGroup | None = None) -> None:
    """Turn a model built from this rank's shards (shapes of `shard.local_args()`) into its TP part:
    the communicating layers wrap the loaded ones in place."""
    from mistral_nemo.model.transformer import Transformer

    assert isinstance(model, Transformer)
    if getattr(model, "fused_decoder", None) is not None:
        raise TensorParallelError("the fused int8/int4 decoder does not run tensor-parallel")
    for layer in model.layers:
        layer.attention.wo = ReduceAfter(layer.attention.wo, group)
        layer.feed_forward.w2 = ReduceAfter(layer.feed_forward.w2, group)
    embedding = model.tok_embeddings
    model.tok_embeddings = VocabParallelEmbedding(embedding.weight, shard.vocab[0], group)  # type: ignore[assignment]
    model.output = VocabParallelHead(model.output, shard.vocab_shares(), group)  # type: ignore[assignment]
    model.tensor_parallel = shard  # type: ignore[assignment]
