"""pytest configuration of the benchmark suite, independent of ``tests/conftest.py``.

``--quick`` shrinks every workload to a short, bounded form (CI runs it) and turns on
generous sanity bounds; without it the workloads have the sizes REQUIREMENTS.md names and
nothing asserts on speed. Each benchmark drives its async workload on its own event loop
(see :mod:`benchmarks.harness`) and adds a one-line summary that is printed at the end.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import DbPaths, Mode, make_runner

_SUMMARY = pytest.StashKey[list[str]]()
_HERE = Path(__file__).parent

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


@pytest.fixture
def runner() -> Iterator[Any]:
    """One event loop for the benchmark (an ``asyncio.Runner``), closed afterwards."""
    with make_runner() as loop_runner:
        yield loop_runner


@pytest.fixture
def db_paths(tmp_path: Path) -> DbPaths:
    """Fresh database paths under the test's tmp_path (one per round)."""
    return DbPaths(tmp_path)


@pytest.fixture
def report(benchmark: Any, pytestconfig: pytest.Config) -> Callable[..., None]:
    """``report(line, **numbers)``: store ``numbers`` in ``benchmark.extra_info`` and add
    ``line`` to the summary printed at the end of the run."""

    def add(line: str, **numbers: Any) -> None:
        benchmark.extra_info.update(numbers)
        pytestconfig.stash[_SUMMARY].append(line)

    return add
