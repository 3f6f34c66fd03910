"""The suite in several processes (pytest-xdist; scripts/test.sh passes `-n 2`): each worker's share
of the cores, the `serial` mark, and the order in which files are handed out.

- Threads: a worker sizes torch's pool (and so numba's, model/loading.py) to its share of the cores,
  and so do the subprocesses it starts (servers, ranks, the CLI), so two workers do not each run
  pools as wide as the machine. On 2 cores each has one thread: the kernels' parallel loops then run
  on one thread; `-n 0` runs the suite in one process with every core.
- `@pytest.mark.serial`: the test (its fixtures' setup and teardown included) runs while no other
  test runs in any worker, for tests that assert timing ratios a busy neighbour would skew. A shared
  lock per run: every test holds it shared, a serial test exclusive; a serial test waiting for it
  stops new tests from starting (a second lock), so it cannot be starved.
- Order: files are handed out whole (`--dist loadfile`: a module's fixtures are built once), the
  slowest first, so that no worker starts a long file while the other has nothing left to do.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

# Whole-file wall times of a serial run (--durations), longest first; the rest keep their order.
SLOWEST_FILES = (
    "test_readme.py",
    "test_speculative_engine.py",
    "test_embedded_model.py",
    "test_finetune_train.py",
    "test_eval_equality.py",
    "test_lora.py",
    "test_tensor_parallel.py",
    "test_cli_model.py",
    "test_quantize_checkpoint.py",
    "test_engine.py",
    "test_server_replicas.py",
    "test_speculative_rule.py",
)

_LOCK_DIR = "serial_lock_dir"  # the controller's key in each worker's workerinput
_lock_dir_key = pytest.StashKey[Path]()  # the controller's folder of the run's two lock files


def worker_count() -> int:
    """How many test processes share this machine (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def threads_per_worker() -> int:
    return max(1, len(os.sched_getaffinity(0)) // worker_count())


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        import torch

        threads = threads_per_worker()
        torch.set_num_threads(threads)
        # And the processes the tests start: a pool wider than a worker's share makes OpenMP's threads
        # wait on each other (beside one busy process, 2-thread tests ran 2-5x slower than alone).
        os.environ.update(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    elif config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None):
        config.stash[_lock_dir_key] = Path(tempfile.mkdtemp(prefix="mistral-nemo-serial-"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # xdist's WorkerController
    """On the controller, for each worker: where the run's locks are."""
    node.workerinput[_LOCK_DIR] = str(node.config.stash[_lock_dir_key])


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_lock_dir_key, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # one process: collection order
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[IO[bytes]]:
    with path.open("ab") as file:
        fcntl.flock(file, mode)
        try:
            yield file
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


@contextmanager
def _turn(folder: Path, serial: bool) -> Iterator[None]:
    """Shared use of the machine, or (serial) sole use; a serial test waiting holds `gate`, so no test
    starts until it has had its turn."""
    gate, machine = folder / "gate", folder / "machine"
    if serial:
        with _flock(gate, fcntl.LOCK_EX), _flock(machine, fcntl.LOCK_EX):
            yield
        return
    with _flock(gate, fcntl.LOCK_SH):
        held = machine.open("ab")
        fcntl.flock(held, fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(held, fcntl.LOCK_UN)
        held.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    folder = getattr(item.config, "workerinput", {}).get(_LOCK_DIR)
    if folder is None:  # one process: nothing runs beside it
        return (yield)
    with _turn(Path(folder), serial=item.get_closest_marker("serial") is not None):
        return (yield)
