"""P-04: 1,000 concurrent in-process agents on one runtime.

Each round registers 1,000 ``inline`` agents (quick: 100) that sleep 10 ms per task, starts
them all at once (``asyncio.gather`` of ``start_agent``), then gives each one targeted task
(every agent serves at the same time: the ideal is one 10 ms sleep) and then 10 untargeted
tasks per agent in one batch (ideal: ten 10 ms sleeps, 0.1 s). Also reported: the memory the
agents add to the runtime process (RSS growth from before the registrations to after the
starts; the first round's, as later rounds reuse memory the earlier runtimes freed), and
``get_agent_status`` / ``list_agents`` latency with all of them running.
Registration, start and task times are medians over the rounds; each round has a fresh
runtime on a fresh database.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.agents import SleepAgent
from benchmarks.harness import (
    BenchRuntime,
    DbPaths,
    Mode,
    close_runtime,
    latency_summary,
    median,
    open_runtime,
    run_async_rounds,
)
from miminions import AgentStatus, ResourceLimits, TaskRequest, TaskStatus

SLEEP_SECONDS = 0.01
TASKS_PER_AGENT = 10
QUICK_MAX_SECONDS = 30.0  # quick-mode sanity bound for the whole round


@dataclass
class ScaleRound:
    register_seconds: float
    start_seconds: float
    one_each_seconds: float
    batch_seconds: float
    rss_growth_mb: float
    status_us: list[float]
    list_ms: float


def _rss_mb() -> float:
    """This process's resident set size in MB (Linux ``/proc``; 0.0 where it is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_thousand_inline_agents(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
) -> None:
    """P-04: 1,000 inline agents registered, started at once and all serving tasks."""
    count = mode.pick(1_000, 100)
    rounds = mode.pick(3, 2)
    limits = ResourceLimits(max_concurrent_agents=count)
    config = {"sleep_seconds": SLEEP_SECONDS}

    async def prepare() -> BenchRuntime:
        return await open_runtime(db_paths("scale"), limits=limits)

    async def measure(bench: BenchRuntime) -> ScaleRound:
        rt = bench.rt
        rss_before = _rss_mb()
        start = time.perf_counter()
        ids = [
            await rt.register_agent(f"agent-{i}", SleepAgent, config=config, isolation="inline")
            for i in range(count)
        ]
        registered = time.perf_counter()
        await asyncio.gather(*(rt.start_agent(agent_id) for agent_id in ids))
        started = time.perf_counter()
        rss_growth = _rss_mb() - rss_before

        task_ids = await rt.submit_tasks(
            [TaskRequest(name="sleep", agent_id=agent_id) for agent_id in ids]
        )
        one_each = await rt.wait_for_tasks(task_ids)
        served = time.perf_counter()
        task_ids = await rt.submit_tasks(
            [TaskRequest(name="sleep") for _ in range(count * TASKS_PER_AGENT)]
        )
        batch = await rt.wait_for_tasks(task_ids)
        done = time.perf_counter()

        for agent_id, task in zip(ids, one_each, strict=True):
            assert task.status is TaskStatus.COMPLETED, task
            assert task.assigned_agent_id == agent_id, task
        assert all(task.status is TaskStatus.COMPLETED for task in batch)

        ns = time.perf_counter_ns
        status_us = []
        for agent_id in ids:
            before = ns()
            status = rt.get_agent_status(agent_id)
            status_us.append((ns() - before) / 1000)
            assert status.status is AgentStatus.RUNNING, status
        before_list = time.perf_counter()
        listed = rt.list_agents()
        list_ms = (time.perf_counter() - before_list) * 1000
        assert len(listed) == count
        return ScaleRound(
            registered - start,
            started - registered,
            served - started,
            done - served,
            rss_growth,
            status_us,
            list_ms,
        )

    results = run_async_rounds(
        benchmark,
        runner,
        prepare=prepare,
        measure=measure,
        digest=lambda raw: raw,
        cleanup=close_runtime,
        rounds=rounds,
    )

    register_s = median(r.register_seconds for r in results)
    start_s = median(r.start_seconds for r in results)
    one_each_s = median(r.one_each_seconds for r in results)
    batch_s = median(r.batch_seconds for r in results)
    # The first round's growth: later rounds reuse the memory the earlier runtimes freed.
    rss_mb = max(r.rss_growth_mb for r in results)
    status = latency_summary(us for r in results for us in r.status_us)
    list_ms = median(r.list_ms for r in results)
    tasks = count * TASKS_PER_AGENT
    report(
        f"P-04 {count:,} inline agents, {rounds} rounds (medians): registered in "
        f"{register_s:.2f} s, all started at once in {start_s:.2f} s, RSS +{rss_mb:.1f} MB in "
        f"the first round ({rss_mb * 1024 / count:.1f} kB per agent); one "
        f"{SLEEP_SECONDS * 1000:.0f} ms task "
        f"each: all done in {one_each_s * 1000:.0f} ms; {tasks:,} tasks "
        f"({TASKS_PER_AGENT} per agent, ideal {TASKS_PER_AGENT * SLEEP_SECONDS:.2f} s) in "
        f"{batch_s:.2f} s; get_agent_status p95 {status['p95']:.1f} us, list_agents "
        f"{list_ms:.1f} ms",
        agents=count,
        rounds=rounds,
        register_seconds_median=round(register_s, 4),
        start_all_seconds_median=round(start_s, 4),
        rss_growth_mb_first_round=round(rss_mb, 2),
        rss_growth_mb_rounds=[round(r.rss_growth_mb, 2) for r in results],
        one_task_each_seconds_median=round(one_each_s, 4),
        batch_tasks=tasks,
        batch_seconds_median=round(batch_s, 4),
        batch_seconds_rounds=[round(r.batch_seconds, 4) for r in results],
        agent_status_us=status,
        list_agents_ms_median=round(list_ms, 3),
    )
    if mode.quick:
        total = register_s + start_s + one_each_s + batch_s
        assert total < QUICK_MAX_SECONDS, (
            f"registering, starting and serving {count} inline agents took {total:.1f} s, "
            f"over the quick sanity bound of {QUICK_MAX_SECONDS:g} s"
        )
