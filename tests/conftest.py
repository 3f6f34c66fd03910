"""Shared fixtures: NeMo's own Tekken file (shipped inside mistral_common) and the reference tokenizers."""

from __future__ import annotations

import sys
from pathlib import Path

import mistral_common
import pytest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from mistral_nemo.tokenizer import TekkenTokenizer, load_tokenizer

pytest_plugins = ("tests.parallel",)  # running under pytest-xdist

NEMO_TEKKEN = Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"


@pytest.fixture(scope="session")
def tekken_path() -> Path:
    """tekken_240718.json: the tokenizer of Mistral-Nemo-Base/Instruct-2407."""
    assert NEMO_TEKKEN.is_file(), NEMO_TEKKEN
    return NEMO_TEKKEN


@pytest.fixture(scope="session")
def tekken(tekken_path: Path) -> TekkenTokenizer:
    return load_tokenizer(tekken_path)


@pytest.fixture(scope="session")
def reference(tekken_path: Path) -> MistralTokenizer:
    """mistral_common's tokenizer in serving mode: the rules a server must apply."""
    return MistralTokenizer.from_file(str(tekken_path), mode=ValidationMode.serving)


def console_script(name: str) -> str:
    """The installed console script beside this Python (the venv's bin/, activated or not)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed beside {sys.executable}: run scripts/setup.sh"
    return str(path)


@pytest.fixture(scope="session")
def smollm2_loaded():
    """The embedded SmolLM2-135M-Instruct GGUF, loaded once for the whole session (as `load()` does)."""
    import torch

    from mistral_nemo.model.loading import load
    from tests.gguf_fixture import smollm2_gguf_path

    return load(smollm2_gguf_path(), dtype=torch.float32, device="cpu")
