"""A tensor-parallel rank reads only its part of each tensor (safetensors get_slice), and that part
is exactly what cutting the whole tensor gives: Mistral, HF and quantized folders, both ranks of 2.
No process group is needed: reading does not communicate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mistral_nemo.model.loading import read_checkpoint
from mistral_nemo.model.quant.convert import quantize_checkpoint
from mistral_nemo.model.tensor_parallel import TensorParallelShard
from mistral_nemo.model.weights import private_file_maps
from tests.nemo_checkpoints import random_reference_model, write_hf_folder, write_mistral_folder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tpread")
    model = random_reference_model(seed=5)
    found = {
        "mistral": write_mistral_folder(model, root / "mistral"),
        "hf": write_hf_folder(model, root / "hf"),
    }
    for to in ("int8", "int4"):
        found[to] = root / to
        quantize_checkpoint(found["mistral"], found[to], to)
    return found


def _values(item: torch.Tensor | nn.Module) -> torch.Tensor:
    return item.dequantize() if isinstance(item, nn.Module) else item  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["mistral", "hf", "int8", "int4"])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_reads_exactly_its_part(folders: dict[str, Path], kind: str, rank: int) -> None:
    whole = read_checkpoint(folders[kind], "auto", CPU)
    shard = TensorParallelShard(rank, 2, whole.args)
    expected = {name: shard.shard(name, item) for name, item in whole.tensors}
    reader = read_checkpoint(folders[kind], "auto", CPU, tensor_parallel=(rank, 2))
    assert reader.shard == shard
    got = {}
    for name, item in reader.tensors:  # the file is open (and mapped) while the reader is suspended
        maps = private_file_maps(reader.weight_files)
        assert maps, "the reader's file map is where the views would point"
        if isinstance(item, torch.Tensor):  # its own memory, not a view of the file's map
            address = item.untyped_storage().data_ptr()
            assert not any(start <= address < end for start, end in maps), name
        got[name] = item
    assert got.keys() == expected.keys()
    for name, item in got.items():
        assert type(item) is type(expected[name]), name
        torch.testing.assert_close(_values(item), _values(expected[name]), rtol=0, atol=0, msg=name)
