"""P-03: status query latency with many tasks stored, and event-log query time.

Status: one runtime holds 100,000 tasks (quick: 10,000), submitted with ``submit_tasks`` in
batches of 10,000 and random priorities while the queue is paused, so every task is pending
and ready (the worst case for queue position and ``explain``); 4 inline agents are running.
Each status call is timed on its own with ``perf_counter_ns``; p50/p95/p99 are reported in
microseconds against the P-03 target (p95 <= 100 us).

Events: another runtime ran ~3,334 no-op tasks to completion, which leaves ~10,000 events
(enqueued, started, completed per task). ``query_events(limit=None)`` is timed by task id,
by event type and over all events; medians are reported in milliseconds (target <= 20 ms).
The query over all events is printed beside its floor: the same rows read with bare sqlite3
(``benchmarks/floors.py``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.agents import NoOpAgent
from benchmarks.floors import bare_fetch_seconds
from benchmarks.harness import (
    BenchRuntime,
    GcMeter,
    Mode,
    close_runtime,
    latency_summary,
    make_runner,
    median,
    open_runtime,
    percentile,
    time_calls,
)
from miminions import AgentRuntime, EventType, TaskRequest, TaskStatus
from miminions.plugins.sqlite_schema import SELECT_EVENTS

STATUS_P95_TARGET_US = 100.0  # P-03
EVENT_QUERY_TARGET_MS = 20.0  # P-03
QUICK_STATUS_P95_BOUND_US = 5_000.0  # quick-mode sanity bounds
QUICK_EVENT_QUERY_BOUND_MS = 500.0
SUBMIT_BATCH = 10_000
EVENTS_WANTED = 10_000
EVENTS_PER_TASK = 3  # TASK_ENQUEUED, TASK_STARTED, TASK_COMPLETED
AGENTS = 4


@pytest.fixture(scope="module")
def module_runner(bench_loop: str) -> Iterator[asyncio.Runner]:
    """One event loop shared by this module's stored runtimes (built once per loop,
    queried often)."""
    with make_runner() as loop_runner:
        yield loop_runner


# ---------------------------------------------------------------------- status queries
@dataclass
class BigQueue:
    bench: BenchRuntime
    task_ids: list[str]
    build_seconds: float
    first_call_us: float
    announced: bool = False

    @property
    def rt(self) -> AgentRuntime:
        return self.bench.rt


@pytest.fixture(scope="class")
def big_queue(
    module_runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory, mode: Mode
) -> Iterator[BigQueue]:
    """A runtime with 100,000 (quick: 10,000) pending tasks of random priority, queue paused."""
    total = mode.pick(100_000, 10_000)
    path: Path = tmp_path_factory.mktemp("status") / "status.db"

    async def build() -> tuple[BenchRuntime, list[str], float]:
        bench = await open_runtime(path, agent=NoOpAgent, agents=AGENTS)
        try:
            await bench.rt.pause_queue()
            rng = random.Random(3)
            ids: list[str] = []
            start = time.perf_counter()
            for offset in range(0, total, SUBMIT_BATCH):
                size = min(SUBMIT_BATCH, total - offset)
                batch = [
                    TaskRequest(name="noop", priority=rng.randint(0, 100)) for _ in range(size)
                ]
                ids += await bench.rt.submit_tasks(batch)
            return bench, ids, time.perf_counter() - start
        except BaseException:
            await close_runtime(bench)
            raise

    bench, ids, seconds = module_runner.run(build())
    try:
        assert bench.rt.get_queue_status().pending == total
        # The first position lookup after a change sorts the ready set: time it once.
        start = time.perf_counter_ns()
        bench.rt.get_task_status(ids[-1])
        first_call_us = (time.perf_counter_ns() - start) / 1000
        yield BigQueue(bench, ids, seconds, first_call_us)
    finally:
        module_runner.run(close_runtime(bench))


def _sample(ids: list[str], k: int, seed: int) -> list[str]:
    return random.Random(seed).sample(ids, min(k, len(ids)))


# name -> (label, queue -> (call, args))
StatusQuery = tuple[str, Callable[[BigQueue], tuple[Callable[[Any], object], list[Any]]]]
STATUS_QUERIES: dict[str, StatusQuery] = {
    "task_status_last": (
        "get_task_status (the task submitted last)",
        lambda q: (q.rt.get_task_status, [q.task_ids[-1]]),
    ),
    "task_status_random": (
        "get_task_status (random tasks)",
        lambda q: (q.rt.get_task_status, _sample(q.task_ids, 4096, 11)),
    ),
    "agent_status": (
        "get_agent_status",
        lambda q: (q.rt.get_agent_status, list(q.bench.agent_ids)),
    ),
    "queue_status": (
        "get_queue_status",
        lambda q: (lambda _: q.rt.get_queue_status(), [None]),
    ),
    "explain_last": (
        "explain (the task submitted last)",
        lambda q: (q.rt.explain, [q.task_ids[-1]]),
    ),
    "explain_random": (
        "explain (random tasks)",
        lambda q: (q.rt.explain, _sample(q.task_ids, 4096, 13)),
    ),
}


def _announce_queue(queue: BigQueue, report: Callable[..., None]) -> dict[str, Any]:
    total = len(queue.task_ids)
    numbers = {
        "tasks_stored": total,
        "store_seconds": round(queue.build_seconds, 3),
        "first_position_lookup_us": round(queue.first_call_us, 1),
    }
    if not queue.announced:
        queue.announced = True
        report(
            f"P-03 setup: {total:,} pending tasks stored with submit_tasks (batches of "
            f"{SUBMIT_BATCH:,}) in {queue.build_seconds:.2f} s "
            f"({total / queue.build_seconds:,.0f} tasks/s); first get_task_status after "
            f"the last submit (sorts the ready set): {queue.first_call_us / 1000:.1f} ms",
            **numbers,
        )
    return numbers


def _report_status(
    report: Callable[..., None],
    mode: Mode,
    label: str,
    total: int,
    samples_ns: list[int],
    numbers: dict[str, Any],
    *,
    bounded: bool = True,
) -> None:
    us = latency_summary(sample / 1000 for sample in samples_ns)
    verdict = "meets" if us["p95"] <= STATUS_P95_TARGET_US else "misses"
    report(
        f"P-03 {label}, {total:,} tasks stored, {len(samples_ns):,} calls: "
        f"p50 {us['p50']:.1f} / p95 {us['p95']:.1f} / p99 {us['p99']:.1f} us "
        f"({verdict} p95 target {STATUS_P95_TARGET_US:.0f} us)",
        calls=len(samples_ns),
        latency_us_p50=round(us["p50"], 2),
        latency_us_p95=round(us["p95"], 2),
        latency_us_p99=round(us["p99"], 2),
        latency_us_max=round(us["max"], 2),
        target_p95_us=STATUS_P95_TARGET_US,
        **numbers,
    )
    if mode.quick and bounded:
        assert us["p95"] < QUICK_STATUS_P95_BOUND_US, (
            f"{label}: p95 {us['p95']:.0f} us is above the quick sanity bound of "
            f"{QUICK_STATUS_P95_BOUND_US:.0f} us"
        )


class TestStatusQueries:
    """Status answers from memory with a big queue (built once for the class, freed after)."""

    @pytest.mark.parametrize("query", list(STATUS_QUERIES))
    def test_status_latency(
        self,
        benchmark: Any,
        big_queue: BigQueue,
        mode: Mode,
        report: Callable[..., None],
        query: str,
    ) -> None:
        """P-03: status queries (agent, task, queue, explain) p95 with many tasks stored."""
        numbers = _announce_queue(big_queue, report)
        label, make = STATUS_QUERIES[query]
        call, args = make(big_queue)
        samples = time_calls(
            benchmark,
            call,
            args,
            rounds=mode.pick(10_000, 2_000),
            warmup_rounds=mode.pick(500, 100),
        )
        _report_status(report, mode, label, len(big_queue.task_ids), samples, numbers)

    def test_task_status_after_queue_change(
        self,
        benchmark: Any,
        big_queue: BigQueue,
        module_runner: asyncio.Runner,
        mode: Mode,
        report: Callable[..., None],
    ) -> None:
        """P-03: get_task_status right after the ready queue changed (one task submitted, not
        timed), as when status is polled while work flows: the queue position is recomputed.

        Reported, never bounded: it shows the cost of the position cache being invalidated.
        """
        numbers = _announce_queue(big_queue, report)
        rt = big_queue.rt
        rng = random.Random(17)

        def submit_one() -> None:
            module_runner.run(rt.submit_task("noop", priority=rng.randint(0, 100)))

        total = len(big_queue.task_ids)
        samples = time_calls(
            benchmark,
            rt.get_task_status,
            _sample(big_queue.task_ids, 1024, 19),
            rounds=mode.pick(30, 10),
            warmup_rounds=1,
            before=submit_one,
        )
        _report_status(
            report,
            mode,
            "get_task_status right after a submit (position re-sorted)",
            total,
            samples,
            numbers,
            bounded=False,
        )


# ---------------------------------------------------------------------- event queries
@dataclass
class StoredEvents:
    bench: BenchRuntime
    task_ids: list[str]
    events: int

    @property
    def rt(self) -> AgentRuntime:
        return self.bench.rt


@pytest.fixture(scope="class")
def stored_events(
    module_runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoredEvents]:
    """A runtime whose event log holds ~10,000 events from no-op tasks run to completion.

    The same size in quick mode: building it takes about a second.
    """
    path: Path = tmp_path_factory.mktemp("events") / "events.db"
    tasks = math.ceil(EVENTS_WANTED / EVENTS_PER_TASK)

    async def build() -> StoredEvents:
        bench = await open_runtime(path, agent=NoOpAgent, agents=AGENTS)
        try:
            ids = await bench.rt.submit_tasks([TaskRequest(name="noop") for _ in range(tasks)])
            done = await asyncio.gather(*(bench.rt.wait_for_task(task_id) for task_id in ids))
            assert all(task.status is TaskStatus.COMPLETED for task in done)
            await bench.rt.store.flush()
            events = len(await bench.rt.query_events(limit=None))
            return StoredEvents(bench, ids, events)
        except BaseException:
            await close_runtime(bench)
            raise

    stored = module_runner.run(build())
    try:
        yield stored
    finally:
        module_runner.run(close_runtime(stored.bench))


# name -> (label, query(stored, arg), stored -> args)
EventQuery = tuple[str, Callable[[StoredEvents, Any], Any], Callable[[StoredEvents], list[Any]]]
EVENT_QUERIES: dict[str, EventQuery] = {
    "by_task_id": (
        "query_events(task_id=..., limit=None)",
        lambda s, task_id: s.rt.query_events(task_id=task_id, limit=None),
        lambda s: _sample(s.task_ids, 256, 23),
    ),
    "by_event_type": (
        "query_events(event_type=TASK_COMPLETED, limit=None)",
        lambda s, _: s.rt.query_events(event_type=EventType.TASK_COMPLETED, limit=None),
        lambda s: [None],
    ),
    "all_events": (
        "query_events(limit=None), every event",
        lambda s, _: s.rt.query_events(limit=None),
        lambda s: [None],
    ),
}


class TestEventQueries:
    """Event-log queries on ~10,000 stored events."""

    @pytest.mark.parametrize("query", list(EVENT_QUERIES))
    def test_event_query(
        self,
        benchmark: Any,
        stored_events: StoredEvents,
        module_runner: asyncio.Runner,
        mode: Mode,
        report: Callable[..., None],
        query: str,
    ) -> None:
        """P-03: event query over 10,000 stored events (median, target <= 20 ms)."""
        label, run_query, make_args = EVENT_QUERIES[query]
        args = make_args(stored_events)
        samples: list[tuple[int, int, float]] = []  # (ns, rows, gc seconds) per call
        position = 0

        async def timed(arg: Any) -> None:  # timed inside the loop
            with GcMeter() as gc_meter:
                start = time.perf_counter_ns()
                rows = await run_query(stored_events, arg)
                elapsed = time.perf_counter_ns() - start
            samples.append((elapsed, len(rows), gc_meter.seconds))

        def target() -> None:
            nonlocal position
            arg = args[position % len(args)]
            position += 1
            module_runner.run(timed(arg))

        warmup = 2
        benchmark.pedantic(target, rounds=mode.pick(50, 15), warmup_rounds=warmup, iterations=1)
        timed_samples = samples[warmup:]
        ms = [ns / 1e6 for ns, _, _ in timed_samples]
        rows = median(r for _, r, _ in timed_samples)
        gc_share = sum(g for _, _, g in timed_samples) / (sum(ms) / 1000)
        mid = median(ms)
        p95 = percentile(ms, 95)
        verdict = "meets" if mid <= EVENT_QUERY_TARGET_MS else "misses"
        floor_ms = None
        floor_text = ""
        if query == "all_events":
            # The same rows read with bare sqlite3: what reading them costs at all.
            floor_sql = SELECT_EVENTS + " ORDER BY event_id"
            bare = bare_fetch_seconds(stored_events.bench.path, floor_sql, len(ms))
            floor_ms = median(bare) * 1e3
            floor_text = f"; floor (bare sqlite3 fetchall of the rows) {floor_ms:.2f} ms"
        report(
            f"P-03 {label} over {stored_events.events:,} events: median {mid:.2f} ms, "
            f"p95 {p95:.2f} ms, {rows:,.0f} events returned ({verdict} target "
            f"{EVENT_QUERY_TARGET_MS:.0f} ms); cyclic GC {gc_share:.0%} of the time" + floor_text,
            floor_bare_fetch_ms_median=None if floor_ms is None else round(floor_ms, 3),
            events_stored=stored_events.events,
            events_returned_median=rows,
            calls=len(ms),
            query_ms_median=round(mid, 3),
            query_ms_p95=round(p95, 3),
            gc_share_of_time=round(gc_share, 4),
            target_ms=EVENT_QUERY_TARGET_MS,
        )
        if mode.quick:
            assert mid < QUICK_EVENT_QUERY_BOUND_MS, (
                f"{label}: median {mid:.0f} ms is above the quick sanity bound of "
                f"{QUICK_EVENT_QUERY_BOUND_MS:.0f} ms"
            )
