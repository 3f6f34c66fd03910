"""`mistral-nemo serve --replicas N`: N engine replicas on Ray Serve behind one OpenAI-compatible endpoint.

Needs the optional `ray` extra (`pip install 'mistral-nemo[ray]'`); without it `--replicas` says so.
"""

from __future__ import annotations

import argparse

INSTALL_HINT = "pip install 'mistral-nemo[ray]' (or pip install 'ray[serve]')"


def run_replicas(args: argparse.Namespace) -> int:
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--replicas needs Ray Serve, which is not installed: {INSTALL_HINT}") from exc
    from mistral_nemo.entrypoints.replicas.launch import run_replicas as run

    return run(args)


__all__ = ["INSTALL_HINT", "run_replicas"]
