"""P-05: capacity with I/O-bound agents (plan SC-009 and SC-002).

10 inline agents each work through 1,000 tasks (quick: 50) of a 10 ms ``asyncio.sleep``:
the ideal is 1,000 x 10 ms = 10 s, and the runtime should finish within 5% of it. The ratio
actual/ideal is reported with the runtime's cost per task it implies, next to two asyncio
floors: 10 bare coroutines sleeping 10 ms in a loop, which show how much of the gap is the
event loop's timer rather than the runtime. *In step*, the coroutines start together, so
their timers expire together and one loop wake-up serves all ten; *staggered*, they start
1 ms apart (spread over one sleep period), as real agents drift apart, and each sleep pays
on its own for the loop's timer granularity (asyncio's selector waits whole milliseconds,
rounded up), so the staggered floor is the fairer one to set beside the runtime's ratio.

The tasks are submitted in one ``submit_tasks`` batch and awaited two ways, as in P-01:
``batch-wait``, one ``wait_for_tasks`` call (the target's figure: how long the work
takes), and ``batch``, a ``wait_for_task`` call per task gathered with ``asyncio.gather``.
Creating those 10,000 waits (an asyncio task each) holds the loop for about a tenth of a
second right after the submit, which the agents' first sleeps pay for.

"100 prioritised tasks": 100 tasks of random priority 0..100, one ``submit_tasks`` batch,
10 agents, 10 ms each (ideal 0.1 s): the total time is reported, and the order the tasks
started in is checked against their priorities (F-03).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import pytest

from benchmarks.agents import SleepAgent
from benchmarks.harness import (
    BenchRuntime,
    DbPaths,
    GcMeter,
    Mode,
    close_runtime,
    median,
    open_runtime,
    run_async_rounds,
)
from miminions import Task, TaskRequest, TaskStatus

AGENTS = 10
SLEEP_SECONDS = 0.01
TARGET_RATIO = 1.05  # P-05: within 5% of ideal
QUICK_RATIO_BOUND = 1.5  # quick-mode sanity bound
QUICK_PRIORITISED_BOUND_SECONDS = 10.0  # "far under a minute"
FLOOR_SLEEPS_MAX = 100  # the asyncio floor needs no more sleeps per worker than this


@dataclass
class RawRound:
    seconds: float
    tasks: list[Task]
    gc: GcMeter


@dataclass
class RoundResult:
    seconds: float
    tasks: int
    not_completed: dict[str, int]
    priority_order_violations: int
    gc_seconds: float


def _digest(raw: RawRound) -> RoundResult:
    not_completed: dict[str, int] = {}
    for task in raw.tasks:
        if task.status is not TaskStatus.COMPLETED:
            not_completed[task.status.value] = not_completed.get(task.status.value, 0) + 1
    return RoundResult(
        raw.seconds,
        len(raw.tasks),
        not_completed,
        _priority_order_violations(raw.tasks),
        raw.gc.seconds,
    )


async def _prepare(db_paths: DbPaths, label: str, requests: list[TaskRequest]) -> Any:
    bench = await open_runtime(
        db_paths(label),
        agent=SleepAgent,
        agents=AGENTS,
        agent_config={"sleep_seconds": SLEEP_SECONDS},
    )
    return bench, requests


async def _measure(state: tuple[BenchRuntime, list[TaskRequest]]) -> RawRound:
    """One batch, a ``wait_for_task`` per task."""
    bench, requests = state
    with GcMeter() as gc_meter:
        start = time.perf_counter()
        ids = await bench.rt.submit_tasks(requests)
        tasks = await asyncio.gather(*(bench.rt.wait_for_task(task_id) for task_id in ids))
        seconds = time.perf_counter() - start
    return RawRound(seconds, list(tasks), gc_meter)


async def _measure_batch_wait(state: tuple[BenchRuntime, list[TaskRequest]]) -> RawRound:
    """One batch, one ``wait_for_tasks``."""
    bench, requests = state
    with GcMeter() as gc_meter:
        start = time.perf_counter()
        ids = await bench.rt.submit_tasks(requests)
        tasks = await bench.rt.wait_for_tasks(ids)
        seconds = time.perf_counter() - start
    return RawRound(seconds, list(tasks), gc_meter)


#: How a capacity round waits for its tasks: (what the report calls it, the measure).
WAITS: dict[str, tuple[str, Callable[..., Any]]] = {
    "batch-wait": ("one wait_for_tasks", _measure_batch_wait),
    "batch": ("a wait_for_task per task", _measure),
}


async def _cleanup(state: tuple[BenchRuntime, list[TaskRequest]]) -> None:
    await close_runtime(state[0])


def _check_completed(results: list[RoundResult], n: int) -> None:
    for result in results:
        assert result.tasks == n
        assert not result.not_completed, f"tasks did not complete: {result.not_completed}"


async def _asyncio_floor(workers: int, sleeps: int) -> float:
    """Seconds for ``workers`` coroutines to each await ``sleeps`` sleeps of 10 ms."""

    async def worker() -> None:
        for _ in range(sleeps):
            await asyncio.sleep(SLEEP_SECONDS)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - start


async def _asyncio_floor_staggered(workers: int, sleeps: int) -> float:
    """Seconds for the slowest of ``workers`` coroutines to await ``sleeps`` sleeps of
    10 ms, worker ``i`` starting ``i * SLEEP_SECONDS / workers`` after the first (spread
    evenly over one sleep period); each is timed from its own start to its own end."""
    offset = SLEEP_SECONDS / workers

    async def worker(index: int) -> float:
        await asyncio.sleep(index * offset)
        start = time.perf_counter()
        for _ in range(sleeps):
            await asyncio.sleep(SLEEP_SECONDS)
        return time.perf_counter() - start

    return max(await asyncio.gather(*(worker(index) for index in range(workers))))


@pytest.mark.parametrize("variant", list(WAITS))
def test_capacity_sleep_tasks(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
    variant: str,
) -> None:
    """P-05: 10 agents x 1,000 tasks of 10 ms sleep within 5% of the ideal 10 s."""
    wait_label, measure = WAITS[variant]
    per_agent = mode.pick(1_000, 50)
    rounds = mode.pick(3, 3)
    n = AGENTS * per_agent
    ideal = per_agent * SLEEP_SECONDS

    floor_sleeps = min(per_agent, FLOOR_SLEEPS_MAX)
    floor_ideal = floor_sleeps * SLEEP_SECONDS
    floor_ratio = runner.run(_asyncio_floor(AGENTS, floor_sleeps)) / floor_ideal
    staggered_ratio = runner.run(_asyncio_floor_staggered(AGENTS, floor_sleeps)) / floor_ideal

    results = run_async_rounds(
        benchmark,
        runner,
        prepare=lambda: _prepare(
            db_paths, "capacity", [TaskRequest(name="sleep") for _ in range(n)]
        ),
        measure=measure,
        digest=_digest,
        cleanup=_cleanup,
        rounds=rounds,
    )
    _check_completed(results, n)

    seconds = median(r.seconds for r in results)
    ratio = seconds / ideal
    overhead_ms = (seconds - ideal) / per_agent * 1000
    gc_share = median(r.gc_seconds / r.seconds for r in results)
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    report(
        f"P-05 capacity ({wait_label}): {AGENTS} agents x {per_agent:,} tasks of "
        f"{SLEEP_SECONDS * 1000:.0f} ms sleep x {rounds} rounds: median {seconds:.3f} s vs "
        f"ideal {ideal:.2f} s, ratio {ratio:.3f} ({verdict} target {TARGET_RATIO}); "
        f"{overhead_ms:.2f} ms extra per task per agent; asyncio floor ratio "
        f"{floor_ratio:.3f} (in step) / {staggered_ratio:.3f} (staggered); "
        f"cyclic GC {gc_share:.0%} of the time",
        variant=variant,
        agents=AGENTS,
        tasks_per_agent=per_agent,
        rounds=rounds,
        seconds_median=round(seconds, 4),
        seconds_rounds=[round(r.seconds, 4) for r in results],
        ideal_seconds=ideal,
        ratio_median=round(ratio, 4),
        extra_ms_per_task_per_agent=round(overhead_ms, 3),
        asyncio_floor_ratio=round(floor_ratio, 4),
        asyncio_floor_staggered_ratio=round(staggered_ratio, 4),
        gc_share_of_time_median=round(gc_share, 4),
        target_ratio=TARGET_RATIO,
    )
    if mode.quick:
        assert ratio < QUICK_RATIO_BOUND, (
            f"capacity ratio {ratio:.2f} is above the quick sanity bound of {QUICK_RATIO_BOUND}"
        )


def _priority_order_violations(tasks: list[Task]) -> int:
    """Tasks that started strictly after a less urgent task had started (0 = in order)."""
    ordered = sorted(tasks, key=lambda t: t.started_at)  # type: ignore[arg-type,return-value]
    violations = 0
    least_urgent_so_far = -1
    for _, same_instant in groupby(ordered, key=lambda t: t.started_at):
        group = list(same_instant)
        violations += sum(1 for t in group if t.priority < least_urgent_so_far)
        least_urgent_so_far = max(least_urgent_so_far, *(t.priority for t in group))
    return violations


def test_prioritised_tasks(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
) -> None:
    """P-05: 100 prioritised tasks (10 agents, 10 ms each) in far under a minute."""
    n = 100
    rounds = mode.pick(10, 5)
    rng = random.Random(7)
    priorities = [rng.randint(0, 100) for _ in range(n)]
    ideal = n / AGENTS * SLEEP_SECONDS

    results = run_async_rounds(
        benchmark,
        runner,
        prepare=lambda: _prepare(
            db_paths,
            "prioritised",
            [TaskRequest(name=f"p{p}", priority=p) for p in priorities],
        ),
        measure=_measure,
        digest=_digest,
        cleanup=_cleanup,
        rounds=rounds,
    )
    _check_completed(results, n)

    seconds = median(r.seconds for r in results)
    violations = [r.priority_order_violations for r in results]
    report(
        f"P-05 100 prioritised tasks, {AGENTS} agents x {SLEEP_SECONDS * 1000:.0f} ms "
        f"x {rounds} rounds: median {seconds:.3f} s (ideal {ideal:.2f} s, ratio "
        f"{seconds / ideal:.2f}); tasks started out of priority order: {max(violations)}",
        tasks=n,
        agents=AGENTS,
        rounds=rounds,
        seconds_median=round(seconds, 4),
        seconds_rounds=[round(r.seconds, 4) for r in results],
        ideal_seconds=ideal,
        priority_order_violations=violations,
    )
    assert not any(violations), f"tasks started out of priority order: {violations}"
    if mode.quick:
        assert seconds < QUICK_PRIORITISED_BOUND_SECONDS, (
            f"100 prioritised tasks took {seconds:.1f} s, above the quick sanity bound of "
            f"{QUICK_PRIORITISED_BOUND_SECONDS:.0f} s"
        )
