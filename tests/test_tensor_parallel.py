"""Tensor parallelism on CPU (gloo): the split itself, and 2 ranks against 1 process.

The references are this project's own single-process paths, which the fidelity tests hold against
transformers and llama.cpp: 2 ranks must give the same logits (float tolerance: only the order of
the sums changes) and the same greedy tokens, on the embedded SmolLM2 (9 query / 3 KV heads: an
uneven 2 + 1 split) and on a NeMo-shaped random model (head_dim 128 != dim / n_heads).
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mistral_nemo import LLM, SamplingParams
from mistral_nemo.model.args import ModelArgs
from mistral_nemo.model.loading import load
from mistral_nemo.model.quant.linear import Int4Linear, Int8Linear
from mistral_nemo.model.quant.shard import shard_linear
from mistral_nemo.model.tensor_parallel import TensorParallelError, TensorParallelShard, split_range
from mistral_nemo.model.weights import CheckpointError
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder
from tests.tensor_parallel_ranks import rank_logits

NEMO_12B = ModelArgs(
    dim=5120, n_layers=40, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8, vocab_size=131072
)
SMOLLM2 = ModelArgs(
    dim=576, n_layers=30, head_dim=64, hidden_dim=1536, n_heads=9, n_kv_heads=3, vocab_size=49152
)


def test_split_covers_everything_once() -> None:
    for total, world, unit in ((10, 3, 1), (14336, 4, 64), (3, 2, 1), (49152, 2, 1), (100, 3, 64)):
        ranges = [split_range(total, world, r, unit) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_nemo_12b_shards_on_two_ranks() -> None:
    first, second = (TensorParallelShard(r, 2, NEMO_12B) for r in range(2))
    assert first.kv_heads == (0, 4) and first.q_heads == (0, 16)
    assert second.kv_heads == (4, 8) and second.q_heads == (16, 32)
    assert first.slice_of("layers.3.attention.wq.weight") == (0, 0, 2048)  # head_dim 128, not 5120 / 32
    assert second.slice_of("layers.3.attention.wo.weight") == (1, 2048, 4096)
    assert second.slice_of("layers.0.feed_forward.w2.weight") == (1, 7168, 14336)
    assert first.slice_of("output.weight") == (0, 0, 65536)
    assert first.slice_of("layers.0.attention_norm.weight") is None
    local = second.local_args()
    assert (local.n_heads, local.n_kv_heads, local.head_dim, local.hidden_dim) == (16, 4, 128, 7168)


def test_smollm2_splits_by_kv_groups_unevenly() -> None:
    first, second = (TensorParallelShard(r, 2, SMOLLM2) for r in range(2))
    assert (first.kv_heads, first.q_heads) == ((0, 2), (0, 6))
    assert (second.kv_heads, second.q_heads) == ((2, 3), (6, 9))
    assert first.vocab_shares() == [24576, 24576]


def test_more_ranks_than_kv_heads_is_refused() -> None:
    with pytest.raises(TensorParallelError, match="more than the model's 3 KV heads"):
        TensorParallelShard(0, 4, SMOLLM2)


@pytest.fixture(scope="module")
def nemo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mistral_folder(random_reference_model(seed=3), tmp_path_factory.mktemp("tp") / "nemo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "make",
    [
        lambda w: Int8Linear.from_float(w),  # one scale per row: kept whole by a column cut
        lambda w: Int8Linear.from_float(w, group_size=32),
        lambda w: Int4Linear.from_float(w, group_size=64),
    ],
    ids=["int8-channel", "int8-group32", "int4-group64"],
)
def test_quantized_layers_split_with_their_scales(make: Callable[[torch.Tensor], nn.Module]) -> None:
    """A rank's part of a quantized layer stands for exactly that part of the whole layer's weight."""
    torch.manual_seed(0)
    layer = make(torch.randn(96, 256))
    whole = layer.dequantize()
    rows = shard_linear("layers.0.attention.wq.weight", layer, 0, 32, 96)
    torch.testing.assert_close(rows.dequantize(), whole[32:96], rtol=0, atol=0)
    columns = shard_linear("layers.0.feed_forward.w2.weight", layer, 1, 128, 256)
    torch.testing.assert_close(columns.dequantize(), whole[:, 128:256], rtol=0, atol=0)


def test_a_column_cut_inside_a_group_is_refused() -> None:
    layer = Int4Linear.from_float(torch.randn(8, 256), group_size=64)
    with pytest.raises(CheckpointError, match="groups of 64"):
        shard_linear("layers.0.feed_forward.w2.weight", layer, 1, 32, 256)


def test_two_ranks_give_one_process_logits(nemo_folder: Path) -> None:
    """fp32 logits within float tolerance (only the order of the sums differs)."""
    ids = list(range(1, 40, 3))
    modes = ["none"]
    context = mp.get_context("spawn")
    out = context.Queue()
    args = (2, _free_port(), str(nemo_folder), modes, ids, out)
    ranks = [context.Process(target=rank_logits, args=(r, *args)) for r in range(2)]
    for rank in ranks:
        rank.start()
    got = out.get(timeout=480)
    for rank in ranks:
        rank.join(60)
        assert rank.exitcode == 0
    for mode in modes:
        reference = load(nemo_folder, device="cpu", quantization=mode).model.logits(torch.tensor(ids))
        torch.testing.assert_close(torch.tensor(got[mode]), reference, rtol=1e-4, atol=1e-4, msg=mode)


@pytest.mark.parametrize(
    ("model", "quantization"),
    [("embedded", "none"), ("embedded", "auto"), ("nemo", "none")],
    ids=["embedded-float", "embedded-gguf-q4_1", "nemo"],
)
def test_llm_two_ranks_same_greedy_tokens(model: str, quantization: str, nemo_folder: Path) -> None:
    """auto on the embedded GGUF: its Q4_1 / Q8_0 blocks as int4 / int8 layers, each rank reading its
    own rows and whole blocks of its input columns."""
    path = None if model == "embedded" else nemo_folder
    prompts = [[1, 1504, 3458, 1282, 2649, 1314], [1, 1002, 1003, 1004, 1005]]  # in both vocabularies
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    options = {"device": "cpu", "num_blocks": 32, "quantization": quantization}
    parallel = LLM(path, tensor_parallel_size=2, **options)
    try:
        got = [o.outputs[0].token_ids for o in parallel.generate(prompts, params, use_tqdm=False)]
    finally:
        parallel.close()
    single = LLM(path, **options)
    assert got == [o.outputs[0].token_ids for o in single.generate(prompts, params, use_tqdm=False)]
