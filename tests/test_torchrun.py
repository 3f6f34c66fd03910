"""`torchrun --nproc-per-node 2 ... mistral-demo --num_pipeline_ranks 2`: torchrun's two processes
join one tensor-parallel group (rank 1 only runs the model) and print what one process prints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mistral_nemo.entrypoints.mistral_compat import mistral_demo
from tests.gguf_fixture import smollm2_gguf_path

DEMO = "\n".join(
    [
        "import sys",
        "from mistral_nemo.entrypoints.mistral_compat import mistral_demo",
        "sys.exit(mistral_demo())",
    ]
)


def _answers(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Loaded ")]


def test_torchrun_two_ranks_print_the_one_process_answers(capsys: pytest.CaptureFixture[str]) -> None:
    model = str(smollm2_gguf_path())
    flags = [model, "--max_tokens", "4"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launcher, "--no-python", sys.executable, "-c", DEMO, *flags, "--num_pipeline_ranks", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "over 2 tensor-parallel ranks" in run.stdout + run.stderr
    assert mistral_demo(flags) == 0
    want = _answers(capsys.readouterr().out)
    assert len(want) >= 6 and _answers(run.stdout) == want
