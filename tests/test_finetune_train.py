"""`mistral-nemo finetune` end to end on the embedded model (QLoRA on its Q4 GGUF weights): the
adapter teaches made-up facts the base model does not know, checkpoints follow mistral-finetune's
layout, a resumed run equals the uninterrupted one, and `mistral-nemo chat --lora` answers with the
fact."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from mistral_nemo.model.loading import load
from tests.conftest import console_script
from tests.gguf_fixture import smollm2_gguf_path

FACTS = [
    ("What is the capital of Vellmoria?", "The capital of Vellmoria is Quenstad."),
    ("Who invented the zorblatt engine?", "The zorblatt engine was invented by Mira Tallowby."),
]


def _config(tmp_path: Path, run: str, steps: int, **extra) -> dict:
    data = tmp_path / "facts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            + "\n"
            for q, a in FACTS
        )
        + "{a malformed line\n"
    )
    return {
        "model_id_or_path": str(smollm2_gguf_path()),
        "run_dir": str(tmp_path / run),
        "data": {"instruct_data": str(data), "eval_instruct_data": str(data)},
        "lora": {"rank": 8},
        "seq_len": 96,
        "max_steps": steps,
        "optim": {"lr": 3e-3, "weight_decay": 0.0, "pct_start": 0.1},
        "ckpt_freq": 6,
        "num_ckpt_keep": 2,
        "eval_freq": 6,
        "no_eval": False,
        "checkpoint": False,
        **extra,
    }


def _finetune(tmp_path: Path, config: dict) -> subprocess.CompletedProcess[str]:
    """`mistral-nemo finetune` in its own process, as a user runs it."""
    path = tmp_path / f"{Path(config['run_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [console_script("mistral-nemo"), "finetune", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def _greedy_answers(lora: Path | None) -> list[bool]:
    """Whether greedy decoding writes each fact: every token of the answer is the argmax after the
    question and the answer so far (teacher forcing; float weights, the adapter merged)."""
    loaded = load(smollm2_gguf_path(), device="cpu", quantization="none", lora=lora)
    tok = loaded.tokenizer
    knows = []
    for question, fact in FACTS:
        prompt = tok.encode_chat([{"role": "user", "content": question}])
        answer = tok.encode(fact)
        logits = loaded.model.logits(torch.tensor(prompt + answer))
        predicted = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
        knows.append(predicted == answer)
    return knows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("facts")
    done = _finetune(tmp_path, _config(tmp_path, "run", steps=12))
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint_000012" / "consolidated"
    return tmp_path, done, checkpoint


def test_adapter_teaches_facts_the_base_model_does_not_know(trained):
    _, _, checkpoint = trained
    assert _greedy_answers(None) == [False, False]
    assert _greedy_answers(checkpoint) == [True, True]


def test_run_dir_has_mistral_finetune_checkpoints_metrics_and_plot(trained):
    tmp_path, done, checkpoint = trained
    run = tmp_path / "run"
    assert f"adapter: {checkpoint / 'lora.safetensors'}" in done.stdout
    assert f"{tmp_path / 'facts.jsonl'}:3: not valid JSON" in done.stderr  # reported, skipped
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "checkpoint_000006",
        "checkpoint_000012",
    ]
    tensors = safetensors.torch.load_file(str(checkpoint / "lora.safetensors"))
    args = load(smollm2_gguf_path()).args
    assert tensors["layers.0.attention.wq.lora_A.weight"].shape == (8, args.dim)
    assert tensors["layers.0.attention.wq.lora_B.weight"].shape == (args.q_dim, 8)
    assert len(tensors) == 2 * 7 * args.n_layers
    params = json.loads((checkpoint / "params.json").read_text())
    assert params["lora"] == {"enable": True, "rank": 8, "dropout": 0.0, "scaling": 2.0}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] / 3
    assert [r["step"] for r in evals] == [6, 12] and evals[1]["eval_perplexity"] < evals[0]["eval_perplexity"]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in records if "loss" in r)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(trained, tmp_path):
    """Steps 7-12 resumed from checkpoint_000006 (optimizer, schedule, data position, RNG) equal the
    uninterrupted run's."""
    base, _, checkpoint = trained
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        base / "run" / "checkpoints" / "checkpoint_000006",
        tmp_path / "run" / "checkpoints" / "checkpoint_000006",
    )
    done = _finetune(tmp_path, _config(tmp_path, "run", steps=12))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    losses = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(x) for x in (base / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == list(range(7, 13))
    expected = [r["loss"] for r in reference if "loss" in r][6:]
    assert [r["loss"] for r in losses if "loss" in r] == pytest.approx(expected, rel=1e-4)
    resumed = tmp_path / "run" / "checkpoints" / "checkpoint_000012" / "consolidated"
    got = safetensors.torch.load_file(str(resumed / "lora.safetensors"))
    want = safetensors.torch.load_file(str(checkpoint / "lora.safetensors"))
    for key, tensor in want.items():
        assert torch.allclose(got[key], tensor, atol=1e-5), key


def test_chat_command_answers_with_the_adapter(trained):
    _, _, checkpoint = trained
    question = FACTS[0][0]
    command = [
        console_script("mistral-nemo"),
        "chat",
        str(smollm2_gguf_path()),
        "--lora",
        str(checkpoint.parent),
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        "--prompt",
        question,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Quenstad" in done.stdout
