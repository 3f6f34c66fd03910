"""mistral-finetune's YAML: its example reads as it is, ignored and unsupported keys are named, and
`finetune --validate` reports bad lines by file and line with token counts and an epoch estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mistral_nemo.entrypoints.cli import main as cli
from mistral_nemo.finetune.config import ConfigError, parse_config
from tests.test_finetune_data import WEIGHTED

# mistral-finetune's example/7B.yaml with its placeholders filled in.
EXAMPLE_7B = """
data:
  instruct_data: "{data}"
  data: ""
  eval_instruct_data: ""
model_id_or_path: "{model}"
lora:
  rank: 64
seq_len: 32768
batch_size: 1
max_steps: 300
optim:
  lr: 6.e-5
  weight_decay: 0.1
  pct_start: 0.05
seed: 0
log_freq: 1
eval_freq: 100
no_eval: True
ckpt_freq: 100
save_adapters: True
run_dir: "{run}"
wandb:
  project: "" # your wandb project name
  run_name: "" # your wandb run name
  offline: False
"""


def test_mistral_finetune_example_config_reads_with_its_defaults(tmp_path):
    text = EXAMPLE_7B.format(data=tmp_path / "d.jsonl", model=tmp_path / "m", run=tmp_path / "run")
    config = parse_config(yaml.safe_load(text))
    assert (config.lora.rank, config.lora.scaling, config.lora.dropout) == (64, 2.0, 0.0)
    assert (config.optim.lr, config.seq_len, config.max_steps, config.ckpt_freq) == (6e-5, 32768, 300, 100)
    assert (config.num_microbatches, config.max_norm, config.num_ckpt_keep, config.checkpoint) == (
        1,
        1.0,
        3,
        True,
    )
    assert config.ignored and config.ignored[0].startswith("wandb")
    assert config.model_path == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lerning_rate": 1}, "unknown config key(s) lerning_rate"),
        ({"optim": {"lr": 1e-4, "betas": [0.9, 0.99]}}, "optim.betas"),
        ({"lora": {"enable": False}}, "full fine-tuning"),
        ({"save_adapters": False}, "lora merge"),
        ({"seq_len": "long"}, "seq_len must be an integer"),
        ({"no_eval": False}, "eval_instruct_data"),
        ({"quantization": "int3"}, "quantization must be one of"),
        ({"run_dir": ""}, "run_dir is required"),
        ({"data": {"instruct_data": ""}}, "must name some training data"),
    ],
)
def test_unsupported_or_misspelt_keys_are_refused_by_name(change, message):
    values = {"run_dir": "run", "data": {"instruct_data": "x.jsonl"}, **change}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(values)


def test_validate_reports_lines_tokens_and_epochs(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(WEIGHTED) + "\n{broken\n" + json.dumps(WEIGHTED) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {"instruct_data": str(data)},
                        "seq_len": 100, "max_steps": 10, "wandb": {"project": "x"}})
    )  # fmt: skip
    assert cli(["finetune", "--validate", str(config)]) == 1
    out = capsys.readouterr()
    assert f"{data}:2: not valid JSON" in out.out
    assert "2 samples" in out.out and "1 malformed line(s)" in out.out
    assert "1,000 tokens will be seen" in out.out
    assert "ignoring config key wandb" in out.err
    tokens = int(out.out.split("samples, ")[1].split(" tokens")[0].replace(",", ""))
    epochs = float(out.out.split("about ")[1].split(" epochs")[0])
    assert epochs == pytest.approx(1000 / tokens, abs=0.01)


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: r\ndata: {instruct_data: x}\nmax_step: 3\n")
    assert cli(["finetune", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key(s) max_step" in err and "Traceback" not in err
    assert cli(["finetune", str(tmp_path / "missing.yaml")]) == 2
    missing = tmp_path / "m.yaml"
    missing.write_text(f"run_dir: r\ndata: {{instruct_data: {tmp_path / 'nope.jsonl'}}}\n")
    assert cli(["finetune", "--validate", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_documented_example_validates(monkeypatch, capsys):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # its paths are relative to the repository root
    assert cli(["finetune", "--validate", "examples/finetune/facts.yaml"]) == 0
    out = capsys.readouterr().out
    assert "examples/finetune/facts.jsonl (instruct, weight 1.000): 24 samples" in out
    assert "examples/finetune/questions.jsonl (eval" in out and "0 malformed line(s)" in out
