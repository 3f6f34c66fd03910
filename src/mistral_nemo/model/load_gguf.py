"""A GGUF file (llama.cpp, architecture `llama`): quantized blocks, interleaved RoPE, tokenizer inside.

The header and the block sizes come from formats.gguf (its parser is fast; gguf.GGUFReader takes
seconds to open a file with a large vocabulary). Tensors are read a chunk of whole rows at a time
(~32 MiB, pread by a thread a few chunks ahead into reused buffers, so the disk and the decoding
overlap) and each chunk goes straight into the tensor's final buffers: a compact layer's int8 / int4
values and scales (quant/gguf_blocks.CompactRows) or a float32 tensor, q/k rows directly in their
rotate-half places. No tensor ever exists twice in full, so the peak stays near the loaded model's
own size plus the read buffers (pages of a memory map would count in RSS for as long as it is mapped).
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mistral_nemo.formats.gguf import (
    GgufTensorInfo,
    UnsupportedQuantizationError,
    block_size,
    is_float_type,
    is_gguf_file,
    qtype_of,
    row_bytes,
)
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.gguf_quants import dequantize
from mistral_nemo.model.weights import CheckpointError, Part, interleaved_to_half

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
_TOP_LEVEL = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_IN_LAYER = {
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}

# Bytes read per step (whole rows; _READ_AHEAD + 1 buffers): big sequential reads, small against the
# tensors worth chunking (NeMo-12B: 75-713 MB each). 16 and 32 MiB measured alike on NeMo-12B.
_CHUNK_BYTES = 32 << 20
_READ_AHEAD = 2  # chunks read ahead of the one being decoded (smooths uneven disk and decoding rates)
_FLOAT_STEP_ELEMS = 1 << 20  # values dequantized at once into a float tensor (a 4 MiB temporary)

is_gguf = is_gguf_file


def read_gguf_args(meta: dict[str, Any], tensors: list[GgufTensorInfo]) -> ModelArgs:
    names = {t.name for t in tensors}
    return ModelArgs.from_gguf_metadata(meta, tied_embeddings="output.weight" not in names)


def gguf_name(name: str) -> str | None:
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    match = _LAYER.match(name)
    if match and match.group(2) in _IN_LAYER:
        return f"layers.{match.group(1)}.{_IN_LAYER[match.group(2)]}"
    if name == "rope_freqs.weight":
        return None
    raise CheckpointError(f"unexpected tensor {name!r} in GGUF file")


def iter_gguf_tensors(
    path: Path,
    tensors: list[GgufTensorInfo],
    args: ModelArgs,
    compact: bool = False,
    part: Callable[[str], Part | None] | None = None,
) -> Iterator[tuple[str, torch.Tensor | nn.Module]]:
    """Tensors under our names, q/k rows converted to rotate-half.

    compact=False: every tensor dequantized to float32.
    compact=True: each quantized linear weight (attention, feed-forward, output) comes as a compact
    Int8Linear / Int4Linear built from its blocks (quant/gguf_blocks.py: exact for Q8_0, Q4_0, Q4_1,
    Q4_K, Q6_K; other types requantized to int8). With tied embeddings and a quantized token_embd, a
    compact `output.weight` made from the same blocks follows the float `tok_embeddings.weight`.
    Embeddings, norms and F32/F16/BF16 weights stay float32 tensors.
    Every tensor's name, type and extent is checked before anything is read.

    part (tensor parallelism): (dim, start, end) of the rows / input columns to keep of each tensor
    (None: whole). Rows are read alone (whole rows of blocks); columns are cut out of each row chunk
    as whole blocks when start and end fall on block boundaries, else (e.g. a K-quant's 256) the
    tensor is read whole and its compact layer cut on its own, finer groups afterwards.
    """
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        plans = [
            _plan(info, ours, size, path, part(ours) if part else None)
            for info in tensors
            if (ours := gguf_name(info.name)) is not None
        ]
        spans = [span for plan in plans for span in plan.spans]
        # closing(): the reader thread finishes its read before the file closes (early exit, errors).
        with closing(_read_chunks(fd, spans, path)) as chunks:
            for plan in plans:
                yield from _decode(plan, chunks, args, compact, path)


@dataclass(frozen=True)
class _Plan:
    """One tensor to read: its rows (all but GGUF's fastest dim) and the file spans of its row chunks."""

    info: GgufTensorInfo
    ours: str
    shape: tuple[int, ...]
    rows: int
    cols: int
    spans: list[tuple[int, int, str]]  # (offset, bytes, tensor name) of each chunk of whole rows
    heads_share: tuple[int, int] = (1, 1)  # rows kept / file rows: the share of RoPE heads read
    row_cut: tuple[int, int, int] | None = None  # (file row bytes, first, end byte) kept of each row
    cut_after: Part | None = None  # a part not on block boundaries: cut once built


def _plan(info: GgufTensorInfo, ours: str, file_size: int, path: Path, part: Part | None = None) -> _Plan:
    try:
        elements_per_block = block_size(info.qtype)[0]
    except UnsupportedQuantizationError as e:
        raise UnsupportedQuantizationError(f"{path}: tensor {info.name}: {e}") from e
    cols = int(info.dims[0]) if info.dims else 1
    rows = prod(info.dims[1:])
    if cols % elements_per_block:
        raise CheckpointError(
            f"{path}: tensor {info.name} has rows of {cols} values, not a whole number of "
            f"{qtype_of(info.qtype).name} blocks of {elements_per_block}"
        )
    row_size = row_bytes(info.qtype, cols)
    if info.offset + rows * row_size > file_size:
        raise CheckpointError(f"{path} is truncated: tensor {info.name} ends past the end of the file")
    shape = tuple(reversed(info.dims))
    first, count, extra = 0, rows, {}
    if part is not None:
        dim, start, end = part
        if len(shape) != 2 or not 0 <= start < end <= shape[dim]:
            raise CheckpointError(f"{path}: tensor {info.name} {shape} has no part {part}")
        if dim == 0:
            first, count = start, end - start
            extra = {"heads_share": (count, rows)}
        elif start % elements_per_block == 0 and end % elements_per_block == 0:
            per_block = row_size * elements_per_block // cols
            cut = (row_size, start // elements_per_block * per_block, end // elements_per_block * per_block)
            extra = {"row_cut": cut}
        else:
            extra = {"cut_after": part}
    step = max(1, _CHUNK_BYTES // max(1, row_size))
    spans = [
        (info.offset + r * row_size, min(step, first + count - r) * row_size, info.name)
        for r in range(first, first + count, step)
    ]
    if part is not None and "cut_after" not in extra:
        kept_cols = (part[2] - part[1]) if part[0] == 1 else cols
        return _Plan(info, ours, (count, kept_cols), count, kept_cols, spans, **extra)
    return _Plan(info, ours, shape, rows, cols, spans, **extra)


def _decode(
    plan: _Plan, chunks: Iterator[np.ndarray], args: ModelArgs, compact: bool, path: Path
) -> list[tuple[str, torch.Tensor | nn.Module]]:
    """Feed the tensor's row chunks to the builders of what it becomes; their results under our names."""
    info = plan.info
    try:
        builders = _builders(plan, args, compact)
        for _ in plan.spans:
            chunk = next(chunks)
            if plan.row_cut is not None:  # this rank's input columns: whole blocks of each row
                row_size, first, end = plan.row_cut
                chunk = np.ascontiguousarray(chunk.reshape(-1, row_size)[:, first:end])
            for _, builder in builders:
                builder.put(chunk)
        built = [(name, builder.finish()) for name, builder in builders]
        return built if plan.cut_after is None else [(n, _cut(n, item, plan.cut_after)) for n, item in built]
    except UnsupportedQuantizationError as e:
        raise UnsupportedQuantizationError(f"{path}: tensor {info.name}: {e}") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: tensor {info.name} {plan.shape}: {e}") from e


class _Builder(Protocol):
    """Takes a tensor's raw bytes a chunk of whole rows at a time (file order), then gives the result."""

    def put(self, raw: np.ndarray) -> None: ...

    def finish(self) -> torch.Tensor | nn.Module: ...


def _builders(plan: _Plan, args: ModelArgs, compact: bool) -> list[tuple[str, _Builder]]:
    """(our name, builder with put(raw rows) / finish()) for each thing this tensor becomes."""
    qtype, ours, shape = plan.info.qtype, plan.ours, (plan.rows, plan.cols)
    heads = _rope_heads(ours, args)
    kept, rows = plan.heads_share  # a rank's rows of q / k are whole heads
    order = _rope_order(plan.rows, heads * kept // rows) if heads else None
    quantized = not is_float_type(qtype)
    if compact and quantized and _is_linear(ours):
        return [(ours, _compact_rows(qtype, shape, order))]
    weight = (ours, _FloatRows(qtype, plan.shape, plan.cols, order))
    if compact and quantized and ours == "tok_embeddings.weight" and args.tied_embeddings:
        # The output projection reads the same blocks: a compact copy, the lookup table stays float.
        return [weight, ("output.weight", _compact_rows(qtype, shape, None))]
    return [weight]


def _cut(name: str, item: torch.Tensor | nn.Module, part: Part) -> torch.Tensor | nn.Module:
    """Columns [start, end) of a built tensor or compact layer (its groups: 32, or 16 for Q6_K)."""
    dim, start, end = part
    if isinstance(item, torch.Tensor):
        return item.narrow(dim, start, end - start).clone()
    from mistral_nemo.model.quant.shard import shard_linear

    return shard_linear(name, item, dim, start, end)


def _compact_rows(qtype: int, shape: tuple[int, int], order: np.ndarray | None) -> _Builder:
    # Imported here: it loads numba (the compact kernels), which float loads do not need.
    from mistral_nemo.model.quant.gguf_blocks import CompactRows

    return CompactRows(qtype, shape, row_order=order)


class _FloatRows:
    """A float32 tensor filled a chunk of rows at a time (dequantized), rows put where `order` says."""

    def __init__(self, qtype: int, shape: tuple[int, ...], cols: int, order: np.ndarray | None) -> None:
        self.qtype, self.shape, self.cols = qtype, shape, cols
        self.row_bytes = row_bytes(qtype, cols)
        self.weight = torch.empty(prod(shape) // cols, cols)  # [rows, cols]; finish() gives `shape`
        self.dest = None if order is None else torch.from_numpy(_destinations(order))
        self.done = 0

    def put(self, raw: np.ndarray) -> None:
        rows = raw.reshape(-1, self.row_bytes)
        if self.done + rows.shape[0] > self.weight.shape[0]:
            raise ValueError(f"more rows than the {self.weight.shape[0]} of the shape")
        step = max(1, _FLOAT_STEP_ELEMS // self.cols)  # the float32 temporary stays small
        for start in range(0, rows.shape[0], step):
            block = rows[start : start + step]
            part = dequantize(block, self.qtype, (block.shape[0], self.cols))
            stop = self.done + part.shape[0]
            self.weight[slice(self.done, stop) if self.dest is None else self.dest[self.done : stop]] = part
            self.done = stop

    def finish(self) -> torch.Tensor:
        if self.done != self.weight.shape[0]:
            raise ValueError(f"got {self.done} of {self.weight.shape[0]} rows")
        return self.weight.view(self.shape)


def _read_chunks(fd: int, spans: list[tuple[int, int, str]], path: Path) -> Iterator[np.ndarray]:
    """Each span's bytes in order, the next _READ_AHEAD spans read by a thread meanwhile (pread releases
    the GIL), so the disk and the decoding overlap. A yielded buffer is reused once the caller asks for
    the next one: copy out of it first."""
    if not spans:
        return
    size = max(nbytes for _, nbytes, _ in spans)
    buffers = [np.empty(size, dtype=np.uint8) for _ in range(_READ_AHEAD + 1)]
    drop = _drops_read_pages(os.fstat(fd).st_size)

    def read(i: int) -> np.ndarray:
        offset, nbytes, name = spans[i]
        buf = _pread_exact(
            fd, buffers[i % len(buffers)][:nbytes], offset, f"{path} is truncated: tensor {name}"
        )
        if drop:
            os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
        return buf

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gguf-read") as pool:
        ahead = deque(pool.submit(read, i) for i in range(min(_READ_AHEAD, len(spans))))
        try:
            for i in range(len(spans)):
                chunk = ahead.popleft().result()
                if i + _READ_AHEAD < len(spans):  # into the buffer the caller has just finished with
                    ahead.append(pool.submit(read, i + _READ_AHEAD))
                yield chunk
        finally:
            for future in ahead:  # stopped early: skip the reads not started
                future.cancel()


def _drops_read_pages(file_size: int) -> bool:
    """Whether to drop the file's pages from the page cache once read: when they could not stay cached
    beside the model they become (file > half of MemAvailable). Else the kernel reclaims them (kswapd)
    while the model's fresh memory is faulted in: NeMo-12B Q8_0 (13 GB) on 24 GB RAM loads in 15.5-20.2 s
    with the drop, 19.9-21.1 without (4 runs each; 2-5 s less CPU reading)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return False
    return file_size > available // 2


def _pread_exact(fd: int, buf: np.ndarray, offset: int, what: str) -> np.ndarray:
    view = memoryview(buf)
    done = 0
    while done < len(view):  # a read may return less than asked
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            raise CheckpointError(f"{what} ends past the end of the file")
        done += got
    return buf


def _is_linear(ours: str) -> bool:
    return ours == "output.weight" or ours.endswith(_LINEAR_SUFFIXES)


_LINEAR_SUFFIXES = tuple(f"{name}.weight" for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"))


def _rope_heads(ours: str, args: ModelArgs) -> int | None:
    """The head count whose interleaved-pair RoPE rows become rotate-half, for q / k; else None."""
    if ours.endswith("attention.wq.weight"):
        return args.n_heads
    if ours.endswith("attention.wk.weight"):
        return args.n_kv_heads
    return None


def _rope_order(rows: int, heads: int) -> np.ndarray:
    """The row order interleaved_to_half applies (new row i = file row order[i]), as indices."""
    return interleaved_to_half(torch.arange(rows)[:, None], heads)[:, 0].numpy()


def _destinations(order: np.ndarray) -> np.ndarray:
    """Where each file row goes, for new row i = file row order[i]."""
    dest = np.empty_like(order)
    dest[order] = np.arange(order.size)
    return dest
