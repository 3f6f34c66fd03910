#!/usr/bin/env bash
# Installs what tests/test_web_page.py needs: Debian's chromium + chromedriver (apt, as root or
# via sudo) and selenium in .venv. Safe to run again. Without them that test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi
if [ -x .venv/bin/python ]; then
    .venv/bin/python -m pip install --quiet "selenium>=4.20"
fi
chromium --version
chromedriver --version
