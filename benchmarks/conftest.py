"""pytest configuration of the benchmark suite, independent of ``tests/conftest.py``.

``--quick`` shrinks every workload to a short, bounded form (CI runs it) and turns on
generous sanity bounds; without it the workloads have the sizes REQUIREMENTS.md names and
nothing asserts on speed. Each benchmark drives its async workload on its own event loop
(see :mod:`benchmarks.harness`) and adds a one-line summary that is printed at the end.

Every benchmark is parametrized by the event loop it runs on (``bench_loop``, shown in its
name: ``test_noop_throughput[gather-uvloop]``): the loop the plugins choose here (uvloop
with the ``uvloop`` extra installed, else asyncio's) and, in full mode with uvloop
installed, also the standard asyncio loop, for comparison. ``--quick`` runs only the
default loop, so CI stays short.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import DbPaths, Mode, make_runner
from miminions import RuntimeConfig
from miminions.kernel.plugins import build_plugin_manager

_SUMMARY = pytest.StashKey[list[str]]()
_LOOPS = pytest.StashKey[list[str]]()
_HERE = Path(__file__).parent

ASYNCIO = "asyncio"
UVLOOP = "uvloop"

QUICK_TIMEOUT_SECONDS = 120
FULL_TIMEOUT_SECONDS = 1800


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("miminions benchmarks")
    group.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="miminions benchmarks: small workloads and generous sanity bounds (CI)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SUMMARY] = []


def default_loop() -> str:
    """The loop ``miminions.run`` would use here: ``uvloop`` when the uvloop extra answers
    ``miminions_loop_factory``, ``asyncio`` for the built-in ``asyncio_loop`` plugin's (or
    none), else the top-level module of the loop class the answer makes."""
    factory = build_plugin_manager().hook.miminions_loop_factory(config=RuntimeConfig())
    if factory is None:
        return ASYNCIO
    loop = factory()
    try:
        return type(loop).__module__.partition(".")[0]
    finally:
        loop.close()


def _loops(config: pytest.Config) -> list[str]:
    """The loops to run every benchmark on (see the module docstring), computed once."""
    if _LOOPS not in config.stash:
        default = default_loop()
        compare = default == UVLOOP and not config.getoption("--quick")
        # The default loop comes first: the forkserver, started by the first process
        # benchmark, then preloads uvloop, so uvloop's worker starts are not charged for
        # importing it (the asyncio rounds do not use it either way).
        config.stash[_LOOPS] = [default, ASYNCIO] if compare else [default]
    return config.stash[_LOOPS]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Module scope: a module's benchmarks run loop by loop, and module-scoped state built
    # on one loop (the status benchmarks' stored runtimes) is rebuilt for the next.
    if "benchmark" in metafunc.fixturenames:
        loops = _loops(metafunc.config)
        metafunc.parametrize("bench_loop", loops, indirect=True, scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Full-size workloads outlast the project's 120 s per-test timeout; give them room.
    if not config.pluginmanager.hasplugin("timeout"):
        return
    seconds = QUICK_TIMEOUT_SECONDS if config.getoption("--quick") else FULL_TIMEOUT_SECONDS
    for item in items:
        if _HERE in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(seconds))


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's table
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_SUMMARY, [])
    if not lines:
        return
    mode = "quick" if config.getoption("--quick") else "full"
    terminalreporter.write_sep("=", f"miminions benchmarks ({mode} mode, medians)")
    for line in lines:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def mode(pytestconfig: pytest.Config) -> Mode:
    """Whether ``--quick`` was given; ``mode.pick(full, quick)`` sizes a workload."""
    return Mode(quick=bool(pytestconfig.getoption("--quick")))


@pytest.fixture(autouse=True)
def _collect_garbage() -> None:
    """Start every benchmark without garbage left over by the previous one."""
    gc.collect()


@pytest.fixture(scope="module")
def bench_loop(request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of the event loop this benchmark runs on (its parameter).

    ``asyncio`` where uvloop is the default hides uvloop (as on a machine without the
    extra): the uvloop plugin is then dormant, so the runtime's loop (``make_runner``) and
    its process agents' workers both run the standard asyncio loop.
    """
    name: str = request.param
    if name != ASYNCIO or default_loop() == ASYNCIO:
        yield name
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "uvloop", None)
        yield name


@pytest.fixture
def runner(bench_loop: str) -> Iterator[asyncio.Runner]:
    """One event loop for the benchmark (an ``asyncio.Runner``) on ``bench_loop``, closed
    afterwards."""
    with make_runner() as loop_runner:
        actual = type(loop_runner.get_loop()).__module__.partition(".")[0]
        if actual != bench_loop:
            pytest.fail(f"benchmark meant for the {bench_loop} loop got a {actual} loop")
        yield loop_runner


@pytest.fixture
def db_paths(tmp_path: Path) -> DbPaths:
    """Fresh database paths under the test's tmp_path (one per round)."""
    return DbPaths(tmp_path)


@pytest.fixture
def report(benchmark: Any, pytestconfig: pytest.Config, bench_loop: str) -> Callable[..., None]:
    """``report(line, **numbers)``: store ``numbers`` (and the loop's name) in
    ``benchmark.extra_info`` and add ``line``, tagged with the loop, to the summary printed
    at the end of the run."""

    def add(line: str, **numbers: Any) -> None:
        benchmark.extra_info.update(numbers, loop=bench_loop)
        pytestconfig.stash[_SUMMARY].append(f"[{bench_loop}] {line}")

    return add
