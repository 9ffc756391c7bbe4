"""Regression tests for races and hangs found in review (F-04, F-07, F-08, F-14, R-04)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    Event,
    EventType,
    InvalidStateError,
    ResourceLimits,
    RuntimeConfig,
    RuntimeNotRunningError,
    Task,
    TaskStatus,
    ValidationError,
    hookimpl,
)
from miminions.kernel.supervisor import retry_delay
from miminions.plugins.asyncio_executor import OUTSIDE_CANCELS_BEFORE_FAILURE
from tests.support import agents
from tests.support.runtime import run_child_runtime
from tests.support.waiting import WAIT_SECONDS, wait_until


async def start(rt: AgentRuntime, name: str, agent: object, **kwargs: Any) -> str:
    agent_id = await rt.register_agent(name, agent, **kwargs)
    await rt.start_agent(agent_id)
    return agent_id


class SelfCancelling(BaseAgent):
    async def execute_task(self, task: Task) -> None:
        if task.name == "self-cancel":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        return None


async def test_cancelled_error_from_agent_code_fails_only_that_task(rt: AgentRuntime) -> None:
    """F-07: an agent whose own code raises CancelledError fails that task; the agent
    keeps serving."""
    await start(rt, "odd", SelfCancelling)
    bad = await rt.wait_for_task(await rt.submit_task("self-cancel"), 5)
    assert bad.status is TaskStatus.FAILED
    assert "CancelledError" in (bad.error_message or "")
    good = await rt.wait_for_task(await rt.submit_task("fine"), 5)
    assert good.status is TaskStatus.COMPLETED


async def test_cancel_between_dispatch_and_first_step_is_honoured(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-19: a cancel that arrives after a task was handed to an agent but before the
    agent's code ran cancels it; the agent never sees the task."""
    runtime: list[AgentRuntime] = []

    class CancelOnStart:
        @hookimpl
        def miminions_event(self, event: Event) -> None:
            # Called synchronously while the task is handed out, before its worker runs.
            if event.event_type is EventType.TASK_STARTED and event.task_id:
                runtime[0].executor.cancel_task(event.task_id, "cancelled by user")

    async with AgentRuntime(config=make_config(), plugins=[CancelOnStart()]) as rt:
        runtime.append(rt)
        await start(rt, "echo", agents.EchoAgent)
        task = await rt.wait_for_task(await rt.submit_task("t"), 5)
        assert task.status is TaskStatus.CANCELLED
        assert agents.CALLS == []


class SlowPause(BaseAgent):
    async def on_pause(self) -> dict[str, Any]:
        await asyncio.sleep(1)
        return {}

    async def execute_task(self, task: Task) -> dict[str, int]:
        agents.STARTED.setdefault(task.name, asyncio.Event()).set()
        for step in range(1000):
            await self.context.checkpoint()
            if agents.GATES.setdefault(task.name, asyncio.Event()).is_set():
                return {"steps": step}
            await asyncio.sleep(0.002)
        return {"steps": -1}


async def test_pause_abandoned_during_slow_on_pause_lets_the_task_go_on(rt: AgentRuntime) -> None:
    """F-04: a pause abandoned while on_pause runs reopens the gate; the task finishes."""
    agent_id = await start(rt, "slow", SlowPause)
    task_id = await rt.submit_task("work")
    await asyncio.wait_for(agents.STARTED.setdefault("work", asyncio.Event()).wait(), 5)
    with pytest.raises(TimeoutError):
        await rt.pause_agent(agent_id, timeout_seconds=0.05)
    agents.GATES.setdefault("work", asyncio.Event()).set()
    assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING


class NoSafePoint(BaseAgent):
    async def execute_task(self, task: Task) -> None:
        agents.STARTED.setdefault(task.name, asyncio.Event()).set()
        await asyncio.sleep(3600)  # never calls the context


async def test_stop_is_not_held_up_by_a_waiting_pause(rt: AgentRuntime) -> None:
    """F-14: a stop preempts a pause that waits for a safe point that never comes."""
    agent_id = await start(rt, "stuck", NoSafePoint)
    task_id = await rt.submit_task("work")
    await asyncio.wait_for(agents.STARTED.setdefault("work", asyncio.Event()).wait(), 5)
    pausing = asyncio.create_task(rt.pause_agent(agent_id))
    await asyncio.sleep(0.01)
    stopped = await asyncio.wait_for(rt.stop_agent(agent_id, graceful=False), 5)
    assert stopped.status is AgentStatus.STOPPED
    with pytest.raises(InvalidStateError, match="being stopped"):
        await pausing
    assert rt.get_task_status(task_id).status is TaskStatus.PENDING  # re-queued, not lost


class HangingStart(BaseAgent):
    async def on_start(self) -> None:
        await asyncio.sleep(3600)

    async def execute_task(self, task: Task) -> None:
        return None


async def test_hanging_on_start_fails_the_agent(make_config: Callable[..., RuntimeConfig]) -> None:
    """F-07: an on_start that never returns fails the agent after the start timeout."""
    async with AgentRuntime(config=make_config(agent_start_timeout_seconds=0.05)) as rt:
        agent_id = await rt.register_agent("hang", HangingStart)
        status = await rt.start_agent(agent_id)
        assert status.status is AgentStatus.FAILED
        assert "did not finish within 0.05 s" in (status.error_message or "")
        assert rt.get_capacity().active_agents == 0


async def test_waiters_are_released_when_the_runtime_stops(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-14: wait_for_task does not hang once the runtime stops; the task stays stored."""
    rt = AgentRuntime(config=make_config())
    await rt.start()
    task_id = await rt.submit_task("nobody-runs-this")
    waiting = asyncio.create_task(rt.wait_for_task(task_id))
    await asyncio.sleep(0)
    await rt.stop()
    with pytest.raises(RuntimeNotRunningError, match="stored"):
        await asyncio.wait_for(waiting, 5)


class CountingSync:
    """A sync agent that records how many of its calls overlap."""

    lock = threading.Lock()
    active = 0
    most = 0

    def execute_task(self, task: Task) -> dict[str, str]:
        with self.lock:
            CountingSync.active += 1
            CountingSync.most = max(CountingSync.most, CountingSync.active)
        try:
            time.sleep(task.input_data.get("seconds", 0))
        finally:
            with self.lock:
                CountingSync.active -= 1
        return {"thread": threading.current_thread().name}


async def test_timed_out_sync_call_never_runs_beside_the_next(rt: AgentRuntime) -> None:
    """F-22: an abandoned sync call still occupies its agent's thread; the agent's next
    task waits for it instead of running concurrently on the same instance."""
    CountingSync.most = 0
    await start(rt, "sync", CountingSync)
    slow = await rt.submit_task("slow", {"seconds": 0.3}, timeout_seconds=0.05)
    after = [await rt.submit_task(f"next-{i}") for i in range(3)]
    assert (await rt.wait_for_task(slow, 5)).status is TaskStatus.FAILED
    for task_id in after:
        task = await rt.wait_for_task(task_id, 5)
        assert task.status is TaskStatus.COMPLETED
        assert task.output_data["thread"].startswith("miminions-sync")
    assert CountingSync.most == 1


async def test_a_sync_call_that_never_returns_does_not_keep_the_program_alive(
    db_path: Path,
) -> None:
    """F-22, R-02: once the runtime stopped, a program exits although its inline agent's
    synchronous code never returned (the call is abandoned, not waited for at exit)."""
    child = await run_child_runtime("stuck_sync_child", db_path)
    try:
        async with asyncio.timeout(60):
            output, _ = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert output.decode().splitlines() == ["task failed", "runtime stopped", "main returned"]
    assert child.returncode == 0


@pytest.mark.parametrize("interruption", ["pause", "stop"])
async def test_an_agent_in_its_on_error_never_gets_a_second_worker(
    rt: AgentRuntime, interruption: str
) -> None:
    """F-19, F-03: an agent paused and resumed (or stopped and started) while its on_error
    still runs keeps one worker: afterwards its tasks run one at a time, each once, in
    submission order. (The pause waits for on_error to end; the stop gives up on it.)"""
    agent = agents.SlowOnErrorAgent
    agent.ACTIVE, agent.MOST_ACTIVE, agent.RAN = 0, 0, []
    agent_id = await start(rt, "slow-error", agent)
    failing = await rt.submit_task("fails", agent_id=agent_id)
    assert (await rt.wait_for_task(failing, 5)).status is TaskStatus.FAILED
    await asyncio.wait_for(agents.STARTED.setdefault("on_error", asyncio.Event()).wait(), 5)
    if interruption == "pause":
        pausing = asyncio.ensure_future(rt.pause_agent(agent_id, timeout_seconds=5))
        later = [await rt.submit_task(f"t{n}", agent_id=agent_id) for n in range(4)]
        agents.GATES.setdefault("on_error", asyncio.Event()).set()
        await pausing
        await rt.resume_agent(agent_id)
    else:
        await rt.stop_agent(agent_id, timeout_seconds=0.1)
        await rt.start_agent(agent_id)
        later = [await rt.submit_task(f"t{n}", agent_id=agent_id) for n in range(4)]
        agents.GATES.setdefault("on_error", asyncio.Event()).set()
    # Once on_error is done its worker goes on to a task at once (a task records itself as
    # it begins): then every worker the agent has holds a task, waiting at the gate.
    await wait_until(
        lambda: len(agent.RAN) >= 3 and agent.RAN[-1] != "on_error_done",
        "the agent's worker to go on after on_error",
    )
    assert agent.RAN == ["fails", "on_error_done", "t0"]
    assert agent.MOST_ACTIVE == 1
    agents.GATES.setdefault("tasks", asyncio.Event()).set()
    for task_id in later:
        assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED
    assert agent.MOST_ACTIVE == 1
    assert agent.RAN == ["fails", "on_error_done", "t0", "t1", "t2", "t3"]


async def test_an_agent_restarted_after_an_abandoned_run_takes_new_tasks(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """R-01: an inline agent whose task ignores cancellation is stopped (its run abandoned,
    the task re-queued) and started again: it takes new tasks at once, and the old run's
    code returning later does not give it a second worker."""
    release = agents.GATES.setdefault("stubborn", asyncio.Event())
    async with AgentRuntime(config=make_config(shutdown_timeout_seconds=0.2)) as rt:
        try:
            agent_id = await start(rt, "stubborn", agents.StubbornAgent)
            stuck = await rt.submit_task("stubborn", agent_id=agent_id)
            await asyncio.wait_for(agents.STARTED.setdefault("stubborn", asyncio.Event()).wait(), 5)
            await rt.stop_agent(agent_id, timeout_seconds=0.05)
            assert rt.get_task_status(stuck).status is TaskStatus.PENDING
            await rt.cancel_task(stuck)  # the abandoned code is still in it: not again
            await rt.start_agent(agent_id)
            fresh = await rt.submit_task("fresh", agent_id=agent_id)
            assert (await rt.wait_for_task(fresh, 5)).status is TaskStatus.COMPLETED
            release.set()  # the old code returns now
            later = await rt.submit_task("later", agent_id=agent_id)
            assert (await rt.wait_for_task(later, 5)).status is TaskStatus.COMPLETED
        finally:
            release.set()  # nothing keeps the shutdown waiting


async def test_stop_returns_while_an_abandoned_run_is_still_stuck(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """R-01: the runtime's stop does not wait for ever on code whose run was abandoned
    (it ignores cancellation): it returns within its grace period, the task re-queued."""
    release = agents.GATES.setdefault("stubborn", asyncio.Event())
    release.clear()
    agents.STARTED.pop("stubborn", None)
    config = make_config(shutdown_timeout_seconds=0.2)
    rt = AgentRuntime(config=config)
    await rt.start()
    stopping: asyncio.Future[None] | None = None
    try:
        stubborn = await start(rt, "stubborn", agents.StubbornAgent)
        task_id = await rt.submit_task("stubborn")
        await asyncio.wait_for(agents.STARTED.setdefault("stubborn", asyncio.Event()).wait(), 5)
        await rt.stop_agent(stubborn, timeout_seconds=0.05)  # its run is abandoned
        assert rt.get_task_status(task_id).status is TaskStatus.PENDING
        stopping = asyncio.ensure_future(rt.stop())
        done, _ = await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
        assert stopping in done, "stop() still waits for the abandoned run's code"
        await stopping
    finally:
        release.set()  # the stuck code returns
        if stopping is None:
            await rt.stop()
    async with AgentRuntime(config=config) as again:
        assert again.get_task_status(task_id).status is TaskStatus.PENDING


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_an_agent_that_swallows_its_cancel_does_not_wedge_its_next_tasks(
    rt: AgentRuntime, isolation: str
) -> None:
    """A task whose code swallows the cancel of its timeout fails with the timeout; the
    agent's next tasks end normally (one raising CancelledError itself fails, the next
    completes) instead of staying running for good. A process agent's worker sent no
    answer for the task raising CancelledError itself: it stayed running, the agent
    wedged."""
    await start(rt, "quirky", agents.CancelQuirkAgent, isolation=isolation)
    await rt.pause_queue()
    swallow = await rt.submit_task("swallow", timeout_seconds=0.1)
    selfcancel = await rt.submit_task("selfcancel")
    plain = await rt.submit_task("plain")
    await rt.resume_queue()
    first = await rt.wait_for_task(swallow, 5)
    assert first.status is TaskStatus.FAILED
    assert "TaskTimeoutError" in (first.error_message or "")
    second = await rt.wait_for_task(selfcancel, 5)
    assert second.status is TaskStatus.FAILED
    assert "TaskCancelledError" in (second.error_message or "")
    assert (await rt.wait_for_task(plain, 5)).status is TaskStatus.COMPLETED


@pytest.mark.parametrize("name", ["taskcancel", "taskgroup"])
async def test_a_process_task_whose_own_code_cancels_its_task_fails_at_once(
    rt: AgentRuntime, name: str
) -> None:
    """A process agent's task whose code cancels its own task, or leaves a cancel counted
    on it (a TaskGroup on Python 3.11) and then raises CancelledError, fails with
    TaskCancelledError at once, its worker left alone. The worker took the counted cancel
    for the runtime's and answered nothing: the task stayed running for good (with a
    timeout: failed as timed out, and the worker was killed for ignoring its cancel)."""
    await start(rt, "quirky", agents.CancelQuirkAgent, isolation="process")
    task_id = await rt.submit_task(name, timeout_seconds=60)
    done = await rt.wait_for_task(task_id, WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED, done.status
    assert "TaskCancelledError" in (done.error_message or ""), done.error_message
    assert not await rt.query_events(event_type=EventType.AGENT_KILLED)
    plain = await rt.submit_task("plain")
    assert (await rt.wait_for_task(plain, WAIT_SECONDS)).status is TaskStatus.COMPLETED


@pytest.mark.parametrize("name", ["taskcancel", "taskgroup"])
async def test_an_inline_task_whose_own_code_cancels_its_task_fails_after_a_few_runs(
    rt: AgentRuntime, name: str
) -> None:
    """An inline agent's code runs in the runtime's worker task: code that cancels its own
    task (or leaves a cancel counted on it, a TaskGroup on Python 3.11) looks like a cancel
    from outside the runtime, whose task goes back to the queue. After a few such runs in a
    row the task fails instead (an attempt used; none left here). It ran again and again,
    thousands of times a second, for good."""
    await start(rt, "quirky", agents.CancelQuirkAgent)
    task_id = await rt.submit_task(name, max_retries=0)
    done = await rt.wait_for_task(task_id, WAIT_SECONDS)
    assert done.status is TaskStatus.FAILED, done.status
    assert "TaskCancelledError" in (done.error_message or ""), done.error_message
    started = await rt.query_events(event_type=EventType.TASK_STARTED, task_id=task_id)
    if name == "taskgroup" and sys.version_info >= (3, 13):
        # A TaskGroup takes back the cancel it counted from Python 3.13 on: the code's
        # CancelledError is its own failure, as in a process agent, at the first run.
        assert len(started) == 1
    else:
        assert len(started) == OUTSIDE_CANCELS_BEFORE_FAILURE
    plain = await rt.submit_task("plain")
    assert (await rt.wait_for_task(plain, WAIT_SECONDS)).status is TaskStatus.COMPLETED


async def test_a_timeout_the_agent_turns_into_another_error_is_still_a_timeout(
    rt: AgentRuntime,
) -> None:
    """A task's code that answers its timeout's cancel with an error of its own still
    fails with TaskTimeoutError, with a task_timeout event."""
    await start(rt, "quirky", agents.CancelQuirkAgent)
    task_id = await rt.submit_task("convert", timeout_seconds=0.1)
    done = await rt.wait_for_task(task_id, 5)
    assert done.status is TaskStatus.FAILED
    assert "TaskTimeoutError" in (done.error_message or "")
    assert await rt.query_events(event_type=EventType.TASK_TIMEOUT, task_id=task_id)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_stopped_task_whose_run_is_abandoned_does_not_run_again(
    make_config: Callable[..., RuntimeConfig], how: str
) -> None:
    """A task cancelled, or past its timeout, whose code ignores that, and whose agent is
    then stopped (its run abandoned): the task is cancelled or failed, as it was asked
    to be, not put back in the queue for another agent to run."""
    release = agents.GATES.setdefault("stubborn", asyncio.Event())
    release.clear()
    agents.STARTED.pop("stubborn", None)
    async with AgentRuntime(config=make_config(shutdown_timeout_seconds=0.3)) as rt:
        try:
            stubborn = await start(rt, "stubborn", agents.StubbornAgent)
            timeout = 0.1 if how == "timeout" else None
            task_id = await rt.submit_task("stubborn", timeout_seconds=timeout)
            await asyncio.wait_for(agents.STARTED.setdefault("stubborn", asyncio.Event()).wait(), 5)
            cancelling = asyncio.ensure_future(rt.cancel_task(task_id)) if how == "cancel" else None
            # the executor has asked the run to stop (internal: nothing else shows it yet)
            run = rt.executor._runs[task_id]  # type: ignore[attr-defined]
            await wait_until(
                lambda: run.cancel_reason is not None or run.timed_out, "the run asked to stop"
            )
            await asyncio.wait_for(rt.stop_agent(stubborn, timeout_seconds=0.1), 5)
            await rt.start_agent(await rt.register_agent("other", agents.EchoAgent))
            done = await rt.wait_for_task(task_id, 5)
            if cancelling is not None:
                assert (await asyncio.wait_for(cancelling, 5)).status is TaskStatus.CANCELLED
            assert done.status is (TaskStatus.CANCELLED if how == "cancel" else TaskStatus.FAILED)
            assert done.assigned_agent_id == stubborn
        finally:
            release.set()  # nothing keeps the shutdown waiting


async def test_queued_starts_keep_order_and_the_limit(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-08: a freed slot goes to the first queued start; a new start queues behind it."""
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config) as rt:
        first = await start(rt, "first", agents.EchoAgent)
        queued = await rt.register_agent("queued", agents.EchoAgent)
        late = await rt.register_agent("late", agents.EchoAgent)
        await rt.start_agent(queued)
        await rt.stop_agent(first)
        assert (await rt.start_agent(late)).status is AgentStatus.QUEUED
        task = await rt.wait_for_task(await rt.submit_task("t", agent_id=queued), 5)
        assert task.assigned_agent_id == queued
        assert rt.get_capacity().active_agents == 1


class StopAware(BaseAgent):
    async def execute_task(self, task: Task) -> dict[str, bool]:
        agents.STARTED.setdefault(task.name, asyncio.Event()).set()
        while not self.context.is_stopping:  # noqa: ASYNC110 - polling the flag is the test
            await asyncio.sleep(0.005)
        return {"noticed_stop": True}


async def test_context_is_stopping_during_graceful_stop(rt: AgentRuntime) -> None:
    """F-14: during a graceful stop the running task sees is_stopping and can finish."""
    agent_id = await start(rt, "aware", StopAware)
    task_id = await rt.submit_task("work")
    await asyncio.wait_for(agents.STARTED.setdefault("work", asyncio.Event()).wait(), 5)
    await rt.stop_agent(agent_id, graceful=True, timeout_seconds=5)
    task = await rt.wait_for_task(task_id, 5)
    assert task.status is TaskStatus.COMPLETED
    assert task.output_data == {"noticed_stop": True}


async def test_values_the_database_cannot_hold_are_rejected(rt: AgentRuntime) -> None:
    """R-04: out-of-range retries and non-string idempotency keys never reach the store."""
    with pytest.raises(ValidationError, match="max_retries"):
        await rt.submit_task("t", max_retries=10**30)
    with pytest.raises(ValidationError, match="idempotency_key"):
        await rt.submit_task("t", idempotency_key=("a", 1))  # type: ignore[arg-type]
    assert rt.get_queue_status().total == 0


def test_retry_delay_never_overflows() -> None:
    """F-19: very late retries are capped, not an overflow."""
    assert retry_delay(5000, 0.5, 60.0) == 60.0
