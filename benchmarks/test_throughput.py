"""P-01: end-to-end no-op task throughput with inline agents on the durable SQLite store.

N no-op tasks are submitted to a fresh runtime (default config: durable SQLite, task events
recorded) with 4 inline no-op agents running, then every task is awaited (which returns
once the completion is committed). A round is timed from the first submit to the last
completion; runtime start and stop are not timed. Three ways: many concurrent
``submit_task`` calls then as many ``wait_for_task`` calls (``asyncio.gather``); one
``submit_tasks`` batch then ``wait_for_task`` calls; one ``submit_tasks`` batch then one
``wait_for_tasks`` call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from benchmarks.agents import NoOpAgent
from benchmarks.harness import (
    BenchRuntime,
    DbPaths,
    GcMeter,
    Mode,
    close_runtime,
    median,
    open_runtime,
    run_async_rounds,
    task_outcomes,
    throughput,
)
from miminions import Task, TaskRequest

AGENTS = 4
TARGET_TASKS_PER_SECOND = 20_000  # P-01, in-process agents
QUICK_MIN_TASKS_PER_SECOND = 1_000  # quick-mode sanity bound


@dataclass
class RawRound:
    seconds: float
    submit_seconds: float
    tasks: list[Task]
    gc: GcMeter


@dataclass
class RoundResult:
    seconds: float
    submit_seconds: float
    latencies_ms: list[float]  # created_at -> completed_at of each task
    not_completed: dict[str, int]
    gc_seconds: float
    gc_collections: list[int]


def _digest(raw: RawRound) -> RoundResult:
    latencies, not_completed = task_outcomes(raw.tasks)
    return RoundResult(
        raw.seconds,
        raw.submit_seconds,
        latencies,
        not_completed,
        raw.gc.seconds,
        raw.gc.collections,
    )


async def _submit_each(bench: BenchRuntime, n: int, _requests: object) -> list[str]:
    rt = bench.rt
    return list(await asyncio.gather(*(rt.submit_task("noop") for _ in range(n))))


async def _submit_batch(bench: BenchRuntime, _n: int, requests: list[TaskRequest]) -> list[str]:
    return await bench.rt.submit_tasks(requests)


async def _wait_each(bench: BenchRuntime, ids: list[str]) -> list[Task]:
    return list(await asyncio.gather(*(bench.rt.wait_for_task(task_id) for task_id in ids)))


async def _wait_batch(bench: BenchRuntime, ids: list[str]) -> list[Task]:
    return await bench.rt.wait_for_tasks(ids)


VARIANTS: dict[str, tuple[str, Callable[..., Any], Callable[..., Any]]] = {
    "gather": ("concurrent submit_task calls (asyncio.gather)", _submit_each, _wait_each),
    "batch": ("one submit_tasks batch", _submit_batch, _wait_each),
    "batch-wait": (
        "one submit_tasks batch, one wait_for_tasks",
        _submit_batch,
        _wait_batch,
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_noop_throughput(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
    variant: str,
) -> None:
    """P-01: no-op tasks submit -> completed per second, inline agents, durable SQLite."""
    n = mode.pick(20_000, 2_000)
    rounds = mode.pick(5, 3)
    warmup = mode.pick(1, 0)
    label, submit, wait = VARIANTS[variant]

    async def prepare() -> tuple[BenchRuntime, list[TaskRequest] | None]:
        bench = await open_runtime(db_paths("throughput"), agent=NoOpAgent, agents=AGENTS)
        # Building the request objects is the caller's work, not the runtime's.
        batch = variant.startswith("batch")
        requests = [TaskRequest(name="noop") for _ in range(n)] if batch else None
        return bench, requests

    async def measure(state: tuple[BenchRuntime, list[TaskRequest] | None]) -> RawRound:
        bench, requests = state
        with GcMeter() as gc_meter:
            start = time.perf_counter()
            ids = await submit(bench, n, requests)
            submitted = time.perf_counter()
            tasks = await wait(bench, ids)
            end = time.perf_counter()
        return RawRound(end - start, submitted - start, list(tasks), gc_meter)

    async def cleanup(state: tuple[BenchRuntime, list[TaskRequest] | None]) -> None:
        await close_runtime(state[0])

    results = run_async_rounds(
        benchmark,
        runner,
        prepare=prepare,
        measure=measure,
        digest=_digest,
        cleanup=cleanup,
        rounds=rounds,
        warmup_rounds=warmup,
    )

    summary = throughput(results, n)
    gc_share = median(r.gc_seconds / r.seconds for r in results)
    gc_full = median(r.gc_collections[2] for r in results)
    report(
        f"P-01 throughput, {label}: {n:,} no-op tasks x {rounds} rounds, {AGENTS} inline "
        f"agents: {summary.describe(TARGET_TASKS_PER_SECOND)}; cyclic GC {gc_share:.0%} of "
        f"the time ({gc_full:.0f} full collections per round)",
        tasks=n,
        agents=AGENTS,
        rounds=rounds,
        **summary.fields(TARGET_TASKS_PER_SECOND),
        gc_share_of_time_median=round(gc_share, 4),
        gc_seconds_rounds=[round(r.gc_seconds, 4) for r in results],
        gc_full_collections_median=gc_full,
    )
    if mode.quick:
        assert summary.rate > QUICK_MIN_TASKS_PER_SECOND, (
            f"no-op throughput {summary.rate:,.0f} tasks/s is below the quick sanity bound "
            f"of {QUICK_MIN_TASKS_PER_SECOND:,} tasks/s"
        )
