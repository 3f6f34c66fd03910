"""A rank's part of a GGUF file read alone (its rows; whole blocks of each row's input columns) is
bit-identical to the whole tensor read and then cut, for every block type of the tiny test file:
aligned column cuts (Q4_0, Q5_K, Q8_0 at 128 / 256) and one inside a K-quant block (Q6_K wo at 128 of
its 256), which is read whole and cut on the compact layer's groups of 16."""

from __future__ import annotations

from pathlib import Path

import pytest

from mistral_nemo.formats.gguf import read_gguf_header
from mistral_nemo.model.load_gguf import iter_gguf_tensors, read_gguf_args
from mistral_nemo.model.tensor_parallel import TensorParallelShard
from tests.test_gguf_direct import assert_bit_identical, write_tiny_gguf


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "float"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_ranks_part_read_alone_equals_the_whole_cut(tmp_path: Path, tied: bool, compact: bool) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tied)
    meta, infos = read_gguf_header(path)
    args = read_gguf_args(meta, infos)
    whole = dict(iter_gguf_tensors(path, infos, args, compact=compact))
    for rank in range(2):
        shard = TensorParallelShard(rank, 2, args)
        got = dict(iter_gguf_tensors(path, infos, args, compact=compact, part=shard.slice_of))
        assert set(got) == set(whole)
        for name, item in whole.items():
            assert_bit_identical(got[name], shard.shard(name, item), f"rank {rank} {name}")
