"""Quantizing on load (and `mistral-nemo quantize`) holds the compact model plus one float tensor: the
peak stays well below the float weights' size (NeMo 12B bf16 -> int8 must fit in 24 GB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_load_memory import write_folder

MEASURE = r"""
import sys, torch
from pathlib import Path
from mistral_nemo.model.quant.convert import quantize_checkpoint
from mistral_nemo.model.loading import load
from mistral_nemo.model.quant import Int4Linear, Int8Linear

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

for cls in (Int8Linear, Int4Linear):  # numba and its compiled kernels are not the weights: before the reset
    layer = cls.from_float(torch.randn(64, 64))
    layer(torch.randn(1, 64)), layer(torch.randn(40, 64))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
before = status("VmRSS:")
job, mode = sys.argv[2], sys.argv[3]
if job == "load":
    loaded = load(sys.argv[1], dtype=torch.float32, device="cpu", quantization=mode)
    loaded.model.logits(torch.arange(8))  # touch every weight once
else:
    quantize_checkpoint(Path(sys.argv[1]), Path(sys.argv[4]), mode)
print(status("VmHWM:") - before)
"""


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory) -> tuple[Path, int]:
    folder = tmp_path_factory.mktemp("memory") / "model"
    return folder, write_folder(folder)  # ~360 MB of float32 weights (zeros)


def peak_growth(*args: str | Path) -> int:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


def test_int8_load_peak_is_well_below_the_float_size(float_folder: tuple[Path, int]) -> None:
    folder, weights = float_folder
    int8 = peak_growth(folder, "load", "int8")
    floats = peak_growth(folder, "load", "none")
    # Measured (fp32 folder of 360 MB; int8 model 103 MB, float32 embedding included): float load
    # +470 MB, int8 load +200 MB. Quantizing after a float load, or keeping the file pages of the
    # quantized layers mapped, peaks above the float load (+520 MB measured before the pages were dropped).
    assert int8 < 0.75 * weights, f"int8 load peaked at +{int8 / 1e6:.0f} MB for {weights / 1e6:.0f} MB"
    assert int8 < floats - 0.5 * weights, f"int8 +{int8 / 1e6:.0f} MB vs float +{floats / 1e6:.0f} MB"


def test_quantize_command_peak_is_well_below_the_float_size(
    float_folder: tuple[Path, int], tmp_path: Path
) -> None:
    folder, weights = float_folder
    growth = peak_growth(folder, "quantize", "int8", tmp_path / "int8")
    # Measured +185 MB (the gathered int8 tensors are written from their own memory, no second copy).
    assert growth < 0.75 * weights, f"quantize peaked at +{growth / 1e6:.0f} MB for {weights / 1e6:.0f} MB"
