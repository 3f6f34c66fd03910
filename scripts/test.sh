#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-browser.sh  # chromium + chromedriver for the web page test
.venv/bin/ruff check src tests bench
# Two processes, a file each at a time, the slowest files first (tests/parallel.py); -n 0 runs in one.
.venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
