"""Process agents: each agent in its own worker process, forked from multiprocessing's
forkserver (``isolation="process"``, the default).

- P-01 with process agents: N no-op tasks in one ``submit_tasks`` batch to a fresh runtime
  (default config: durable SQLite, task events recorded) with 2 process agents, awaited
  two ways: each task with its own ``wait_for_task`` (``asyncio.gather``), or all with one
  ``wait_for_tasks``, as in the inline benchmark. Timed from the submit to the last
  committed completion; also the CPU time the runtime process (all its threads) and the
  workers spent per task.
- P-04 start latency: ``start_agent`` of K process agents, one after another, once a
  warm-up agent got the forkserver running; each start timed on its own.
- Idle worker memory: the same workers, left idle, read from ``/proc/<pid>/statm`` (RSS)
  and ``/proc/<pid>/smaps_rollup`` (PSS and private memory). Workers share the
  forkserver's pages copy-on-write: RSS counts each shared page in full in every worker,
  PSS divides it among the processes sharing it, private memory is what the worker alone
  holds.
- Many agents at once: 100 process agents started together (``asyncio.gather`` of
  ``start_agent``, ``max_concurrent_agents=100``), then one no-op task for each (targeted
  with ``agent_id``) until all completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.agents import NoOpAgent
from benchmarks.harness import (
    BenchRuntime,
    DbPaths,
    Mode,
    close_runtime,
    median,
    open_runtime,
    percentile,
    run_async_rounds,
    task_outcomes,
    throughput,
)
from miminions import AgentStatus, ResourceLimits, Task, TaskRequest, TaskStatus
from miminions.plugins import process_probe

THROUGHPUT_AGENTS = 2
TARGET_TASKS_PER_SECOND = 10_000  # P-01, process-isolated agents on 2 cores
TARGET_START_P50_MS = 20.0  # P-04
TARGET_IDLE_RSS_MB = 30.0

# quick-mode sanity bounds: gross regressions only
QUICK_MIN_TASKS_PER_SECOND = 200
QUICK_MAX_START_P50_MS = 500.0
QUICK_MAX_IDLE_RSS_MB = 200.0
QUICK_MAX_AT_ONCE_SECONDS = 30.0

MB = 1024 * 1024
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------- helpers
async def open_process_runtime(
    path: Path, agents: int, *, prefix: str = "proc", **config: Any
) -> BenchRuntime:
    """A runtime on ``path`` with ``agents`` started process agents (no-op)."""
    bench = await open_runtime(path, **config)
    try:
        for index in range(agents):
            agent_id = await bench.rt.register_agent(
                f"{prefix}-{index}", NoOpAgent, isolation="process"
            )
            await bench.rt.start_agent(agent_id)
            bench.agent_ids.append(agent_id)
    except BaseException:
        await close_runtime(bench)
        raise
    return bench


def worker_pid(bench: BenchRuntime, agent_id: str) -> int:
    pid = bench.rt.get_agent_status(agent_id).process_id
    assert pid is not None, f"agent {agent_id} has no worker process"
    return pid


def worker_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the worker processes used so far (clock-tick resolution)."""
    total = 0.0
    for pid in pids:
        usage = process_probe.read_usage(pid)
        assert usage is not None, f"worker {pid} is gone"
        total += usage.cpu_seconds
    return total


@dataclass
class Memory:
    rss_mb: float
    pss_mb: float | None  # None where smaps_rollup cannot be read
    private_mb: float | None


def read_memory(pid: int) -> Memory:
    """RSS from ``/proc/<pid>/statm``; PSS and private (clean + dirty) memory from
    ``/proc/<pid>/smaps_rollup`` when it is readable (Linux 4.14+)."""
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                fields[key] = int(value[0])  # kB
    pss = fields.get("Pss")
    private = (
        fields["Private_Clean"] + fields["Private_Dirty"]
        if "Private_Clean" in fields and "Private_Dirty" in fields
        else None
    )
    return Memory(
        rss_mb=resident_pages * _PAGE_SIZE / MB,
        pss_mb=None if pss is None else pss * 1024 / MB,
        private_mb=None if private is None else private * 1024 / MB,
    )


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MB"


# ---------------------------------------------------------------------- P-01
@dataclass
class RawRound:
    seconds: float
    submit_seconds: float
    runtime_cpu_seconds: float
    worker_cpu_seconds: float
    tasks: list[Task]


@dataclass
class RoundResult:
    seconds: float
    submit_seconds: float
    runtime_cpu_seconds: float
    worker_cpu_seconds: float
    latencies_ms: list[float]
    not_completed: dict[str, int]
    agents_used: int


def _digest(raw: RawRound) -> RoundResult:
    latencies, not_completed = task_outcomes(raw.tasks)
    agents = {t.assigned_agent_id for t in raw.tasks if t.status is TaskStatus.COMPLETED}
    return RoundResult(
        raw.seconds,
        raw.submit_seconds,
        raw.runtime_cpu_seconds,
        raw.worker_cpu_seconds,
        latencies,
        not_completed,
        len(agents),
    )


_WAITS = {
    "wait-each": "one submit_tasks batch, a wait_for_task per task",
    "wait-batch": "one submit_tasks batch, one wait_for_tasks",
}


@pytest.mark.parametrize("wait", list(_WAITS))
def test_process_noop_throughput(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
    wait: str,
) -> None:
    """P-01: no-op tasks submit -> completed per second, 2 process agents, durable SQLite."""
    n = mode.pick(10_000, 1_000)
    rounds = mode.pick(5, 3)
    warmup = mode.pick(1, 0)

    async def prepare() -> tuple[BenchRuntime, list[int], list[TaskRequest]]:
        bench = await open_process_runtime(db_paths("process-throughput"), THROUGHPUT_AGENTS)
        pids = [worker_pid(bench, agent_id) for agent_id in bench.agent_ids]
        # Building the request objects is the caller's work, not the runtime's.
        return bench, pids, [TaskRequest(name="noop") for _ in range(n)]

    async def measure(state: tuple[BenchRuntime, list[int], list[TaskRequest]]) -> RawRound:
        bench, pids, requests = state
        workers_before = worker_cpu_seconds(pids)
        cpu_before = time.process_time()  # every thread of this (the runtime's) process
        start = time.perf_counter()
        ids = await bench.rt.submit_tasks(requests)
        submitted = time.perf_counter()
        if wait == "wait-batch":
            tasks = await bench.rt.wait_for_tasks(ids)
        else:
            tasks = await asyncio.gather(*(bench.rt.wait_for_task(task_id) for task_id in ids))
        end = time.perf_counter()
        cpu = time.process_time() - cpu_before
        workers = worker_cpu_seconds(pids) - workers_before
        return RawRound(end - start, submitted - start, cpu, workers, list(tasks))

    async def cleanup(state: tuple[BenchRuntime, list[int], list[TaskRequest]]) -> None:
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
    runtime_cpu_us = median(r.runtime_cpu_seconds / n * 1e6 for r in results)
    worker_cpu_us = median(r.worker_cpu_seconds / n * 1e6 for r in results)
    agents_used = min(r.agents_used for r in results)
    report(
        f"P-01 throughput, process agents, {_WAITS[wait]}: {n:,} no-op tasks x "
        f"{rounds} rounds, {THROUGHPUT_AGENTS} process agents: "
        f"{summary.describe(TARGET_TASKS_PER_SECOND)}; CPU per task: runtime process "
        f"{runtime_cpu_us:.0f} µs, workers {worker_cpu_us:.0f} µs (all {THROUGHPUT_AGENTS} "
        "together)",
        tasks=n,
        agents=THROUGHPUT_AGENTS,
        rounds=rounds,
        **summary.fields(TARGET_TASKS_PER_SECOND),
        runtime_cpu_us_per_task_median=round(runtime_cpu_us, 1),
        worker_cpu_us_per_task_median=round(worker_cpu_us, 1),
        agents_that_ran_tasks_min=agents_used,
    )
    if mode.quick:
        assert summary.rate > QUICK_MIN_TASKS_PER_SECOND, (
            f"process-agent throughput {summary.rate:,.0f} tasks/s is below the quick sanity bound "
            f"of {QUICK_MIN_TASKS_PER_SECOND:,} tasks/s"
        )


# ---------------------------------------------------------------------- P-04 + memory
def test_process_agent_start_latency(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
) -> None:
    """P-04: ``start_agent`` of one process agent with the forkserver running; then the
    memory of the idle workers."""
    count = mode.pick(30, 5)
    idle_seconds = mode.pick(3.0, 1.0)
    limits = ResourceLimits(max_concurrent_agents=count + 1)
    # The warm-up agent starts the forkserver if no earlier benchmark did.
    bench = runner.run(
        open_process_runtime(db_paths("process-start"), 1, prefix="warm-up", limits=limits)
    )
    samples_ns: list[int] = []
    try:

        def setup() -> tuple[tuple[str], dict[str, Any]]:
            agent_id = runner.run(
                bench.rt.register_agent(
                    f"start-{len(bench.agent_ids)}", NoOpAgent, isolation="process"
                )
            )
            bench.agent_ids.append(agent_id)
            return (agent_id,), {}

        async def timed_start(agent_id: str) -> None:
            start = time.perf_counter_ns()
            await bench.rt.start_agent(agent_id)
            samples_ns.append(time.perf_counter_ns() - start)

        def target(agent_id: str) -> None:
            runner.run(timed_start(agent_id))

        benchmark.pedantic(target, setup=setup, rounds=count, warmup_rounds=0, iterations=1)

        for agent_id in bench.agent_ids:
            status = bench.rt.get_agent_status(agent_id)
            assert status.status is AgentStatus.RUNNING, status
        runner.run(asyncio.sleep(idle_seconds))  # idle; heartbeats keep running
        memories = [read_memory(worker_pid(bench, agent_id)) for agent_id in bench.agent_ids]
    finally:
        runner.run(close_runtime(bench))

    assert len(samples_ns) == count
    starts_ms = [ns / 1e6 for ns in samples_ns]
    p50 = percentile(starts_ms, 50)
    p95 = percentile(starts_ms, 95)
    verdict = "meets" if p50 <= TARGET_START_P50_MS else "misses"
    report(
        f"P-04 process agent start: {count} agents started one after another "
        f"(forkserver running): start_agent p50 {p50:.2f} / p95 {p95:.2f} / "
        f"max {max(starts_ms):.2f} ms ({verdict} target p50 <= {TARGET_START_P50_MS:g} ms)",
        agents_started=count,
        start_ms_p50=round(p50, 3),
        start_ms_p95=round(p95, 3),
        start_ms_max=round(max(starts_ms), 3),
        start_ms_all=[round(ms, 3) for ms in starts_ms],
        target_start_ms_p50=TARGET_START_P50_MS,
    )

    rss = median(m.rss_mb for m in memories)
    pss = _median_or_none([m.pss_mb for m in memories])
    private = _median_or_none([m.private_mb for m in memories])
    rss_verdict = "meets" if rss <= TARGET_IDLE_RSS_MB else "misses"
    report(
        f"Idle process-agent worker memory: {len(memories)} no-op workers idle "
        f"{idle_seconds:g} s: RSS median {rss:.1f} MB ({rss_verdict} target <= "
        f"{TARGET_IDLE_RSS_MB:g} MB; RSS counts the pages shared copy-on-write with the "
        f"forkserver in full); PSS median {_mb(pss)}, private median {_mb(private)}",
        workers_measured=len(memories),
        idle_rss_mb_median=round(rss, 2),
        idle_rss_mb_max=round(max(m.rss_mb for m in memories), 2),
        idle_pss_mb_median=None if pss is None else round(pss, 2),
        idle_private_mb_median=None if private is None else round(private, 2),
        target_idle_rss_mb=TARGET_IDLE_RSS_MB,
    )
    if mode.quick:
        assert p50 < QUICK_MAX_START_P50_MS, (
            f"process agent start p50 {p50:.1f} ms is over the quick sanity bound of "
            f"{QUICK_MAX_START_P50_MS:g} ms"
        )
        assert rss < QUICK_MAX_IDLE_RSS_MB, (
            f"idle worker RSS {rss:.1f} MB is over the quick sanity bound of "
            f"{QUICK_MAX_IDLE_RSS_MB:g} MB"
        )


# ---------------------------------------------------------------------- many at once
@dataclass
class AtOnceRound:
    start_seconds: float
    tasks_seconds: float


def test_process_agents_at_once(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
) -> None:
    """100 process agents started together, then one targeted no-op task for each."""
    count = mode.pick(100, 10)
    rounds = mode.pick(3, 2)
    limits = ResourceLimits(max_concurrent_agents=count)

    async def prepare() -> tuple[BenchRuntime, list[str]]:
        # A warm-up agent makes sure the forkserver runs; stopped again to free its slot.
        bench = await open_process_runtime(
            db_paths("process-at-once"), 1, prefix="warm-up", limits=limits
        )
        try:
            await bench.rt.stop_agent(bench.agent_ids[0])
            ids = [
                await bench.rt.register_agent(f"many-{i}", NoOpAgent, isolation="process")
                for i in range(count)
            ]
        except BaseException:
            await close_runtime(bench)
            raise
        return bench, ids

    async def measure(state: tuple[BenchRuntime, list[str]]) -> AtOnceRound:
        bench, ids = state
        rt = bench.rt
        requests = [TaskRequest(name="noop", agent_id=agent_id) for agent_id in ids]
        start = time.perf_counter()
        await asyncio.gather(*(rt.start_agent(agent_id) for agent_id in ids))
        started = time.perf_counter()
        task_ids = await rt.submit_tasks(requests)
        tasks = await asyncio.gather(*(rt.wait_for_task(task_id) for task_id in task_ids))
        end = time.perf_counter()
        for agent_id in ids:
            status = rt.get_agent_status(agent_id)
            assert status.status is AgentStatus.RUNNING, status
        for agent_id, task in zip(ids, tasks, strict=True):
            assert task.status is TaskStatus.COMPLETED, task
            assert task.assigned_agent_id == agent_id, task
        return AtOnceRound(started - start, end - started)

    async def cleanup(state: tuple[BenchRuntime, list[str]]) -> None:
        await close_runtime(state[0])

    results = run_async_rounds(
        benchmark,
        runner,
        prepare=prepare,
        measure=measure,
        digest=lambda raw: raw,
        cleanup=cleanup,
        rounds=rounds,
    )

    start_s = median(r.start_seconds for r in results)
    tasks_s = median(r.tasks_seconds for r in results)
    total_s = median(r.start_seconds + r.tasks_seconds for r in results)
    report(
        f"{count} process agents at once: {rounds} rounds: all started (gather of "
        f"start_agent) in median {start_s:.2f} s ({start_s / count * 1000:.1f} ms per "
        f"agent); then {count} targeted no-op tasks, one per agent, all completed in "
        f"{tasks_s * 1000:.0f} ms; {total_s:.2f} s from the first start to the last "
        f"completion",
        agents=count,
        rounds=rounds,
        start_all_seconds_median=round(start_s, 4),
        start_all_seconds_rounds=[round(r.start_seconds, 4) for r in results],
        tasks_seconds_median=round(tasks_s, 4),
        tasks_seconds_rounds=[round(r.tasks_seconds, 4) for r in results],
        total_seconds_median=round(total_s, 4),
    )
    if mode.quick:
        assert total_s < QUICK_MAX_AT_ONCE_SECONDS, (
            f"starting {count} process agents and running a task on each took "
            f"{total_s:.1f} s, over the quick sanity bound of {QUICK_MAX_AT_ONCE_SECONDS:g} s"
        )
