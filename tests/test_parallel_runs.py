"""tests/parallel.py under pytest-xdist: a `serial` test runs while no other test runs, the others run
side by side, and each worker's torch pool is its share of the cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each test writes (name, start, end, torch threads) to the log; the serial one also checks that it
# starts after every other test that had started before it ended.
TESTS = """
import json, os, time
import pytest

def _log(name, start):
    import torch
    record = [name, start, time.monotonic(), torch.get_num_threads()]
    with open(os.environ["RUN_LOG"], "a") as f:
        f.write(json.dumps(record) + "\\n")

@pytest.mark.parametrize("i", range(3))
def test_plain(i):
    start = time.monotonic()
    time.sleep(0.3)
    _log(f"plain{i}", start)

@pytest.mark.serial
def test_alone():
    start = time.monotonic()
    time.sleep(0.5)
    _log("serial", start)
"""


def test_a_serial_test_runs_alone_and_the_others_side_by_side(tmp_path: Path) -> None:
    (tmp_path / "test_b.py").write_text(TESTS)
    (tmp_path / "test_c.py").write_text(TESTS.replace('_log(f"plain', '_log(f"c'))
    (tmp_path / "conftest.py").write_text('pytest_plugins = ("tests.parallel",)\n')
    log = tmp_path / "log.jsonl"
    outer = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")  # when this suite itself runs in xdist
    env = {k: v for k, v in os.environ.items() if k not in outer}
    path = os.pathsep.join([str(ROOT), *sys.path])
    # Only xdist among the installed plugins: the workers start in a fraction of the time.
    env = {**env, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "RUN_LOG": str(log), "PYTHONPATH": path}
    options = ["-q", "-p", "no:cacheprovider", "-p", "xdist", "-n", "2", "--dist", "load"]
    command = [sys.executable, "-m", "pytest", *options, "--rootdir", str(tmp_path), "test_b.py", "test_c.py"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 8
    serial = [r for r in records if r[0] == "serial"]
    plain = [r for r in records if r[0] != "serial"]
    for _, start, end, _ in serial:
        assert all(e <= start or s >= end for _, s, e, _ in records if (s, e) != (start, end)), records
    overlapping = [a for a in plain for b in plain if a is not b and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, records  # two workers did run tests at the same time
    assert {r[3] for r in records} == {max(1, len(os.sched_getaffinity(0)) // 2)}
