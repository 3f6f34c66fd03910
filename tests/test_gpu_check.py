"""bench/gpu_check.sh --cpu-smoke: the prepared GPU check's CPU-side parts, run as CI runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mistral_nemo.model.args import ModelArgs

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=240, env=_env(), cwd=ROOT
    )


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHON"] = sys.executable  # the interpreter running the tests, whatever venv it is
    return env


@pytest.fixture(scope="module")
def smoke() -> dict:
    proc = _run("--cpu-smoke")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout + proc.stderr
    result = json.loads(lines[0])
    assert proc.returncode == 0, (result, proc.stderr[-2000:])
    return result


def test_fidelity_within_stated_tolerances(smoke: dict) -> None:
    fid = smoke["fidelity"]
    assert "error" not in fid, fid
    bf16 = fid["bf16_vs_fp32"]
    assert bf16["pass"] and bf16["rel_l2"] <= bf16["tol_rel_l2"] == 0.05
    assert bf16["rel_l2"] > 0  # the bf16 side really ran in bf16, not a copy of the fp32 logits
    assert bf16["top1_agree"] >= 0.9
    fp8 = fid["fp8"]
    linear = fp8["linear_w8a8"]
    if "skipped" in linear:  # a torch without CPU _scaled_mm: the reason is given
        assert "_scaled_mm" in linear["skipped"]
    else:
        assert linear["pass"] and 0 < linear["rel_l2"] <= linear["tol_rel_l2"]
    model = fp8["model_vs_bf16"]
    assert model["pass"] and model["rel_l2"] <= model["tol_rel_l2"]
    # FP8 weights lose more than bf16 rounding does: the quantized layers were the ones that ran.
    assert fp8["model_vs_fp32"]["rel_l2"] > bf16["rel_l2"]
    assert fp8["forward_path"].startswith("cpu weight-only")


def test_paged_decode_step_matches_full_forward_and_graph_is_skipped_on_cpu(smoke: dict) -> None:
    step = smoke["decode_step"]
    assert "error" not in step, step
    paged = step["paged_vs_full_forward"]
    assert paged["pass"] and paged["rel_l2"] <= paged["tol_rel_l2"] == 0.05
    assert paged["top1_agree"] == 1.0
    assert step["cuda_graph"] == {"skipped": "no CUDA device (--cpu-smoke)"}
    assert smoke["cpu_smoke"] is True and smoke["device"].startswith("cpu")


def test_decode_fields_are_consistent(smoke: dict) -> None:
    dec = smoke["decode"]
    assert "error" not in dec, dec
    small = ModelArgs(
        dim=320, n_layers=2, head_dim=64, hidden_dim=640, n_heads=8, n_kv_heads=2, vocab_size=4096
    )
    # bf16 bytes read per step: every weight once, the embedding one row (+ RoPE's 32 fp32 frequencies).
    bf16_bytes = 2 * (small.num_parameters() - small.vocab_size * small.dim + small.dim)
    assert dec["transformers_bf16"]["weight_bytes_per_step"] == bf16_bytes
    assert dec["ours_bf16"]["weight_bytes_per_step"] == bf16_bytes + 32 * 4
    # FP8: one byte per linear weight plus a float32 scale per row, so a bit over half of bf16.
    assert 0.5 < dec["ours_fp8"]["weight_bytes_per_step"] / bf16_bytes < 0.55
    for side in ("ours_bf16", "ours_fp8", "transformers_bf16"):
        for batch in (1, 2):
            entry = dec[side][f"b{batch}"]
            assert entry["tok_s"] > 0
            assert entry["steps_s"] == pytest.approx(entry["tok_s"] / batch, rel=1e-3)
            gb_s = dec[side]["weight_bytes_per_step"] * entry["steps_s"] / 1e9
            assert entry["hbm_gb_s"] == pytest.approx(gb_s, rel=1e-3)
            assert entry["share_of_peak"] == pytest.approx(gb_s / (dec["peak_tb_s"] * 1e3), rel=1e-3)
    assert smoke["ok"] is True


def test_without_cuda_the_full_check_refuses_clearly() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the full check would run (minutes)")
    proc = _run()
    assert proc.returncode == 2 and proc.stdout == ""
    assert "no CUDA device" in proc.stderr and "--cpu-smoke" in proc.stderr


def test_bad_flags_are_refused_by_name() -> None:
    proc = _run("--cpu-smoke", "--batches", "1,x")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--batches takes comma-separated integers, got '1,x'" in proc.stderr
