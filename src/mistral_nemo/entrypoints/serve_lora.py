"""`serve --lora NAME=PATH` (repeatable) and vLLM's `--lora-modules NAME=PATH ...`: adapters served
each under its own model name, chosen per request, in the same batches as the base model.

A `--lora PATH` without `NAME=` keeps its meaning in the other commands: merged into the base on load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mistral_nemo.engine.lora_request import LoRARequest


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a LoRA adapter (mistral-finetune's lora.safetensors or checkpoint folder, or a PEFT "
        "folder) as the model NAME; repeatable: requests for each adapter and for the base share batches. "
        "A PATH without NAME= is merged into the base on load instead",
    )
    parser.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="vLLM's spelling of --lora NAME=PATH (several after one flag; vLLM's JSON form "
        '\'{"name": NAME, "path": PATH}\' too)',
    )


def split_lora_arguments(args: argparse.Namespace) -> tuple[str | None, list[LoRARequest]]:
    """(the adapter to merge into the base or None, the named adapters with ids 1, 2, ...).

    Checks what can be checked before loading: NAME=PATH form, paths that exist, names used twice or
    taken by the base model's names. The files themselves are read (and refused by name) at load.
    """
    # Imported here: the server package pulls in fastapi and torch, and the CLI starts without them.
    from mistral_nemo.entrypoints.server.config import NEMO_ALIASES

    merged: list[str] = []
    named: dict[str, str] = {}
    for value in [*args.lora, *[_from_json(v) for v in args.lora_modules]]:
        name, sep, path = value.partition("=")
        if not sep:
            merged.append(value)
            continue
        if not name or not path:
            raise ValueError(f"--lora {value!r}: expected NAME=PATH")
        if name in named:
            raise ValueError(f"--lora: the name {name!r} is given twice")
        if name in args.served_model_name or name in NEMO_ALIASES:
            raise ValueError(f"--lora {name}=...: {name!r} is already the base model's name")
        if not Path(path).expanduser().exists():
            raise ValueError(f"--lora {name}={path}: LoRA adapter not found: {path}")
        named[name] = path
    if len(merged) > 1:
        raise ValueError(
            f"--lora: several adapters without a name ({', '.join(merged)}); serve them as NAME=PATH"
        )
    requests = [LoRARequest(name, i, path) for i, (name, path) in enumerate(named.items(), start=1)]
    return (merged[0] if merged else None), requests


def _from_json(value: str) -> str:
    """vLLM's `--lora-modules '{"name": "sql", "path": "/adapters/sql"}'` as NAME=PATH."""
    if not value.lstrip().startswith("{"):
        return value
    try:
        module = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--lora-modules {value!r}: not JSON ({exc})") from None
    unknown = sorted(set(module) - {"name", "path", "base_model_name"})
    if unknown or not isinstance(module.get("name"), str) or not isinstance(module.get("path"), str):
        raise ValueError(f'--lora-modules {value!r}: expected {{"name": NAME, "path": PATH}}')
    return f"{module['name']}={module['path']}"
