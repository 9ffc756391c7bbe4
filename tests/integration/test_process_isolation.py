"""F-07, F-08, F-14, F-15, F-17, F-20, F-27: agents in worker processes (``isolation="process"``).

A crash, a hang or a resource breach of one agent's worker fails only the task it was
running (retried per its policy, on another agent when one is free); the agent is restarted
per the restart policy; workers never outlive their runtime.

The agents live in :mod:`tests.support.process_agents` (workers import them by module
path). Everything observed here happens in other processes, so the tests poll the runtime's
status and event log with short sleeps against a deadline (:func:`wait_until`).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import re
import signal
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from miminions import (
    AgentCrashedError,
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    ConfigurationError,
    EventType,
    Priority,
    ResourceLimits,
    RuntimeConfig,
    Task,
    TaskRequest,
    TaskStatus,
    ValidationError,
    WaitTimeoutError,
)
from miminions.kernel.models import Event, ProcessSettings, RestartPolicy
from miminions.plugins.process_pool import pool_of
from miminions.plugins.process_worker import ADDRESS_SPACE_HEADROOM, MIB
from tests.support.process_agents import (
    AtExitAgent,
    BadOnStopAgent,
    CpuSpinAgent,
    CrashAgent,
    DeepFailureAgent,
    HookLogAgent,
    MemoryAgent,
    SigxcpuIgnoringSpinAgent,
    SlowPauseAgent,
    SmallTaskAgent,
    StartSpinningAgent,
    SteppingAgent,
    SubprocessAgent,
    SyncHangAgent,
    ThreadsAgent,
    WireGarbageAgent,
)
from tests.support.processes import alive, proc_state
from tests.support.runtime import run_child_runtime
from tests.support.sync_agents import WireBadIdAgent, WireGarbageOnStartAgent
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

T = TypeVar("T")

FAST = ProcessSettings(
    heartbeat_interval_seconds=0.2,
    heartbeat_timeout_seconds=1.0,
    cancel_grace_seconds=0.5,
    usage_interval_seconds=0.05,
)
# For tests where a heartbeat kill would be a false alarm (many workers on a loaded machine).
LENIENT = FAST.model_copy(
    update={"heartbeat_interval_seconds": 0.5, "heartbeat_timeout_seconds": 10.0}
)
QUICK_RESTARTS = RestartPolicy(max_restarts=5, backoff_base_seconds=0.01, backoff_max_seconds=0.05)


@pytest.fixture
def config(make_config: Callable[..., RuntimeConfig]) -> Callable[..., RuntimeConfig]:
    """``make_config`` for process agents with short timings."""

    def make(**overrides: Any) -> RuntimeConfig:
        values: dict[str, Any] = {
            "default_isolation": "process",
            "process": FAST,
            "restart": QUICK_RESTARTS,
        }
        values.update(overrides)
        return make_config(**values)

    return make


# ---------------------------------------------------------------------- helpers
async def wait_events(
    rt: AgentRuntime,
    event_type: EventType,
    *,
    agent_id: str | None = None,
    task_id: str | None = None,
    count: int = 1,
    within: float = 15.0,
) -> list[Event]:
    """Wait until at least ``count`` events match; return all that match."""

    async def found() -> list[Event]:
        events = await rt.query_events(
            event_type=event_type, agent_id=agent_id, task_id=task_id, limit=None
        )
        return events if len(events) >= count else []

    return await wait_until(found, f"{count} {event_type.value} event(s)", within)


async def running_on(rt: AgentRuntime, task_id: str, agent_id: str) -> int:
    """Wait until ``task_id`` runs on ``agent_id``; return the pid of that agent's worker."""

    def check() -> int | None:
        task = rt.get_task_status(task_id)
        agent = rt.get_agent_status(agent_id)
        if (
            task.status is TaskStatus.RUNNING
            and task.assigned_agent_id == agent_id
            and agent.task_id == task_id
        ):
            return agent.process_id
        return None

    return await wait_until(check, f"task {task_id} running on agent {agent_id}")


async def restarted(rt: AgentRuntime, agent_id: str, old_pid: int, restarts: int = 1) -> int:
    """Wait until the agent runs again in a new worker after ``restarts`` restarts; return
    the new pid."""

    def check() -> int | None:
        agent = rt.get_agent_status(agent_id)
        if (
            agent.status is AgentStatus.RUNNING
            and agent.restart_count >= restarts
            and agent.process_id not in (None, old_pid)
        ):
            return agent.process_id
        return None

    return await wait_until(check, f"agent {agent_id} restarted ({restarts})")


# ---------------------------------------------------------------------- 1. crashes
CRASHES = {
    # mode: (exit code, signal name, how the worker ended in words)
    "exit": (3, None, "exited with code 3"),
    "segfault": (-signal.SIGSEGV, "SIGSEGV", "killed by SIGSEGV"),
    "sigkill": (-signal.SIGKILL, "SIGKILL", "killed by SIGKILL"),
}


def crash_error(mode: str, pid: int) -> str:
    """The error a task gets when its worker crashes in ``mode``."""
    return (
        f"AgentCrashedError: the worker process of agent 'crashy' (pid {pid}) "
        f"{CRASHES[mode][2]} while running the task"
    )


async def test_sys_exit_in_a_process_agents_code_fails_its_task_and_the_worker_goes_on(
    config: Callable[..., RuntimeConfig],
) -> None:
    """``sys.exit()`` in agent code fails its task, "SystemExit: 7", as for an inline agent
    (where it ended the whole program); the worker goes on with the next task."""
    async with AgentRuntime(config=config()) as rt:
        crashy = await rt.register_agent("crashy", CrashAgent, config={"crashy": True})
        pid = (await rt.start_agent(crashy)).process_id
        failed = await rt.wait_for_task(
            await rt.submit_task("t", {"mode": "system_exit"}, agent_id=crashy), 30
        )
        assert (failed.status, failed.error_message) == (TaskStatus.FAILED, "SystemExit: 7")
        done = await rt.wait_for_task(await rt.submit_task("t2", {}, agent_id=crashy), 30)
        assert done.status is TaskStatus.COMPLETED
        assert done.output_data is not None
        assert done.output_data["pid"] == pid
        assert rt.get_agent_status(crashy).restart_count == 0


@pytest.mark.parametrize("mode", list(CRASHES))
async def test_worker_crash_fails_only_its_task_and_the_agent_restarts(
    config: Callable[..., RuntimeConfig], mode: str
) -> None:
    """F-07: the crashed task is retried and completes on the healthy agent; AGENT_FAILED
    says how the worker ended; the agent comes back in a new worker. Out of retries, the
    task fails with a reason naming the exit code or signal."""
    exit_code, signal_name, words = CRASHES[mode]
    task_mode = "block" if mode == "sigkill" else mode
    async with AgentRuntime(config=config()) as rt:
        crashy = await rt.register_agent("crashy", CrashAgent, config={"crashy": True})
        healthy = await rt.register_agent("healthy", CrashAgent)
        old_pid = (await rt.start_agent(crashy)).process_id
        healthy_pid = (await rt.start_agent(healthy)).process_id
        assert old_pid is not None
        assert healthy_pid not in (None, old_pid)

        # both idle: the longest idle (crashy, started first) gets the task
        task_id = await rt.submit_task("retried", {"mode": task_mode}, max_retries=2)
        if mode == "sigkill":
            assert await running_on(rt, task_id, crashy) == old_pid
            os.kill(old_pid, signal.SIGKILL)
        task = await rt.wait_for_task(task_id, 20)
        assert task.status is TaskStatus.COMPLETED, task.error_message
        assert task.assigned_agent_id == healthy
        assert task.output_data == {"agent": "healthy", "pid": healthy_pid}
        assert 1 <= task.retry_count <= task.max_retries
        retries = await rt.query_events(event_type=EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
        assert retries[0].agent_id == crashy
        assert retries[0].details["error"] == crash_error(mode, old_pid)

        (failed, *_) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=crashy)
        assert failed.details["pid"] == old_pid
        assert failed.details["exit_code"] == exit_code
        assert failed.details.get("signal") == signal_name
        assert words in failed.details["error"]
        new_pid = await restarted(rt, crashy, old_pid)
        assert not alive(old_pid)
        restarting = await wait_events(rt, EventType.AGENT_RESTARTING, agent_id=crashy)
        assert restarting[0].details["restart"] == 1
        assert (
            await rt.wait_for_task(await rt.submit_task("after", agent_id=crashy), 10)
        ).output_data == {
            "agent": "crashy",
            "pid": new_pid,
        }

        # out of retries: the task fails with a reason naming how the worker ended
        doomed = await rt.submit_task("doomed", {"mode": task_mode}, agent_id=crashy)
        if mode == "sigkill":
            os.kill(await running_on(rt, doomed, crashy), signal.SIGKILL)
        task = await rt.wait_for_task(doomed, 20)
        assert task.status is TaskStatus.FAILED
        assert task.error_message == crash_error(mode, new_pid)
        await restarted(rt, crashy, new_pid, restarts=2)

        assert rt.get_agent_status(healthy).tasks_failed == 0
        assert rt.get_agent_status(healthy).process_id == healthy_pid
        assert rt.get_agent_status(crashy).tasks_failed == 2


async def test_exception_in_task_fails_the_task_but_not_the_worker(
    config: Callable[..., RuntimeConfig],
) -> None:
    """An ordinary exception is the task's failure, not a crash: the task is retried (and
    completes on the healthy agent), the worker lives on, nothing restarts."""
    async with AgentRuntime(config=config()) as rt:
        crashy = await rt.register_agent("crashy", CrashAgent, config={"crashy": True})
        healthy = await rt.register_agent("healthy", CrashAgent)
        pid = (await rt.start_agent(crashy)).process_id
        await rt.start_agent(healthy)
        task = await rt.wait_for_task(
            await rt.submit_task("raises", {"mode": "raise"}, max_retries=1), 10
        )
        assert task.status is TaskStatus.COMPLETED
        assert (task.assigned_agent_id, task.retry_count) == (healthy, 1)
        (retry,) = await rt.query_events(
            event_type=EventType.TASK_RETRY_SCHEDULED, task_id=task.task_id
        )
        assert (retry.agent_id, retry.details["error"]) == (
            crashy,
            "RuntimeError: the agent raised on purpose",
        )

        task = await rt.wait_for_task(
            await rt.submit_task("raises", {"mode": "raise"}, agent_id=crashy), 10
        )
        assert (task.status, task.error_message) == (
            TaskStatus.FAILED,
            "RuntimeError: the agent raised on purpose",
        )
        agent = rt.get_agent_status(crashy)
        assert (agent.status, agent.process_id, agent.restart_count) == (
            AgentStatus.RUNNING,
            pid,
            0,
        )
        assert agent.tasks_failed == 2
        assert await rt.query_events(event_type=EventType.AGENT_FAILED) == []


# ---------------------------------------------------------------------- 2. acceptance
async def test_other_agents_work_on_while_one_is_killed_repeatedly(
    config: Callable[..., RuntimeConfig],
) -> None:
    """The issue's acceptance test: of five agents, one is SIGKILLed whenever it runs a task
    while the others process 300 small tasks. Every task ends completed (or failed with a
    reason), none is lost, no task failed on another agent; with the default restart
    policy (3 restarts within 60 s) the victim ends failed, saying why."""
    policy = RestartPolicy(backoff_base_seconds=0.01)  # default limits: 3 within 60 s
    assert (policy.max_restarts, policy.window_seconds) == (3, 60.0)
    async with AgentRuntime(config=config(restart=policy, process=LENIENT)) as rt:
        # the victim is slow (2 s a task), so the test catches it mid-task every time
        victim = await rt.register_agent("victim", SmallTaskAgent, config={"task_seconds": 2})
        others = {name: await rt.register_agent(name, SmallTaskAgent) for name in "abcd"}
        await rt.start_agent(victim)
        for agent_id in others.values():
            await rt.start_agent(agent_id)
        other_pids = {name: rt.get_agent_status(a).process_id for name, a in others.items()}

        def small(n: int) -> dict[str, Any]:
            return {
                "name": f"small-{n}",
                "input_data": {"n": n, "seconds": 0.005},
                "max_retries": 5,
            }

        submitted = await rt.submit_tasks([small(n) for n in range(300)])
        killed: list[tuple[int, str]] = []  # (pid, task id) of every kill
        deadline = time.monotonic() + 30
        while len(killed) < 4:
            assert time.monotonic() < deadline, f"only {len(killed)} kills in time"
            agent = rt.get_agent_status(victim)
            if agent.status is AgentStatus.RUNNING and agent.task_id and agent.process_id:
                os.kill(agent.process_id, signal.SIGKILL)
                killed.append((agent.process_id, agent.task_id))
                await wait_events(rt, EventType.AGENT_FAILED, agent_id=victim, count=len(killed))
                continue
            if agent.status is AgentStatus.RUNNING and rt.get_queue_status().pending == 0:
                # the queue ran dry before the victim came back: one task for each agent
                submitted += await rt.submit_tasks([small(len(submitted) + n) for n in range(5)])
            await asyncio.sleep(0.01)

        def victim_given_up() -> bool:
            agent = rt.get_agent_status(victim)
            return agent.status is AgentStatus.FAILED and "not restarted" in (
                agent.status_reason or ""
            )

        await wait_until(victim_given_up, "the victim to stay failed")

        def all_done() -> bool:
            queue = rt.get_queue_status()
            return queue.pending + queue.blocked + queue.running == 0

        await wait_until(all_done, "every task to end", within=60)

        # nothing lost: every task submitted is there, completed or failed with a reason
        tasks = {task.task_id: task for task in rt.list_tasks(limit=None)}
        assert set(tasks) == set(submitted)
        queue = rt.get_queue_status()
        assert queue.completed + queue.failed == queue.total == len(submitted)
        for task in tasks.values():
            if task.status is TaskStatus.COMPLETED:
                assert task.output_data["n"] == int(task.name.removeprefix("small-"))
                assert task.output_data["agent"] in others  # the victim never finished one
            else:
                assert task.status is TaskStatus.FAILED, task
                assert task.assigned_agent_id == victim
                assert "killed by SIGKILL while running the task" in (task.error_message or "")

        # every failed attempt (retried or final) is one of the kills, on the victim
        failures = await rt.query_events(
            event_type=[EventType.TASK_RETRY_SCHEDULED, EventType.TASK_FAILED], limit=None
        )
        assert sorted((event.task_id or "") for event in failures) == sorted(t for _, t in killed)
        for event, (pid, _) in zip(failures, killed, strict=True):
            assert event.agent_id == victim
            assert (
                f"agent 'victim' (pid {pid}) killed by SIGKILL while running the task"
                in event.details["error"]
            )
        for name, agent_id in others.items():
            agent = rt.get_agent_status(agent_id)
            assert agent.status is AgentStatus.RUNNING
            assert (agent.tasks_failed, agent.restart_count) == (0, 0)
            assert agent.process_id == other_pids[name]
        completed = sum(rt.get_agent_status(a).tasks_completed for a in others.values())
        assert completed == queue.completed

        agent = rt.get_agent_status(victim)
        assert (agent.restart_count, agent.tasks_completed, agent.tasks_failed) == (3, 0, 4)
        assert agent.process_id is None
        assert agent.status_reason is not None
        assert (
            "it crashed or failed to restart 4 times within 60 s (restart policy: at most 3)"
            in agent.status_reason
        )
        assert "killed by SIGKILL" in agent.status_reason
        restarts = await rt.query_events(event_type=EventType.AGENT_RESTARTING, agent_id=victim)
        assert [event.details["restart"] for event in restarts] == [1, 2, 3]


# ---------------------------------------------------------------------- 3. hangs
async def test_hung_event_loop_is_killed_by_the_heartbeat(
    config: Callable[..., RuntimeConfig],
) -> None:
    """F-07: a task spinning on the worker's event loop stops heartbeats; the worker is
    killed (AGENT_KILLED), the task retried on the healthy agent, the agent restarted."""
    async with AgentRuntime(config=config()) as rt:
        crashy = await rt.register_agent("crashy", CrashAgent, config={"crashy": True})
        healthy = await rt.register_agent("healthy", CrashAgent)
        pid = (await rt.start_agent(crashy)).process_id
        assert pid is not None
        await rt.start_agent(healthy)
        task_id = await rt.submit_task("spin", {"mode": "spin"}, max_retries=1)

        (killed,) = await wait_events(rt, EventType.AGENT_KILLED, agent_id=crashy)
        assert killed.details["pid"] == pid
        assert killed.details["heartbeat_timeout_seconds"] == 1.0
        assert "heartbeat" in killed.details["reason"]
        task = await rt.wait_for_task(task_id, 10)
        assert (task.status, task.assigned_agent_id, task.retry_count) == (
            TaskStatus.COMPLETED,
            healthy,
            1,
        )
        (retry,) = await rt.query_events(event_type=EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
        assert "did not answer a heartbeat within 1 s" in retry.details["error"]
        (failed,) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=crashy)
        assert failed.details["signal"] == "SIGKILL"
        # Why the runtime killed it, not only how (it read like an outside kill, the OOM
        # killer's).
        assert "did not answer a heartbeat within 1 s" in failed.details["error"]
        await restarted(rt, crashy, pid)
        assert not alive(pid)


async def test_task_ignoring_its_timeout_gets_its_worker_killed(
    config: Callable[..., RuntimeConfig],
) -> None:
    """F-17: a synchronous task (in the worker's agent thread) that ignores its timeout is
    not stopped within cancel_grace_seconds: TASK_TIMEOUT, then the worker is killed
    (AGENT_KILLED) and restarted, and the agent works again."""
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("sync", SyncHangAgent)
        pid = (await rt.start_agent(agent_id)).process_id
        assert pid is not None
        task_id = await rt.submit_task("hang", {"hang": True}, timeout_seconds=0.5)
        task = await rt.wait_for_task(task_id, 10)
        assert task.status is TaskStatus.FAILED
        assert task.error_message == f"TaskTimeoutError: task {task_id} timed out after 0.5 s"
        (timeout,) = await wait_events(rt, EventType.TASK_TIMEOUT, task_id=task_id)
        assert timeout.details["timeout_seconds"] == 0.5

        (killed,) = await wait_events(rt, EventType.AGENT_KILLED, agent_id=agent_id, within=2)
        assert killed.details["pid"] == pid
        assert killed.details["task_ignored_cancel"] is True
        new_pid = await restarted(rt, agent_id, pid)
        assert not alive(pid)
        task = await rt.wait_for_task(await rt.submit_task("after"), 10)
        assert task.output_data == {"pid": new_pid}


# ---------------------------------------------------------------------- 4. resources
async def test_memory_over_the_hard_limit_stops_only_that_worker(
    config: Callable[..., RuntimeConfig],
) -> None:
    """F-08, F-27: a worker over max_memory_per_agent_mb is stopped with
    RESOURCE_LIMIT_EXCEEDED; its task fails saying so; another agent's task completes."""
    limits = ResourceLimits(max_memory_per_agent_mb=150)
    async with AgentRuntime(config=config(limits=limits)) as rt:
        hog = await rt.register_agent("hog", MemoryAgent)
        other = await rt.register_agent("other", SmallTaskAgent)
        hog_pid = (await rt.start_agent(hog)).process_id
        other_pid = (await rt.start_agent(other)).process_id
        assert hog_pid is not None
        hog_task = await rt.submit_task("hog", {"mb": 300}, agent_id=hog)
        other_task = await rt.submit_task("other", {"seconds": 0.3, "n": 1}, agent_id=other)

        task = await rt.wait_for_task(hog_task, 20)
        assert task.status is TaskStatus.FAILED
        message = task.error_message or ""
        assert message.startswith("ResourceLimitExceeded: agent 'hog' used ")
        assert "MB of memory, over its limit of 150 MB" in message
        (exceeded,) = await wait_events(rt, EventType.RESOURCE_LIMIT_EXCEEDED, agent_id=hog)
        details = exceeded.details
        assert (details["resource"], details["limit"], details["unit"]) == ("memory", 150, "MB")
        assert details["usage"] > 150
        (killed,) = await wait_events(rt, EventType.AGENT_KILLED, agent_id=hog)
        assert killed.details["pid"] == hog_pid
        (failed,) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=hog)
        assert "over its limit of 150 MB" in failed.details["error"]

        done = await rt.wait_for_task(other_task, 10)
        assert done.status is TaskStatus.COMPLETED
        assert done.output_data == {"agent": "other", "pid": other_pid, "n": 1}
        assert rt.get_agent_status(other).tasks_failed == 0
        await restarted(rt, hog, hog_pid)


async def test_memory_over_the_hard_limit_while_starting_fails_the_start(
    config: Callable[..., RuntimeConfig],
) -> None:
    """F-27: the hard memory limit holds while on_start runs too: a worker over it then is
    stopped (RESOURCE_LIMIT_EXCEEDED) and the start fails saying so (it was watched only
    once started: the start ran into its own timeout, the memory held meanwhile)."""
    limits = ResourceLimits(max_memory_per_agent_mb=150)
    policy = RestartPolicy(max_restarts=0)
    async with AgentRuntime(
        config=config(limits=limits, restart=policy, agent_start_timeout_seconds=60)
    ) as rt:
        hog = await rt.register_agent("hog", MemoryAgent, config={"start_mb": 300})
        started = await asyncio.wait_for(rt.start_agent(hog), 30)
        assert started.status is AgentStatus.FAILED
        assert "over its limit of 150 MB" in (started.error_message or "")
        (exceeded,) = await wait_events(rt, EventType.RESOURCE_LIMIT_EXCEEDED, agent_id=hog)
        assert exceeded.details["resource"] == "memory"


async def test_a_memory_limit_leaves_room_for_threads_and_still_stops_a_leap(
    config: Callable[..., RuntimeConfig],
) -> None:
    """The hard memory limit is about resident memory: a small agent may start dozens of
    threads (each reserves a stack and a malloc arena). Its address-space backstop still
    makes one allocation far past the limit a MemoryError in the agent's code."""
    limits = ResourceLimits(max_memory_per_agent_mb=200)
    async with AgentRuntime(config=config(limits=limits)) as rt:
        agent = await rt.register_agent("threads", ThreadsAgent)
        await rt.start_agent(agent)
        task = await rt.wait_for_task(
            await rt.submit_task("threads", {"threads": 32}, agent_id=agent), 30
        )
        assert task.status is TaskStatus.COMPLETED, task.error_message
        leap_mb = 200 + ADDRESS_SPACE_HEADROOM // MIB + 1024
        task = await rt.wait_for_task(
            await rt.submit_task("leap", {"reserve_mb": leap_mb}, agent_id=agent), 30
        )
        assert task.status is TaskStatus.COMPLETED, task.error_message
        assert task.output_data is not None
        assert task.output_data["memory_error"] is True


async def test_memory_over_the_soft_limit_warns_the_agent(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-27: over soft_memory_per_agent_mb the agent's on_error gets a ResourceLimitWarning
    (in its worker) and RESOURCE_LIMIT_WARNING is recorded; the task goes on."""
    error_log = tmp_path / "on_error.jsonl"
    release = tmp_path / "release"
    async with AgentRuntime(config=config()) as rt:
        hog = await rt.register_agent(
            "hog",
            MemoryAgent,
            config={"error_log": str(error_log)},
            limits=ResourceLimits(soft_memory_per_agent_mb=50),
        )
        pid = (await rt.start_agent(hog)).process_id
        task_id = await rt.submit_task("hold", {"mb": 80, "release": str(release)})

        (warning,) = await wait_events(rt, EventType.RESOURCE_LIMIT_WARNING, agent_id=hog)
        details = warning.details
        assert (details["resource"], details["limit"], details["unit"]) == ("memory", 50, "MB")
        assert details["usage"] > 50

        def logged() -> list[dict[str, Any]]:
            if not error_log.exists():
                return []
            return [json.loads(line) for line in error_log.read_text().splitlines()]

        (record,) = await wait_until(logged, "on_error to be called")
        # miminions' own errors reach on_error in a worker as their own class, as inline
        assert record["class"] == "ResourceLimitWarning"
        assert record["task_id"] is None
        assert record["pid"] == pid
        assert "over its soft limit of 50 MB" in record["message"]

        release.touch()
        task = await rt.wait_for_task(task_id, 10)
        assert task.status is TaskStatus.COMPLETED
        assert task.output_data == {"agent": "hog", "pid": pid, "held_mb": 80}
        assert await rt.query_events(event_type=EventType.RESOURCE_LIMIT_EXCEEDED) == []


async def spin_past_the_cpu_limit(rt: AgentRuntime) -> tuple[str, int, Task]:
    """Run a CPU-spinning task on an agent limited to 1 s of CPU time; return the agent's
    id, its worker's pid and the task once it ended."""
    spinner = await rt.register_agent(
        "spinner", CpuSpinAgent, limits=ResourceLimits(max_cpu_time_per_agent_seconds=1)
    )
    pid = (await rt.start_agent(spinner)).process_id
    assert pid is not None
    task = await rt.wait_for_task(await rt.submit_task("spin"), 20)
    return spinner, pid, task


async def test_cpu_time_limit_ends_the_worker(config: Callable[..., RuntimeConfig]) -> None:
    """F-08: max_cpu_time_per_agent_seconds is RLIMIT_CPU: the spinning worker gets SIGXCPU,
    RESOURCE_LIMIT_EXCEEDED (cpu) is recorded, its task fails with ResourceLimitExceeded and
    the agent restarts."""
    async with AgentRuntime(config=config(process=LENIENT)) as rt:
        spinner, pid, task = await spin_past_the_cpu_limit(rt)
        assert task.status is TaskStatus.FAILED
        assert task.error_message == (
            "ResourceLimitExceeded: agent 'spinner' used all of CPU time, over its limit of "
            "1 seconds; its worker was stopped"
        )

        (exceeded,) = await wait_events(rt, EventType.RESOURCE_LIMIT_EXCEEDED, agent_id=spinner)
        assert (exceeded.details["resource"], exceeded.details["limit"]) == ("cpu", 1)
        (failed,) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=spinner)
        assert failed.details["pid"] == pid
        assert (failed.details["exit_code"], failed.details["signal"]) == (
            -signal.SIGXCPU,
            "SIGXCPU",
        )
        assert failed.details["error"] == (
            "agent 'spinner' used all of CPU time, over its limit of 1 seconds; "
            "its worker was stopped"
        )
        await restarted(rt, spinner, pid)
        assert await rt.query_events(event_type=EventType.AGENT_KILLED) == []


async def test_a_spinner_that_ignores_sigxcpu_is_still_over_its_cpu_limit(
    config: Callable[..., RuntimeConfig],
) -> None:
    """A worker that ignores SIGXCPU spins on to the hard limit, where the kernel kills it
    (SIGKILL): that is the CPU limit too, not a crash from outside — RESOURCE_LIMIT_EXCEEDED
    (cpu), and its task fails with ResourceLimitExceeded."""
    async with AgentRuntime(config=config(process=LENIENT)) as rt:
        spinner = await rt.register_agent(
            "spinner",
            SigxcpuIgnoringSpinAgent,
            limits=ResourceLimits(max_cpu_time_per_agent_seconds=1),
        )
        pid = (await rt.start_agent(spinner)).process_id
        task = await rt.wait_for_task(await rt.submit_task("spin"), 30)
        assert task.status is TaskStatus.FAILED
        # The runtime's usage check or the kernel's hard limit (SIGKILL) ends it first.
        assert re.fullmatch(
            r"ResourceLimitExceeded: agent 'spinner' used (all|\d+\.\d seconds) of CPU time, "
            r"over its limit of 1 seconds; its worker was stopped",
            task.error_message or "",
        ), task.error_message
        (exceeded,) = await wait_events(rt, EventType.RESOURCE_LIMIT_EXCEEDED, agent_id=spinner)
        assert exceeded.details["resource"] == "cpu"
        (failed,) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=spinner)
        assert (failed.details["pid"], failed.details["signal"]) == (pid, "SIGKILL")


async def test_a_worker_breaking_the_wire_protocol_is_killed_saying_so(
    config: Callable[..., RuntimeConfig],
) -> None:
    """A worker that writes a frame that is not JSON is killed at once, and the events and
    the task's error say it broke the protocol (it exited by itself, code 0, which said
    nothing of why)."""
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("scribbler", WireGarbageAgent)
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("scribble"), 30)
        assert task.status is TaskStatus.FAILED
        assert "broke the wire protocol" in (task.error_message or ""), task.error_message
        (killed,) = await wait_events(rt, EventType.AGENT_KILLED, agent_id=agent_id)
        assert "broke the wire protocol: a frame is not JSON" in killed.details["reason"]
        (failed,) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=agent_id)
        assert "broke the wire protocol" in str(failed.details["error"])


async def test_a_worker_breaking_the_wire_protocol_in_on_start_fails_the_start_saying_so(
    config: Callable[..., RuntimeConfig],
) -> None:
    """As during a task: the start's failure says the worker broke the protocol (it said
    "killed by SIGKILL while starting", the start's own clean-up being first to kill it)."""
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("g", WireGarbageOnStartAgent)
        started = await rt.start_agent(agent_id)
        assert started.status is AgentStatus.FAILED
        assert "broke the wire protocol" in (started.error_message or ""), started
        (failed,) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=agent_id)
        assert "broke the wire protocol" in str(failed.details["error"]), failed.details


async def test_a_reply_id_of_the_wrong_type_kills_the_worker_saying_so(
    config: Callable[..., RuntimeConfig],
) -> None:
    async with AgentRuntime(config=config()) as rt:
        await rt.start_agent(await rt.register_agent("b", WireBadIdAgent))
        task = await rt.wait_for_task(await rt.submit_task("x"), 30)
        assert task.status is TaskStatus.FAILED
        assert "broke the wire protocol" in (task.error_message or ""), task.error_message
        assert "is not an int" in (task.error_message or ""), task.error_message


async def test_on_error_in_the_worker_gets_the_traceback_of_the_agent_code(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """The RemoteAgentError a process agent's on_error gets carries the traceback of where
    its code failed (remote_traceback, "the traceback in the worker"), not the runtime's
    own frames of the error's way back."""
    report = tmp_path / "report"
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("deep", DeepFailureAgent, config={"report": str(report)})
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("fail"), 30)
        assert task.error_message == "ValueError: deep failure"
        await wait_until(report.exists, "on_error's report")
        assert "nested_failing_frame" in report.read_text(), report.read_text()


# What an agent's subprocesses use is the agent's (they stay in its worker's process group).
async def test_the_memory_of_an_agents_subprocess_counts_against_its_limit(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """An agent whose tool (a subprocess) holds 80 MiB is over a 60 MB limit: its worker is
    stopped, the subprocess with it, and its task fails (only the worker's own memory was
    watched: the task waited for ever)."""
    limits = ResourceLimits(max_memory_per_agent_mb=60)
    async with AgentRuntime(config=config(process=LENIENT, limits=limits)) as rt:
        agent_id = await rt.register_agent("hog", SubprocessAgent)
        await rt.start_agent(agent_id)
        held, pid_file = tmp_path / "held", tmp_path / "pid"
        task_id = await rt.submit_task(
            "tool",
            {"hold_mb": 80, "held": str(held), "pid": str(pid_file)},
            agent_id=agent_id,
        )
        task = await rt.wait_for_task(task_id, 30)
        assert task.status is TaskStatus.FAILED
        assert "ResourceLimitExceeded" in (task.error_message or ""), task.error_message
        [event] = await rt.query_events(event_type=EventType.RESOURCE_LIMIT_EXCEEDED)
        assert event.details["resource"] == "memory"
        child = int(pid_file.read_text())
        await wait_until(lambda: not alive(child), "the subprocess to die with its worker")


async def test_the_cpu_time_of_an_agents_subprocesses_counts_against_its_limit(
    config: Callable[..., RuntimeConfig],
) -> None:
    """Three tools of 0.8 CPU-seconds each are 2.4 s of the agent's CPU time, over its 1 s
    limit (each subprocess had an RLIMIT_CPU of its own, and the task completed)."""
    limits = ResourceLimits(max_cpu_time_per_agent_seconds=1)
    async with AgentRuntime(config=config(process=LENIENT, limits=limits)) as rt:
        agent_id = await rt.register_agent("spinner", SubprocessAgent)
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task("tools", {"spin": 3, "seconds": 0.8}, agent_id=agent_id)
        task = await rt.wait_for_task(task_id, 30)
        assert task.status is TaskStatus.FAILED, task.output_data
        [event] = await rt.query_events(event_type=EventType.RESOURCE_LIMIT_EXCEEDED)
        assert event.details["resource"] == "cpu"


async def test_a_cpu_limit_reached_while_starting_is_reported_as_the_limit(
    config: Callable[..., RuntimeConfig],
) -> None:
    """An on_start that spends the CPU limit fails the start with ResourceLimitExceeded and
    a resource_limit_exceeded event, whichever the runtime sees first of the closed
    connection and the worker's exit (it was a plain crash, "killed by SIGXCPU", when the
    connection came first)."""
    async with AgentRuntime(config=config(process=LENIENT)) as rt:
        for n in range(3):
            agent_id = await rt.register_agent(
                f"spinner{n}",
                StartSpinningAgent,
                limits=ResourceLimits(max_cpu_time_per_agent_seconds=1),
            )
            started = await rt.start_agent(agent_id)
            assert started.status is AgentStatus.FAILED
            assert "ResourceLimitExceeded" in (started.error_message or ""), started
        exceeded = await rt.query_events(event_type=EventType.RESOURCE_LIMIT_EXCEEDED)
        assert len(exceeded) == 3


# ---------------------------------------------------------------------- 5. pause
async def test_paused_worker_is_stopped_until_resumed(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-15: once pause_agent returns, the worker process is stopped (state T), and stays
    so past the heartbeat timeout without being killed; resumed, it runs again and its task
    completes."""
    progress, release = tmp_path / "progress", tmp_path / "release"
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("stepper", SteppingAgent)
        pid = (await rt.start_agent(agent_id)).process_id
        assert pid is not None
        task_id = await rt.submit_task(
            "steps", {"progress": str(progress), "release": str(release)}
        )
        await wait_until(
            lambda: progress.exists() and int(progress.read_text() or 0) >= 3, "a few steps"
        )

        paused = await rt.pause_agent(agent_id, timeout_seconds=5)
        assert paused.status is AgentStatus.PAUSED
        # SIGSTOP is sent before pause_agent returns but delivered asynchronously: on a
        # loaded machine the state turns "T" a moment later
        await wait_until(lambda: proc_state(pid) == "T", "the paused worker to stop", 2)
        steps = progress.read_text()
        # past the heartbeat timeout: a stopped worker is not taken for a hung one
        await asyncio.sleep(FAST.heartbeat_timeout_seconds * 1.5)
        assert proc_state(pid) == "T"
        assert progress.read_text() == steps
        assert rt.get_task_status(task_id).status is TaskStatus.RUNNING
        assert await rt.query_events(event_type=EventType.AGENT_KILLED) == []

        await rt.resume_agent(agent_id)
        assert proc_state(pid) != "T"
        await wait_until(lambda: progress.read_text() != steps, "steps after the resume")
        release.touch()
        task = await rt.wait_for_task(task_id, 10)
        assert task.status is TaskStatus.COMPLETED
        assert task.output_data["pid"] == pid
        assert task.output_data["steps"] > int(steps)
        assert rt.get_agent_status(agent_id).process_id == pid


async def test_a_pause_that_times_out_after_the_worker_paused_is_undone(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """A pause whose timeout passes while the worker's ``on_pause`` is still busy (the
    worker finishes the pause before the cancel reaches it) is abandoned in the worker
    too: ``on_resume`` gets what ``on_pause`` returned, the worker is not stopped, and the
    agent's next task runs through its safe points."""
    resume_log = tmp_path / "resumes"
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent(
            "slow_pause",
            SlowPauseAgent,
            config={"pause_block_seconds": 1.0, "resume_log": str(resume_log)},
        )
        pid = (await rt.start_agent(agent_id)).process_id
        assert pid is not None
        with pytest.raises(WaitTimeoutError, match="the pause was abandoned"):
            await rt.pause_agent(agent_id, timeout_seconds=0.2)
        assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING

        task = await rt.wait_for_task(await rt.submit_task("after", agent_id=agent_id), 10)
        assert task.status is TaskStatus.COMPLETED
        assert task.output_data["pid"] == pid
        assert [json.loads(line) for line in resume_log.read_text().splitlines()] == [{"pid": pid}]
        assert proc_state(pid) != "T"
        assert await rt.query_events(event_type=EventType.AGENT_PAUSED) == []


async def test_stopping_a_paused_agent_whose_worker_died_says_so(
    config: Callable[..., RuntimeConfig],
) -> None:
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("paused", SteppingAgent)
        pid = (await rt.start_agent(agent_id)).process_id
        await rt.pause_agent(agent_id, timeout_seconds=5)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_events(rt, EventType.AGENT_FAILED, agent_id=agent_id)

        stopped = await rt.stop_agent(agent_id)

        assert stopped.status is AgentStatus.STOPPED
        assert (stopped.status_reason or "").startswith("stopped while paused")


async def test_a_paused_agent_whose_worker_dies_stays_paused_with_its_state(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-09, F-27: killing a paused agent's (stopped) worker does not restart the agent: it
    stays paused with the state ``on_pause`` saved, and its halted task (failed by the
    crash) waits for it. ``resume_agent`` starts a new worker: ``on_start``, then
    ``on_resume`` with that state, and the task is retried there."""
    progress, release, hook_log = tmp_path / "progress", tmp_path / "release", tmp_path / "hooks"
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent(
            "hooked", HookLogAgent, config={"hook_log": str(hook_log)}
        )
        old_pid = (await rt.start_agent(agent_id)).process_id
        task_id = await rt.submit_task(
            "steps", {"progress": str(progress), "release": str(release)}, max_retries=1
        )
        await wait_until(progress.exists, "the task's first step")
        await rt.pause_agent(agent_id, timeout_seconds=5)
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)

        (failed,) = await wait_events(rt, EventType.AGENT_FAILED, agent_id=agent_id)
        assert failed.details["paused"] is True
        assert failed.details["signal"] == "SIGKILL"
        agent = rt.get_agent_status(agent_id)
        assert agent.status is AgentStatus.PAUSED
        assert agent.process_id is None
        assert agent.restart_count == 0
        assert "resume_agent starts it again" in (agent.status_reason or "")
        assert await rt.query_events(event_type=EventType.AGENT_RESTARTING) == []
        task = rt.get_task_status(task_id)
        assert task.status is TaskStatus.PENDING
        assert task.retry_count == 1

        release.touch()
        resumed = await rt.resume_agent(agent_id)
        assert resumed.status is AgentStatus.RUNNING
        assert resumed.process_id not in (None, old_pid)
        task = await rt.wait_for_task(task_id, 10)
        assert task.status is TaskStatus.COMPLETED
        assert task.output_data["pid"] == resumed.process_id
        hooks = [json.loads(line) for line in hook_log.read_text().splitlines()]
        assert hooks == [
            ["start", old_pid],
            ["start", resumed.process_id],
            ["resume", resumed.process_id, {"paused_in": old_pid}],
        ]


def wait_for_death(pid: int) -> None:
    """Block (no loop turn, so the runtime cannot notice it yet) until ``pid`` is dead."""
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived SIGKILL"
        time.sleep(0.001)


async def test_a_worker_that_dropped_its_connection_is_not_handed_task_after_task(
    config: Callable[..., RuntimeConfig],
) -> None:
    """A worker whose connection is gone while its process lingers (a thread keeps it
    alive) is no use: tasks sent its way meanwhile wait for it to be gone and go back to
    the queue once each, instead of bouncing straight back thousands of times a second;
    they then run on the restarted agent."""
    async with AgentRuntime(config=config()) as rt:
        crashy = await rt.register_agent("crashy", CrashAgent, config={"crashy": True})
        await rt.start_agent(crashy)
        requests = [TaskRequest(name="deep", input_data={"mode": "too_deep"}, agent_id=crashy)]
        requests += [TaskRequest(name=f"after-{n}", agent_id=crashy) for n in range(3)]
        ids = await rt.submit_tasks(requests)
        done = await rt.wait_for_tasks(ids, timeout_seconds=30)
        assert done[0].status is TaskStatus.FAILED
        assert [task.status for task in done[1:]] == [TaskStatus.COMPLETED] * 3
        requeued = await rt.query_events(event_type=EventType.TASK_REQUEUED, limit=None)
        assert len(requeued) <= 3


async def run_on_one_crashy_agent(rt: AgentRuntime, modes: list[str | None]) -> list[Task]:
    """Start a crashy CrashAgent and submit one task per mode to it, in one batch (so they
    travel to its worker one behind the other); return them once all are finished."""
    crashy = await rt.register_agent("crashy", CrashAgent, config={"crashy": True})
    await rt.start_agent(crashy)
    requests = [
        TaskRequest(name=f"t{n}-{mode}", input_data={"mode": mode} if mode else {}, agent_id=crashy)
        for n, mode in enumerate(modes)
    ]
    return await rt.wait_for_tasks(await rt.submit_tasks(requests), timeout_seconds=30)


async def test_tasks_waiting_in_a_worker_that_exits_go_back_to_the_queue(
    config: Callable[..., RuntimeConfig],
) -> None:
    """A task whose code ends its worker (os._exit) fails; the tasks already sent to that
    worker, waiting behind it, never began: they run on the restarted agent instead of
    failing with a "cancelled" the runtime never asked for."""
    async with AgentRuntime(config=config()) as rt:
        modes = [None, "exit_later", None, None, None]
        done = await run_on_one_crashy_agent(rt, modes)
        assert done[0].status is TaskStatus.COMPLETED
        assert done[1].status is TaskStatus.FAILED
        assert [(t.status, t.error_message) for t in done[2:]] == [(TaskStatus.COMPLETED, None)] * 3


async def test_a_task_that_ended_is_not_blamed_for_the_next_ones_crash(
    config: Callable[..., RuntimeConfig],
) -> None:
    """A task that returned a big result (more than the socket takes at once) completed,
    even if the next task kills its worker right after: the next task begins only once
    the result has left the worker, and only it is blamed."""
    async with AgentRuntime(config=config()) as rt:
        done = await run_on_one_crashy_agent(rt, [None, "big_reply", "exit"])
        assert done[1].status is TaskStatus.COMPLETED, done[1].error_message
        assert done[1].output_data is not None
        assert len(done[1].output_data["blob"]) == 8 * 1024 * 1024
        assert done[2].status is TaskStatus.FAILED
        assert "exited with code 3" in (done[2].error_message or "")


async def test_a_start_given_up_while_its_worker_is_recorded_leaves_no_worker(
    config: Callable[..., RuntimeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that times out after its worker was forked, while the runtime records the
    worker in the store, does not leave that worker waiting for the runtime forever."""
    async with AgentRuntime(config=config(agent_start_timeout_seconds=0.5)) as rt:
        agent = await rt.register_agent("slow-record", SmallTaskAgent)
        real = rt.store.put_meta
        release = asyncio.Event()
        pids: list[int] = []

        def stalled_put_meta(key: str, value: Any) -> asyncio.Future[None]:
            pids.extend(pool_of(rt).workers)  # the worker being recorded

            async def commit() -> None:
                await release.wait()  # a commit stuck behind a busy writer, for the test
                await real(key, value)

            return asyncio.ensure_future(commit())

        monkeypatch.setattr(rt.store, "put_meta", stalled_put_meta)
        try:
            status = await rt.start_agent(agent)
        finally:
            release.set()
            monkeypatch.setattr(rt.store, "put_meta", real)
        assert status.status is AgentStatus.FAILED
        assert pids
        await wait_until(lambda: not any(alive(pid) for pid in pids), f"workers {pids} to exit")


async def test_after_a_timed_out_task_the_next_crash_is_blamed_on_the_next_task(
    config: Callable[..., RuntimeConfig],
) -> None:
    """A task times out (its cancel is answered), then the next task kills the worker:
    that task is the one that crashed — it fails, once, and is not put back in the queue
    as "never began" to run (and crash) again."""
    async with AgentRuntime(config=config()) as rt:
        crashy = await rt.register_agent("crashy", CrashAgent, config={"crashy": True})
        await rt.start_agent(crashy)
        slow = await rt.submit_task("slow", {"mode": "block"}, timeout_seconds=0.5)
        timed_out = await rt.wait_for_task(slow, 20)
        assert "TaskTimeoutError" in (timed_out.error_message or "")
        crash = await rt.submit_task("crash", {"mode": "exit"})
        done = await rt.wait_for_task(crash, 20)
        assert done.status is TaskStatus.FAILED
        assert "exited with code 3" in (done.error_message or "")
        assert not await rt.query_events(event_type=EventType.TASK_REQUEUED, task_id=crash)


async def test_a_pause_racing_the_workers_death_is_a_crash(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-15: a pause whose worker dies under it raises AgentCrashedError (not a hook
    failure), and the agent is restarted per the restart policy like after any crash."""
    fast = RestartPolicy(backoff_base_seconds=0.01)
    async with AgentRuntime(config=config(restart=fast)) as rt:
        agent_id = await rt.register_agent(
            "victim", HookLogAgent, config={"hook_log": str(tmp_path / "hooks")}
        )
        pid = (await rt.start_agent(agent_id)).process_id
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for_death(pid)
        with pytest.raises(AgentCrashedError, match="ended during its pause"):
            await rt.pause_agent(agent_id, timeout_seconds=5)
        await wait_until(
            lambda: (
                rt.get_agent_status(agent_id).restart_count == 1
                and rt.get_agent_status(agent_id).status is AgentStatus.RUNNING
            ),
            "the agent's restart",
        )
        assert not await rt.query_events(event_type=EventType.AGENT_PAUSED)


async def test_a_resume_racing_the_workers_death_keeps_the_agent_paused(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-09, F-15: a resume whose (paused) worker died under it raises AgentCrashedError;
    the agent stays paused with its state, and the next resume starts a new worker that
    gets that state."""
    hook_log = tmp_path / "hooks"
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent(
            "hooked", HookLogAgent, config={"hook_log": str(hook_log)}
        )
        old_pid = (await rt.start_agent(agent_id)).process_id
        assert old_pid is not None
        await rt.pause_agent(agent_id, timeout_seconds=5)
        os.kill(old_pid, signal.SIGKILL)
        wait_for_death(old_pid)
        with pytest.raises(AgentCrashedError, match="ended during its resume"):
            await rt.resume_agent(agent_id)
        await wait_events(rt, EventType.AGENT_FAILED, agent_id=agent_id)
        assert rt.get_agent_status(agent_id).status is AgentStatus.PAUSED
        resumed = await rt.resume_agent(agent_id)
        assert resumed.status is AgentStatus.RUNNING
        hooks = [json.loads(line) for line in hook_log.read_text().splitlines()]
        assert hooks[-1] == ["resume", resumed.process_id, {"paused_in": old_pid}]


# ---------------------------------------------------------------------- 6. shutdown
async def test_stop_leaves_no_worker_alive(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-14: after rt.stop() no worker of the runtime is alive: idle, busy or paused."""
    progress, release = tmp_path / "progress", tmp_path / "release"
    rt = AgentRuntime(config=config())
    await rt.start()
    try:
        idle = await rt.register_agent("idle", CrashAgent)
        busy = await rt.register_agent("busy", CrashAgent, config={"crashy": True})
        paused = await rt.register_agent("paused", SteppingAgent)
        started_pids = [(await rt.start_agent(a)).process_id for a in (idle, busy, paused)]
        assert all(pid is not None and alive(pid) for pid in started_pids)
        pids = [pid for pid in started_pids if pid is not None]  # all of them (just asserted)
        await running_on(rt, await rt.submit_task("block", {"mode": "block"}, agent_id=busy), busy)
        steps = await rt.submit_task(
            "steps", {"progress": str(progress), "release": str(release)}, agent_id=paused
        )
        await running_on(rt, steps, paused)
        await rt.pause_agent(paused, timeout_seconds=5)
        # SIGSTOP is delivered asynchronously: the state turns "T" a moment later
        await wait_until(lambda: proc_state(pids[2]) == "T", "the paused worker to stop")
    finally:
        await rt.stop(timeout_seconds=0.5)
    assert [pid for pid in pids if alive(pid)] == []


async def test_workers_die_with_a_killed_runtime(
    config: Callable[..., RuntimeConfig], db_path: Path
) -> None:
    """F-14, F-20: a runtime SIGKILLed in a child process leaves no worker behind (they die
    with it), so a new runtime on its database has nothing to reap."""
    child = await run_child_runtime("process_child", db_path)
    assert child.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = await child.stdout.readline()
        assert line, "the child runtime exited early"
        started = json.loads(line)
        pids = started["worker_pids"]
        assert len(pids) == 2
        assert all(alive(pid) for pid in pids)
    finally:
        child.send_signal(signal.SIGKILL)
        async with asyncio.timeout(30):  # to the end of its output: its workers are gone too
            await child.communicate()
    assert child.returncode == -signal.SIGKILL

    await wait_until(
        lambda: not any(alive(pid) for pid in pids), "the workers to die with their runtime", 5
    )

    async with AgentRuntime(config=config()) as rt:
        # a worker start waits for the check for leftovers to finish
        instance = await rt.start_agent(await rt.register_agent("worker1", CrashAgent))
        assert await rt.query_events(event_type=EventType.WORKERS_REAPED) == []
        recorded = await rt.store.get_meta("process.workers")
        assert [record["pid"] for record in recorded] == [instance.process_id]


def parent_pid(pid: int) -> int:
    """The parent of ``pid``, from /proc."""
    line = Path(f"/proc/{pid}/stat").read_bytes()
    return int(line[line.rfind(b")") + 2 :].split()[1])


async def test_stuck_and_paused_workers_die_with_a_killed_runtime(db_path: Path) -> None:
    """F-14: workers that cannot notice their runtime dying — one spinning in synchronous
    code on its loop, one paused (SIGSTOPped) — still die with a SIGKILLed runtime, and so
    does the forkserver that forked them (no worker keeps it alive)."""
    child = await run_child_runtime("stuck_process_child", db_path)
    assert child.stdout is not None
    pids: list[int] = []
    forkservers: set[int] = set()
    try:
        async with asyncio.timeout(60):
            line = await child.stdout.readline()
        assert line, "the child runtime exited early"
        pids = json.loads(line)["worker_pids"]
        assert len(pids) == 2
        assert all(alive(pid) for pid in pids)
        forkservers = {parent_pid(pid) for pid in pids}
        assert child.pid not in forkservers  # forked by the forkserver, not the runtime
        await wait_until(lambda: proc_state(pids[1]) == "T", "the paused worker to stop")
    finally:
        child.send_signal(signal.SIGKILL)
    try:
        await wait_until(
            lambda: not any(alive(pid) for pid in [*pids, *forkservers]),
            "the workers and the forkserver to die with their runtime",
            10,
        )
    finally:
        # Survivors (the bug) hold the child's stdout open: end them so it reaches its end.
        for pid in [*pids, *forkservers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        await child.communicate()  # the exit *and* the pipe's end (wait() may skip that)


async def test_a_spawned_worker_does_not_run_the_main_script(db_path: Path) -> None:
    """With ``start_method="spawn"``, a worker whose agent lives in its own module does not
    run the user's main script again (multiprocessing would import it as ``__mp_main__``):
    the script's top level ran once, in the runtime's process."""
    child = await run_child_runtime("spawn_main_child", db_path)
    async with asyncio.timeout(120):
        out, _ = await child.communicate()
    assert child.returncode == 0
    pids = json.loads(out)
    assert pids["worker_pid"] != pids["runtime_pid"]
    runs = db_path.with_name("main_runs.log").read_text().splitlines()
    assert runs == [f"{pids['runtime_pid']} __main__"]


# ---------------------------------------------------------------------- 7. validation
async def test_a_preload_module_that_cannot_be_imported_is_refused(
    config: Callable[..., RuntimeConfig],
) -> None:
    """R-04: a typo in ProcessSettings.preload fails the runtime's start with a
    ConfigurationError naming the module (the forkserver would skip it without a word),
    and the runtime is left stopped."""
    settings = ProcessSettings(preload=["no_such_package.agents"])
    rt = AgentRuntime(config=config(process=settings))
    with pytest.raises(ConfigurationError, match=r"no_such_package\.agents"):
        await rt.start()
    assert not rt.is_running


async def test_local_class_cannot_run_in_a_worker(config: Callable[..., RuntimeConfig]) -> None:
    """A class defined inside a function cannot be imported by a worker: registering it for
    process isolation is refused with a hint to use isolation='inline'."""

    class Local(BaseAgent):
        async def execute_task(self, task: Task) -> None:
            return None

    async with AgentRuntime(config=config()) as rt:
        with pytest.raises(ValidationError, match="isolation='inline'") as caught:
            await rt.register_agent("local", Local, isolation="process")
        assert "defined inside a function" in str(caught.value)
        assert rt.list_agents() == []
        # inline, it works
        agent_id = await rt.register_agent("local", Local, isolation="inline")
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("t"), 5)
        assert task.status is TaskStatus.COMPLETED


async def test_a_prefetched_task_starts_when_the_agent_begins_it(
    config: Callable[..., RuntimeConfig],
) -> None:
    """ProcessSettings.prefetch: while its agent is busy, a waiting task is handed to the
    worker ahead of time: it is running (taken by that agent) with no start yet; its
    started_at and TASK_STARTED come when the agent begins it, after the task before it."""
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("busy", SmallTaskAgent)
        await rt.start_agent(agent_id)
        ids = await rt.submit_tasks(
            [
                TaskRequest(name=f"t{n}", input_data={"seconds": 1.0, "n": n}, agent_id=agent_id)
                for n in range(3)
            ]
        )
        await wait_until(
            lambda: rt.get_task_status(ids[1]).started_at is not None, "the second task to begin"
        )
        waiting = rt.get_task_status(ids[2])
        assert waiting.status is TaskStatus.RUNNING
        assert waiting.assigned_agent_id == agent_id
        assert waiting.started_at is None
        assert rt.get_agent_status(agent_id).task_id == ids[1]

        done = await rt.wait_for_tasks(ids, timeout_seconds=30)
        assert [t.status for t in done] == [TaskStatus.COMPLETED] * 3
        for before, after in itertools.pairwise(done):
            assert before.completed_at is not None
            assert after.started_at is not None
            assert after.started_at >= before.completed_at
        (started,) = await rt.query_events(event_type=EventType.TASK_STARTED, task_id=ids[2])
        assert done[1].completed_at is not None
        assert started.timestamp >= done[1].completed_at


async def test_prefetch_does_not_keep_tasks_from_other_agents(
    config: Callable[..., RuntimeConfig],
) -> None:
    """ProcessSettings.prefetch: with few tasks waiting, an agent does not take more than
    its next one ahead of time: 4 equal tasks on 2 agents end up 2 and 2."""
    async with AgentRuntime(config=config()) as rt:
        agents = []
        for name in ("left", "right"):
            agent_id = await rt.register_agent(name, SmallTaskAgent)
            await rt.start_agent(agent_id)
            agents.append(agent_id)
        ids = await rt.submit_tasks(
            [TaskRequest(name=f"t{n}", input_data={"seconds": 0.5, "n": n}) for n in range(4)]
        )
        done = await rt.wait_for_tasks(ids, timeout_seconds=30)
        ran = [t.assigned_agent_id for t in done]
        assert sorted(ran.count(a) for a in agents) == [2, 2]


async def test_a_stopped_runtime_with_process_agents_is_freed(
    config: Callable[..., RuntimeConfig],
) -> None:
    """Nothing the process host keeps per runtime (its worker pool) keeps a stopped runtime
    alive once the application lets go of it."""
    rt = AgentRuntime(config=config())
    async with rt:
        agent_id = await rt.register_agent("small", SmallTaskAgent)
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task("t", {})
        assert (await rt.wait_for_task(task_id, timeout_seconds=30)).status is TaskStatus.COMPLETED
    gone = weakref.ref(rt)
    del rt
    gc.collect()
    assert gone() is None


async def test_a_stopped_worker_runs_the_agents_exit_handlers(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """What the agent's libraries flush at exit (atexit) is flushed when the agent stops."""
    path = tmp_path / "exits.txt"
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("exits", AtExitAgent, config={"path": str(path)})
        await rt.start_agent(agent_id)
        pid = rt.get_agent_status(agent_id).process_id
        await rt.stop_agent(agent_id)
    assert path.read_text().splitlines() == [f"exit {pid}"]


async def test_an_urgent_task_waits_behind_at_most_one_long_task_taken_ahead(
    config: Callable[..., RuntimeConfig],
) -> None:
    """ProcessSettings.prefetch is a limit: an agent whose tasks are long holds only the
    next one ahead of time, so a HIGH task submitted later does not queue behind a window
    of LOW ones (with a full window of 16 it would start last)."""
    async with AgentRuntime(config=config()) as rt:
        agent_id = await rt.register_agent("slow", SmallTaskAgent)
        await rt.start_agent(agent_id)
        low = await rt.submit_tasks(
            [
                TaskRequest(name=f"low{n}", input_data={"seconds": 0.3}, priority=Priority.LOW)
                for n in range(6)
            ]
        )
        await wait_until(
            lambda: rt.get_task_status(low[1]).started_at is not None, "the second task to begin"
        )
        high = await rt.submit_task("high", {"seconds": 0.3}, priority=Priority.HIGH)
        done = await rt.wait_for_tasks([*low, high], timeout_seconds=30)
        assert all(t.status is TaskStatus.COMPLETED for t in done)
        order = [t.task_id for t in sorted(done, key=lambda t: t.started_at or t.created_at)]
        assert order.index(high) <= 3  # after the one running and the one taken ahead


@pytest.mark.parametrize("max_restarts", [0, 5])
async def test_a_crash_of_the_worker_a_stop_was_ending_spares_the_next_worker(
    config: Callable[..., RuntimeConfig], tmp_path: Path, max_restarts: int
) -> None:
    """A graceful stop waits for the running task; a start asked meanwhile waits for the
    stop; the old worker is killed. The stop ends, the start gives the agent a new worker,
    and that healthy worker keeps running, with restarts on or off: the crash was its
    predecessor's, which the stop had ended already."""
    policy = QUICK_RESTARTS.model_copy(update={"max_restarts": max_restarts})
    async with AgentRuntime(config=config(process=LENIENT, restart=policy)) as rt:
        agent = await rt.register_agent("stepper", SteppingAgent)
        old_pid = (await rt.start_agent(agent)).process_id
        assert old_pid is not None
        never = str(tmp_path / "never")  # its release file never appears
        long = await rt.submit_task("long", {"release": never, "progress": str(tmp_path / "p")})
        await running_on(rt, long, agent)
        stopping = asyncio.ensure_future(rt.stop_agent(agent, timeout_seconds=20))
        await wait_until(
            lambda: rt.get_agent_status(agent).status is AgentStatus.STOPPING, "a stop"
        )
        starting = asyncio.ensure_future(rt.start_agent(agent))  # waits for the stop
        os.kill(old_pid, signal.SIGKILL)
        await stopping
        started = await starting
        assert started.status is AgentStatus.RUNNING
        assert started.process_id not in (None, old_pid)
        # a task round trip on the new worker: the crash's handling has had its turn
        release = tmp_path / "go"
        release.touch()
        probe = await rt.submit_task(
            "probe", {"release": str(release), "progress": str(tmp_path / "q")}, agent_id=agent
        )
        done = await rt.wait_for_task(probe, 20)
        assert done.status is TaskStatus.COMPLETED, done.error_message
        assert done.output_data is not None
        assert done.output_data["pid"] == started.process_id
        status = rt.get_agent_status(agent)
        assert (status.status, status.process_id, status.restart_count) == (
            AgentStatus.RUNNING,
            started.process_id,
            0,
        )
        assert await rt.query_events(event_type=EventType.AGENT_FAILED, agent_id=agent) == []


async def test_leftover_workers_are_reaped_by_a_runtime_that_stops_at_once(
    config: Callable[..., RuntimeConfig], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker an earlier runtime left recorded is reaped, with its workers_reaped event
    and the record updated, also by a runtime stopped right after its start (the stop
    waits for the check, which reads and writes the store, before closing it)."""
    from miminions.plugins.process_probe import WorkerRecord, process_start_time

    leftover = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    try:
        start_time = process_start_time(leftover.pid)
        record = WorkerRecord(
            pid=leftover.pid, start_time=start_time, agent_id="gone", runtime_pid=1
        )
        async with AgentRuntime(config=config()) as rt:
            await rt.store.put_meta("process.workers", [record.model_dump()])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="miminions.plugins.process_host"):
            async with AgentRuntime(config=config()):
                pass
        assert "could not check for leftover worker processes" not in caplog.text
        await asyncio.wait_for(leftover.wait(), 5)  # the leftover worker was killed
        async with AgentRuntime(config=config()) as rt:
            [reaped] = await rt.query_events(event_type=EventType.WORKERS_REAPED)
            assert [k["pid"] for k in reaped.details["killed"]] == [leftover.pid]
            assert await rt.store.get_meta("process.workers") == []
    finally:
        if leftover.returncode is None:
            leftover.kill()
            await leftover.wait()


@pytest.mark.parametrize("how", ["hang", "block", "crash"])
async def test_an_on_stop_cut_off_in_a_worker_is_reported(
    make_config: Callable[..., RuntimeConfig], how: str
) -> None:
    """An ``on_stop`` that does not finish — awaiting forever, blocking its worker's loop,
    ending its worker — is reported in an ``agent_error`` event, and the worker is gone
    (blocked or crashed, the stop looked clean)."""
    settings = ProcessSettings(stop_grace_seconds=0.5, cancel_grace_seconds=0.5)
    async with AgentRuntime(config=make_config(process=settings)) as rt:
        agent_id = await rt.register_agent(
            "a", BadOnStopAgent, isolation="process", config={"on_stop": how}
        )
        pid = (await rt.start_agent(agent_id)).process_id
        assert pid is not None
        stopped = await rt.stop_agent(agent_id, timeout_seconds=0.3)
        assert stopped.status is AgentStatus.STOPPED
        assert not alive(pid)
        [error] = await rt.query_events(event_type=EventType.AGENT_ERROR, agent_id=agent_id)
        expected = (
            "on_stop failed: AgentCrashedError: its worker process exited with code 9 in on_stop"
            if how == "crash"
            else "on_stop did not finish within 0.3 s"
        )
        assert error.details["error"] == expected
