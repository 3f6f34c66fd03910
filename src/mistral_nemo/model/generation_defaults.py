"""The sampling settings a model is meant to run with, for callers whose user names none.

One place decides them, and every caller uses it (`chat`, `generate`, `mistral-chat`, the offline
`LLM` API without SamplingParams, and the server for fields a request leaves out); a setting the user
gives always wins.

- An HF folder's `generation_config.json` (what transformers and vLLM apply): temperature, top_p,
  top_k, min_p, repetition_penalty, max_new_tokens; `do_sample: false` means greedy, as in transformers.
- A NeMo model (a Mistral folder, or any model with a Tekken tokenizer): temperature 0.3, Mistral's
  documented recommendation for NeMo.
- The embedded SmolLM2-135M: greedy. Its first-token distribution is flat (on "What is the capital
  of France?", "The" -1.88 against "L" -1.96), so any sampling temperature answers "L'Étoile, la
  Cité, ..." some of the time; greedy answers the simple factual questions it knows right every time.
- Anything else: OpenAI's defaults (temperature 1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

NEMO_TEMPERATURE = 0.3
GENERATION_CONFIG = "generation_config.json"


class GenerationConfigError(ValueError):
    """generation_config.json is unreadable or holds an impossible value; the message names the file."""


@dataclass(frozen=True)
class GenerationDefaults:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = None  # None: the caller's own default
    source: str = "OpenAI's defaults"  # where these came from, for help texts and notes

    def sampling_fields(self) -> dict[str, Any]:
        """The SamplingParams keyword arguments (max_tokens only when the model names one)."""
        fields = asdict(self)
        del fields["source"]
        if fields["max_tokens"] is None:
            del fields["max_tokens"]
        return fields


OPENAI = GenerationDefaults()
NEMO = GenerationDefaults(temperature=NEMO_TEMPERATURE, source="Mistral's recommendation for NeMo")
EMBEDDED = GenerationDefaults(temperature=0.0, source="greedy: the embedded model's sampled answers drift")


def generation_defaults(kind: str, target: Path, tekken: bool, embedded: bool) -> GenerationDefaults:
    """The defaults of a loaded checkpoint: `kind` as loading.detect_format names it, `target` its file
    or folder, `tekken` whether its tokenizer is Tekken (NeMo's), `embedded` whether it is the
    embedded model."""
    if embedded:
        return EMBEDDED
    folder = target if target.is_dir() else target.parent
    config = folder / GENERATION_CONFIG
    if kind == "hf" and config.is_file():
        from_file = read_generation_config(config)
        if from_file is not None:
            return from_file
    if kind == "mistral" or tekken:
        return NEMO
    return OPENAI


_FIELDS = {  # generation_config.json name -> ours
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def read_generation_config(path: Path) -> GenerationDefaults | None:
    """The sampling settings in an HF generation_config.json; None when it names none."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenerationConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise GenerationConfigError(f"{path} must hold a JSON object")
    values: dict[str, Any] = {}
    for theirs, ours in _FIELDS.items():
        value = config.get(theirs)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GenerationConfigError(f"{path}: {theirs} must be a number, got {value!r}")
        values[ours] = int(value) if ours in ("top_k", "max_tokens") else float(value)
    if config.get("do_sample") is False:
        values["temperature"] = 0.0  # transformers: no sampling means greedy, whatever temperature says
    if not values:
        return None
    if values.get("top_k", 0) < 0:
        values["top_k"] = 0
    return GenerationDefaults(**values, source=str(path))
