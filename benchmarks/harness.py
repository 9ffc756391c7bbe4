"""Helpers shared by the benchmarks: driving async workloads from pytest-benchmark (which is
synchronous), fresh runtimes on throw-away databases, and percentile arithmetic.

Each benchmark owns one event loop (an :class:`asyncio.Runner`). A round is prepared in
pedantic's ``setup`` (a new runtime on a new database, agents started: not timed), run as
the timed ``target``, and cleaned up (runtime stopped, database deleted) before the next
round is prepared or once the benchmark ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar

from miminions import AgentRuntime, RuntimeConfig, Task, TaskStatus
from miminions.kernel.plugins import ENTRY_POINT_GROUP, build_plugin_manager

_S = TypeVar("_S")
_T = TypeVar("_T")
_R = TypeVar("_R")
_M = TypeVar("_M")


def make_runner() -> asyncio.Runner:
    """An event loop runner on the loop the plugins ask for, as ``miminions.run`` uses."""
    factory = build_plugin_manager().hook.miminions_loop_factory(config=RuntimeConfig())
    return asyncio.Runner(loop_factory=factory)


@dataclass(frozen=True)
class Mode:
    """Full or quick workloads."""

    quick: bool

    def pick(self, full: _T, quick: _T) -> _T:
        """``quick`` in quick mode, else ``full``."""
        return quick if self.quick else full


# ---------------------------------------------------------------------- runtimes
#: The monitoring extras installed here (``nox -s bench`` installs them all): the benchmarks
#: measure the runtime itself, so they run without them. The uvloop extra stays: the loop
#: is a benchmark parameter (see conftest.py).
INSTRUMENTING_EXTRAS = sorted(
    {"prometheus", "otel"} & {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
)


@dataclass
class BenchRuntime:
    """A started runtime with its started agents and the database it writes to."""

    rt: AgentRuntime
    path: Path
    agent_ids: list[str] = field(default_factory=list)


async def open_runtime(
    path: Path,
    *,
    agent: object | None = None,
    agents: int = 0,
    agent_config: dict[str, Any] | None = None,
    **config: Any,
) -> BenchRuntime:
    """Start a runtime on ``path`` and register and start ``agents`` inline agents of
    ``agent``. ``config`` overrides :class:`RuntimeConfig` fields (defaults otherwise: a
    durable SQLite store with task events recorded)."""
    limits = config.pop("limits", None)
    values: dict[str, Any] = {"storage_path": str(path), **config}
    if limits is not None:
        values["limits"] = limits
    rt = AgentRuntime(config=RuntimeConfig(**values), disable=INSTRUMENTING_EXTRAS)
    await rt.start()
    bench = BenchRuntime(rt=rt, path=path)
    try:
        for index in range(agents):
            agent_id = await rt.register_agent(
                f"bench-{index}", agent, config=agent_config or {}, isolation="inline"
            )
            await rt.start_agent(agent_id)
            bench.agent_ids.append(agent_id)
    except BaseException:
        await rt.stop()
        raise
    return bench


async def close_runtime(bench: BenchRuntime, *, delete: bool = True) -> None:
    """Stop the runtime and (by default) delete its database files."""
    try:
        await bench.rt.stop()
    finally:
        if delete:
            delete_database(bench.path)


def delete_database(path: Path) -> None:
    """Remove a SQLite database and its WAL/SHM/journal files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


class DbPaths:
    """Hands out fresh database paths under one directory."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._count = 0

    def __call__(self, label: str = "bench") -> Path:
        self._count += 1
        return self._dir / f"{label}-{self._count}.db"


# ---------------------------------------------------------------------- rounds
def run_async_rounds(
    benchmark: Any,
    runner: asyncio.Runner,
    *,
    prepare: Callable[[], Awaitable[_S]],
    measure: Callable[[_S], Awaitable[_M]],
    digest: Callable[[_M], _R],
    cleanup: Callable[[_S], Awaitable[None]],
    rounds: int,
    warmup_rounds: int = 0,
) -> list[_R]:
    """Time ``measure(state)`` in ``rounds`` pedantic rounds, each on a fresh state.

    ``prepare``, ``digest`` and ``cleanup`` are not timed. ``digest`` turns what ``measure``
    returned into the (small) numbers to keep: the raw result of a round (thousands of task
    objects) is dropped before the next round starts, so it neither piles up in memory nor
    slows later rounds' garbage collections. Returns the digests of the timed rounds
    (warm-up rounds left out). A ``gc.collect()`` runs before each round.
    """
    live: list[_S] = []
    raw: list[_M] = []
    results: list[_R] = []

    def settle() -> None:
        while raw:
            results.append(digest(raw.pop()))
        while live:
            runner.run(cleanup(live.pop()))
        gc.collect()

    def setup() -> tuple[tuple[_S], dict[str, Any]]:
        settle()
        state = runner.run(prepare())
        live.append(state)
        gc.collect()
        return (state,), {}

    def target(state: _S) -> None:
        raw.append(runner.run(measure(state)))

    try:
        benchmark.pedantic(
            target, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1
        )
    finally:
        settle()
    return results[warmup_rounds:]


class GcMeter:
    """Time spent in, and collections per generation of, Python's cyclic garbage collector
    while the meter is entered (``with GcMeter() as gc_meter: ...``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def time_calls(
    benchmark: Any,
    call: Callable[[Any], object],
    args: Sequence[Any],
    *,
    rounds: int,
    warmup_rounds: int,
    before: Callable[[], object] | None = None,
) -> list[int]:
    """Time ``call(arg)`` once per round with ``perf_counter_ns``, cycling through ``args``;
    ``before()`` (not timed) runs ahead of each round when given.

    pytest-benchmark keeps its own per-round timing for its table; the returned list holds
    the nanoseconds of each timed round (warm-up left out) for percentiles.
    """
    samples: list[int] = []
    ns = time.perf_counter_ns
    position = 0

    def setup() -> None:
        if before is not None:
            before()

    def target() -> None:
        nonlocal position
        arg = args[position % len(args)]
        position += 1
        start = ns()
        call(arg)
        samples.append(ns() - start)

    benchmark.pedantic(
        target,
        setup=setup if before is not None else None,
        rounds=rounds,
        warmup_rounds=warmup_rounds,
        iterations=1,
    )
    return samples[warmup_rounds:]


# ---------------------------------------------------------------------- statistics
def percentile(values: Iterable[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def latency_summary(values: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max of ``values`` (whatever unit they are in)."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


def median(values: Iterable[float]) -> float:
    """The median of ``values``."""
    return statistics.median(list(values))


# ---------------------------------------------------------------------- throughput rounds
def task_outcomes(tasks: Iterable[Task]) -> tuple[list[float], dict[str, int]]:
    """The submit -> completed latency (ms) of each completed task, and how many tasks
    ended otherwise, by status."""
    latencies: list[float] = []
    not_completed: dict[str, int] = {}
    for task in tasks:
        if task.status is TaskStatus.COMPLETED and task.completed_at is not None:
            latencies.append((task.completed_at - task.created_at).total_seconds() * 1000)
        else:
            not_completed[task.status.value] = not_completed.get(task.status.value, 0) + 1
    return latencies, not_completed


class ThroughputRound(Protocol):
    """What a throughput benchmark records of one round."""

    seconds: float
    submit_seconds: float
    latencies_ms: list[float]
    not_completed: dict[str, int]


@dataclass(frozen=True)
class Throughput:
    """Tasks per second over the rounds (each, and their median), the submit phase's
    median rate, and the latency percentiles of every task of every round (ms)."""

    rates: list[float]
    rate: float
    submit_rate: float
    latencies: dict[str, float]

    def describe(self, target: float) -> str:
        """The rates and latencies in words, against ``target`` tasks/s."""
        verdict = "meets" if self.rate >= target else "below"
        lat = self.latencies
        return (
            f"median {self.rate:,.0f} tasks/s ({verdict} target {target:,}); submit phase "
            f"{self.submit_rate:,.0f} tasks/s; submit->completed latency p50 {lat['p50']:.0f} "
            f"/ p95 {lat['p95']:.0f} / p99 {lat['p99']:.0f} ms"
        )

    def fields(self, target: float) -> dict[str, Any]:
        """The same numbers as ``extra_info`` fields."""
        return {
            "tasks_per_second_median": round(self.rate, 1),
            "tasks_per_second_rounds": [round(r, 1) for r in self.rates],
            "submit_tasks_per_second_median": round(self.submit_rate, 1),
            "latency_ms_p50": round(self.latencies["p50"], 3),
            "latency_ms_p95": round(self.latencies["p95"], 3),
            "latency_ms_p99": round(self.latencies["p99"], 3),
            "target_tasks_per_second": target,
        }


def throughput(results: Sequence[ThroughputRound], n: int) -> Throughput:
    """Check that every round completed its ``n`` tasks; summarise the rounds."""
    for result in results:
        assert not result.not_completed, f"tasks did not complete: {result.not_completed}"
        assert len(result.latencies_ms) == n
    rates = [n / r.seconds for r in results]
    return Throughput(
        rates,
        median(rates),
        median(n / r.submit_seconds for r in results),
        latency_summary(ms for r in results for ms in r.latencies_ms),
    )
