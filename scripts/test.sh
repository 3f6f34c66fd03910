#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-browser.sh  # chromium + chromedriver for the web page test
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest "$@"
