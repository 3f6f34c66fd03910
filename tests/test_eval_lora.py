"""`mistral-nemo eval --lora PATH`: the adapter's loglikelihoods, equal to the merged model's.

A random adapter on a random NeMo-shaped model (Tekken tokenizer); the reference is the same adapter
merged into a model folder by `mistral-nemo lora merge` (tested against peft in test_lora.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mistral_nemo.entrypoints.cli import main
from mistral_nemo.model.loading import load
from tests.nemo_checkpoints import random_reference_model, write_mistral_folder
from tests.test_eval_equality import per_item
from tests.test_lora import random_adapter, write_adapter

TASK = "hellaswag"


def eval_lls(model: Path, out: Path, *flags: str) -> list[tuple[float, bool]]:
    argv = ["eval", str(model), "--tasks", TASK, "--limit", "2", "--kv-cache-memory", "64MiB"]
    assert main([*argv, *flags, "--log-samples", "--output", str(out)]) == 0
    return per_item(json.loads(out.read_text()), TASK)


def test_eval_with_an_adapter_equals_the_merged_model(tmp_path: Path) -> None:
    base = write_mistral_folder(random_reference_model(seed=3), tmp_path / "nemo")
    adapter = write_adapter(
        tmp_path / "adapter", random_adapter(load(base, device="cpu").args, rank=4, seed=9)
    )
    assert main(["lora", "merge", str(base), str(adapter), str(tmp_path / "merged")]) == 0

    with_adapter = eval_lls(base, tmp_path / "lora.json", "--lora", str(adapter))
    merged = eval_lls(tmp_path / "merged", tmp_path / "merged.json")
    without = eval_lls(base, tmp_path / "base.json")
    assert len(with_adapter) == len(merged) == len(without) >= 8  # 2 items x 4 endings
    for (ll, greedy), (ref_ll, ref_greedy) in zip(with_adapter, merged, strict=True):
        assert ll == pytest.approx(ref_ll, rel=1e-4) and greedy == ref_greedy
    assert all(abs(a[0] - b[0]) > 1e-3 for a, b in zip(with_adapter, without, strict=True))


def test_eval_refuses_lora_with_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--url", "http://127.0.0.1:9", "--tasks", TASK, "--lora", "x"]) == 2
    assert "--lora" in capsys.readouterr().err
