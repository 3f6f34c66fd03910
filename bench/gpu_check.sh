#!/usr/bin/env bash
# The prepared GPU check (issue 16): one JSON line on stdout, progress on stderr, exit 1 if a check failed.
#   bench/gpu_check.sh                 # on a CUDA machine (about 5-8 minutes on one H100)
#   bench/gpu_check.sh --cpu-smoke     # tiny model on the CPU, seconds: what CI runs
# Other options: bench/gpu_check.sh --help
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [[ -x "$root/.venv/bin/python" && -z "${PYTHON:-}" ]]; then
    python="$root/.venv/bin/python"
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$python" "$root/bench/gpu_check.py" "$@"
