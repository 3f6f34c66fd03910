"""mistral-finetune's YAML, read into typed dataclasses.

Every key of mistral-finetune's TrainArgs is read with its default. `wandb` and `mlflow` are accepted
and reported as ignored (metrics go to run_dir/metrics.jsonl and a PNG). Settings this trainer does
not implement are refused by name: `lora.enable: false` (full fine-tuning) and `save_adapters: false`
(use `mistral-nemo lora merge` after training). Any other unknown key is an error, as a typo would be.

One key is this project's own: `quantization` (auto | none | int8 | int4, default auto) chooses how
the frozen base is held (auto keeps GGUF / quantized folders compact: QLoRA). `model_id_or_path`
absent, empty or "embedded" means the embedded SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUANTIZATIONS = ("auto", "none", "int8", "int4")
IGNORED_SECTIONS = ("wandb", "mlflow")


class ConfigError(ValueError):
    """A config key that is missing, misspelt, of the wrong type or not supported."""


@dataclass
class InstructArgs:
    shuffle: bool = True
    dynamic_chunk_fn_call: bool = True


@dataclass
class DataArgs:
    data: str = ""
    instruct_data: str = ""
    eval_instruct_data: str = ""
    shuffle: bool = False
    instruct: InstructArgs = field(default_factory=InstructArgs)


@dataclass
class LoraArgs:
    enable: bool = True
    rank: int = 16
    dropout: float = 0.0
    scaling: float = 2.0


@dataclass
class OptimArgs:
    lr: float = 1e-4
    weight_decay: float = 0.1
    pct_start: float = 0.05


@dataclass
class TrainConfig:
    run_dir: str
    data: DataArgs = field(default_factory=DataArgs)
    model_id_or_path: str | None = None
    optim: OptimArgs = field(default_factory=OptimArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    seed: int = 0
    num_microbatches: int = 1
    seq_len: int = 2048
    batch_size: int = 1
    max_norm: float = 1.0
    max_steps: int = 100
    log_freq: int = 1
    ckpt_freq: int = 0
    save_adapters: bool = True
    no_ckpt: bool = False
    num_ckpt_keep: int | None = 3
    eval_freq: int = 0
    no_eval: bool = True
    checkpoint: bool = True
    quantization: str = "auto"
    ignored: list[str] = field(default_factory=list)  # keys accepted but not acted on (warnings)

    @property
    def model_path(self) -> str | None:
        """None for the embedded model."""
        value = (self.model_id_or_path or "").strip()
        return None if value in ("", "embedded") else value


_EXCLUDED = {"ignored"}


def _check_value(where: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        kind = next(k for k in options if k is not type(None))
    if dataclasses.is_dataclass(kind):
        if value is None:
            return kind()
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys, got {value!r}")
        return _build(kind, value, where + ".")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif kind is str and not isinstance(value, str):
        if value is None:
            return ""
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - _EXCLUDED
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: "
            + ", ".join(prefix + k for k in sorted(known))
        )
    kwargs = {k: _check_value(prefix + k, v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def parse_config(values: Any) -> TrainConfig:
    if not isinstance(values, dict):
        raise ConfigError("the config must be a YAML mapping of keys (run_dir, data, lora, ...)")
    values = dict(values)
    ignored = [k for k in IGNORED_SECTIONS if k in values]
    for key in ignored:
        values.pop(key)
    if "run_dir" not in values or not values["run_dir"]:
        raise ConfigError("run_dir is required: the folder for checkpoints and metrics")
    config: TrainConfig = _build(TrainConfig, values)
    config.ignored = [f"{k} (not supported here; metrics go to run_dir/metrics.jsonl)" for k in ignored]
    _check_semantics(config)
    return config


def _check_semantics(c: TrainConfig) -> None:
    if not c.lora.enable:
        raise ConfigError("lora.enable: false (full fine-tuning) is not supported; only LoRA / QLoRA")
    if not c.save_adapters:
        raise ConfigError(
            "save_adapters: false (saving merged weights) is not supported; keep adapters and run "
            "`mistral-nemo lora merge MODEL ADAPTER OUT` after training"
        )
    if not c.data.data and not c.data.instruct_data:
        raise ConfigError("data.data or data.instruct_data must name some training data")
    if not c.data.instruct.shuffle and c.data.instruct.dynamic_chunk_fn_call:
        raise ConfigError(
            "data.instruct.dynamic_chunk_fn_call needs data.instruct.shuffle: true (as in mistral-finetune)"
        )
    if c.quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {c.quantization!r}")
    positive = ("seq_len", "batch_size", "num_microbatches", "max_steps", "log_freq")
    for name in positive:
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(c, name)}")
    if c.num_ckpt_keep is not None and c.num_ckpt_keep < 1:
        raise ConfigError(f"num_ckpt_keep must be at least 1 (or null: keep all), got {c.num_ckpt_keep}")
    if c.lora.rank < 1 or not c.lora.scaling > 0 or not 0 <= c.lora.dropout < 1:
        raise ConfigError("lora.rank must be >= 1, lora.scaling > 0 and lora.dropout in [0, 1)")
    if not 0 < c.optim.pct_start < 1 or not c.optim.lr > 0 or c.optim.weight_decay < 0:
        raise ConfigError("optim.pct_start must be in (0, 1), optim.lr > 0 and optim.weight_decay >= 0")
    if not c.max_norm > 0:
        raise ConfigError(f"max_norm must be positive, got {c.max_norm}")
    if not c.no_eval and not c.data.eval_instruct_data:
        raise ConfigError("no_eval: false needs data.eval_instruct_data")
    if not c.no_eval and c.eval_freq < 1:
        raise ConfigError("no_eval: false needs eval_freq >= 1")


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML file; relative data paths and run_dir are taken relative to the current folder,
    as mistral-finetune does."""
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading YAML configs needs PyYAML: pip install 'mistral-nemo[finetune]'") from None
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(values)
