import contextlib
import fcntl
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

# The suite runs on two pytest-xdist workers (a module's tests stay on one worker, so its
# fixtures are built once), and a test runs alone unless it is marked `untimed`: untimed tests
# may share the CPU with each other, a test whose assertions depend on speed never shares it.
WORKERS = 2
# xdist tells a worker's code through the environment that it is one; the processes that tests
# start (b3, an inner pytest) must not inherit that, or pytest-benchmark disables itself in them
XDIST_WORKER = os.environ.pop("PYTEST_XDIST_WORKER", None)
for _name in ("PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
    os.environ.pop(_name, None)
# what b3 measures once per machine (the CPU's matmul peak) is kept out of the user's ~/.cache
os.environ.setdefault(
    "B3_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"b3-test-cache-{os.getuid()}")
)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Two workers unless -n was given; `-n 0` or `-p no:xdist` runs in one process."""
    if XDIST_WORKER or not config.pluginmanager.has_plugin("xdist"):
        return
    if config.option.numprocesses is None and config.option.dist == "no":
        config.option.numprocesses = WORKERS
        config.option.dist = "loadscope"
    config.option.testrunuid = config.option.testrunuid or uuid.uuid4().hex


def lock_dir(testrunuid: str) -> Path:
    return Path(tempfile.gettempdir()) / f"b3-tests-{testrunuid}"


def pytest_unconfigure(config):
    if not XDIST_WORKER and getattr(config.option, "testrunuid", None):
        shutil.rmtree(lock_dir(config.option.testrunuid), ignore_errors=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "untimed: asserts nothing that depends on speed, so it may run beside another untimed test",
    )


@contextmanager
def cpu_turn(lock_dir, alone: bool):
    """A readers-writer lock over the workers: a test that must run alone waits for the room to
    empty, and holds the gate while it waits, so that no untimed test slips in ahead of it."""
    with open(lock_dir / "b3-gate.lock", "a") as gate, open(lock_dir / "b3-room.lock", "a") as room:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if alone:
            fcntl.flock(room, fcntl.LOCK_EX)
        else:
            fcntl.flock(room, fcntl.LOCK_SH)
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # closing the files releases the locks


def runs_alone(item) -> bool:
    return item.get_closest_marker("untimed") is None


def pytest_collection_modifyitems(items):
    """A module's tests that run alone come last, together, so that a worker waits once per
    module for the other worker's test to end, not once per test (see pytest_runtest_protocol),
    and the module's shared fixtures are built by its untimed tests, beside another test. The
    sort is stable: it keeps the modules' order and each group's."""
    first_of_module: dict = {}
    for index, item in enumerate(items):
        first_of_module.setdefault(item.module, index)
    items.sort(key=lambda item: (first_of_module[item.module], runs_alone(item)))


# the room, held from one test that runs alone to the next on this worker
_turn_alone: contextlib.ExitStack | None = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown (module fixtures included) inside the test's turn. A turn to run
    alone lasts until this worker's next test is not one that runs alone."""
    if XDIST_WORKER is None:
        return (yield)
    shared = lock_dir(item.config.workerinput["testrunuid"])
    shared.mkdir(exist_ok=True)
    if not runs_alone(item):
        with cpu_turn(shared, alone=False), one_thread():
            return (yield)
    global _turn_alone
    if _turn_alone is None:
        _turn_alone = contextlib.ExitStack()
        _turn_alone.enter_context(cpu_turn(shared, alone=True))
    try:
        return (yield)
    finally:
        if nextitem is None or not runs_alone(nextitem):
            _turn_alone.close()
            _turn_alone = None


@contextmanager
def one_thread():
    """An untimed test shares the two cores with another: torch in it, and in the processes it
    starts, gets one thread, so that two tests' OpenMP threads do not spin against each other."""
    saved_env, saved_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
