"""The integer block dot products (model/quant/simd.py) equal exact int64 arithmetic on every
instruction set this CPU can run, including the ones a less capable CPU would pick."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mistral_nemo.model.quant import simd
from tests.simd_check import check

ROOT = Path(__file__).resolve().parents[1]
# What a CPU with a given best ISA can also run (an ISA's intrinsics would fault on a CPU without it).
RUNNABLE = {"vnni": ["vnni", "avx2", "generic"], "avx2": ["avx2", "generic"], "generic": ["generic"]}


def test_host_isa_in_process() -> None:
    assert simd.ISA in simd.ISAS
    assert check() == []


@pytest.mark.parametrize("isa", simd.ISAS)
def test_each_isa_equals_int64_arithmetic(isa: str, tmp_path: Path) -> None:
    if isa not in RUNNABLE[simd.host_isa()]:
        pytest.skip(f"this CPU cannot run {isa} instructions")
    env = {**os.environ, "MISTRAL_NEMO_SIMD": isa, "NUMBA_CACHE_DIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-m", "tests.simd_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == f"ok {isa}"


def test_an_unknown_isa_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISTRAL_NEMO_SIMD", "sse9")
    with pytest.raises(ValueError, match="MISTRAL_NEMO_SIMD='sse9'"):
        simd.host_isa()
