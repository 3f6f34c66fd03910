"""`mistral-nemo download`: fetch a Mistral-format model folder from the Hugging Face hub."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MISTRAL_FILES = ["params.json", "consolidated.safetensors", "tekken.json"]


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "download",
        help="download params.json, consolidated.safetensors and tekken.json of a model",
        description="Example: mistral-nemo download mistralai/Mistral-Nemo-Instruct-2407",
    )
    parser.add_argument("repo_id", help="e.g. mistralai/Mistral-Nemo-Instruct-2407")
    parser.add_argument("dir", nargs="?", type=Path, help="target folder (default: ~/mistral_models/NAME)")
    parser.add_argument("--token", help="Hugging Face token (gated repos); default: HF_TOKEN / cached login")
    parser.add_argument("--revision", help="branch, tag or commit")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target = args.dir or Path.home() / "mistral_models" / args.repo_id.split("/")[-1]
    target.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {', '.join(MISTRAL_FILES)} of {args.repo_id} into {target}", file=sys.stderr)
    try:
        snapshot_download(
            repo_id=args.repo_id,
            allow_patterns=MISTRAL_FILES,
            local_dir=target,
            token=args.token,
            revision=args.revision,
        )
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise OSError(f"could not download {args.repo_id}: {str(exc).splitlines()[0]}") from None
    missing = [name for name in MISTRAL_FILES if not (target / name).is_file()]
    if missing:
        raise OSError(f"{args.repo_id} has no {', '.join(missing)}: it is not a Mistral-format repository")
    print(target)
    return 0
