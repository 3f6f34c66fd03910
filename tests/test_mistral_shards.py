"""A Mistral consolidated checkpoint split over several safetensors shards loads every shard."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mistral_nemo.model.loading import load
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder


def test_sharded_consolidated_checkpoint_equals_the_single_file(tmp_path: Path) -> None:
    single = write_mistral_folder(random_reference_model(seed=3), tmp_path / "single")
    sharded = write_mistral_folder(random_reference_model(seed=3), tmp_path / "sharded")
    tensors = load_file(str(sharded / "consolidated.safetensors"))
    (sharded / "consolidated.safetensors").unlink()
    second = {k: v for k, v in tensors.items() if k.startswith("layers.1.")}  # no embedding in this shard
    first = {k: v for k, v in tensors.items() if k not in second}
    save_file(first, str(sharded / "consolidated-00001-of-00002.safetensors"))
    save_file(second, str(sharded / "consolidated-00002-of-00002.safetensors"))
    ids = torch.arange(1000, 1012)
    expected = load(single, dtype=torch.float32, device="cpu", quantization="none").model.logits(ids)
    got = load(sharded, dtype=torch.float32, device="cpu", quantization="none").model.logits(ids)
    assert torch.equal(got, expected)
