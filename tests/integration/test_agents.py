"""Agent lifecycle end to end: hooks, pause/resume, stop, limits, groups, durable state."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from miminions import (
    AgentHookError,
    AgentRuntime,
    AgentStatus,
    AlreadyExistsError,
    BaseAgent,
    EventType,
    InvalidStateError,
    NotFoundError,
    ResourceLimits,
    RuntimeConfig,
    Task,
    TaskStatus,
    UsageBudget,
    ValidationError,
    hookimpl,
)
from miminions.kernel.task_input import MAX_JSON_DEPTH
from tests.support import agents
from tests.support.events import EventRecorder
from tests.support.machine_load import FixedLoad
from tests.support.runtime import start_agent
from tests.support.waiting import wait_until


def started(name: str) -> asyncio.Event:
    return agents.STARTED.setdefault(name, asyncio.Event())


def gate(name: str) -> asyncio.Event:
    return agents.GATES.setdefault(name, asyncio.Event())


async def test_lifecycle_hooks_are_called_in_order(rt: AgentRuntime) -> None:
    """F-11: on_start, on_error, on_pause, on_resume(state) and on_stop run when expected."""
    agent_id = await start_agent(rt, "rec", agents.RecordingAgent)
    failing = await rt.submit_task("bad", {"fail": "nope"})
    assert (await rt.wait_for_task(failing, 5)).status is TaskStatus.FAILED
    await rt.pause_agent(agent_id)
    await rt.resume_agent(agent_id)
    await rt.stop_agent(agent_id)
    assert [
        ("on_start", "rec"),
        ("execute", "bad"),
        ("on_error", ("RuntimeError", failing)),
        ("on_pause", "rec"),
        ("on_resume", {"counter": 41, "nested": {"items": [1, "two", None, 3.5]}}),
        ("on_stop", "rec"),
    ] == agents.CALLS
    assert rt.get_agent_status(agent_id).status is AgentStatus.STOPPED


async def test_pause_halts_running_task_at_safe_point(rt: AgentRuntime) -> None:
    """F-04, F-25: pause returns once the running task reached a safe point; the task
    stays halted there until resume, then finishes."""
    agent_id = await start_agent(rt, "gated", agents.GatedAgent)
    task_id = await rt.submit_task("work")
    await asyncio.wait_for(started("work").wait(), 5)
    paused = await rt.pause_agent(agent_id, timeout_seconds=5)
    assert paused.status is AgentStatus.PAUSED
    assert paused.task_id == task_id
    gate("work").set()  # the task could finish now, but it is halted at its checkpoint
    with pytest.raises(TimeoutError):
        await rt.wait_for_task(task_id, timeout_seconds=0.1)
    assert rt.get_task_status(task_id).status is TaskStatus.RUNNING
    await rt.resume_agent(agent_id)
    assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED


async def test_task_timeout_does_not_count_while_agent_paused(rt: AgentRuntime) -> None:
    """F-25: a paused agent's task timeout stops counting."""
    agent_id = await start_agent(rt, "gated", agents.GatedAgent)
    task_id = await rt.submit_task("work", timeout_seconds=0.3)
    await asyncio.wait_for(started("work").wait(), 5)
    await rt.pause_agent(agent_id)
    await asyncio.sleep(0.5)  # longer than the whole timeout: this is the time under test
    gate("work").set()
    await rt.resume_agent(agent_id)
    task = await rt.wait_for_task(task_id, 5)
    assert task.status is TaskStatus.COMPLETED, task.error_message


async def test_retry_backoff_does_not_count_while_queue_paused(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-25: retry backoff is frozen while the queue is paused."""
    config = make_config(retry_backoff_base_seconds=0.2, retry_backoff_max_seconds=0.2)
    recorder = EventRecorder()
    async with AgentRuntime(config=config, plugins=[recorder]) as rt:
        await start_agent(rt, "switch", agents.SwitchAgent)
        agents.FAILING.add("job")
        task_id = await rt.submit_task("job", max_retries=1)
        await recorder.wait_for(EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
        await rt.pause_queue()
        agents.FAILING.clear()
        await asyncio.sleep(0.4)  # twice the backoff: this is the time under test
        explanation = rt.explain(task_id)
        kinds = [reason.kind.value for reason in explanation.reasons]
        assert kinds[:2] == ["retry_backoff", "queue_paused"]
        assert rt.executor.retry_remaining(task_id) == pytest.approx(0.2, abs=0.05)
        await rt.resume_queue()
        assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED


async def test_retry_backoff_does_not_count_while_its_group_is_paused(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-25: the retry backoff of a task targeted at a group is frozen while the group is
    paused (every member paused), and counts again once a member resumes."""
    config = make_config(retry_backoff_base_seconds=0.2, retry_backoff_max_seconds=0.2)
    recorder = EventRecorder()
    async with AgentRuntime(config=config, plugins=[recorder]) as rt:
        await start_agent(rt, "one", agents.SwitchAgent, group="team")
        await start_agent(rt, "two", agents.SwitchAgent, group="team")
        agents.FAILING.add("job")
        task_id = await rt.submit_task("job", max_retries=1, group="team")
        await recorder.wait_for(EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
        await rt.pause_group("team")
        agents.FAILING.clear()
        await asyncio.sleep(0.4)  # twice the backoff: this is the time under test
        assert rt.get_task_status(task_id).status is TaskStatus.PENDING
        assert rt.executor.retry_remaining(task_id) == pytest.approx(0.2, abs=0.05)
        kinds = [reason.kind.value for reason in rt.explain(task_id).reasons]
        assert kinds[:2] == ["retry_backoff", "agent_paused"]
        await rt.resume_group("team")
        assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED


async def test_retry_backoff_counts_while_a_group_member_still_runs(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-25: pausing one member of a group does not freeze the backoff of the group's
    tasks while another member can run them."""
    config = make_config(retry_backoff_base_seconds=0.2, retry_backoff_max_seconds=0.2)
    recorder = EventRecorder()
    async with AgentRuntime(config=config, plugins=[recorder]) as rt:
        paused = await start_agent(rt, "one", agents.SwitchAgent, group="team")
        running = await start_agent(rt, "two", agents.SwitchAgent, group="team")
        agents.FAILING.add("job")
        task_id = await rt.submit_task("job", max_retries=1, group="team")
        await recorder.wait_for(EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
        await rt.pause_agent(paused)
        agents.FAILING.clear()
        task = await rt.wait_for_task(task_id, 5)
        assert task.status is TaskStatus.COMPLETED
        assert task.assigned_agent_id == running


async def test_graceful_stop_lets_task_finish(rt: AgentRuntime) -> None:
    """F-04, F-14: a graceful stop waits for the running task."""
    agent_id = await start_agent(rt, "gated", agents.GatedAgent)
    task_id = await rt.submit_task("work")
    await asyncio.wait_for(started("work").wait(), 5)
    stopping = asyncio.create_task(rt.stop_agent(agent_id, graceful=True, timeout_seconds=5))
    await asyncio.sleep(0)
    gate("work").set()
    assert (await stopping).status is AgentStatus.STOPPED
    assert rt.get_task_status(task_id).status is TaskStatus.COMPLETED


async def test_stop_timeout_requeues_task_for_another_agent(rt: AgentRuntime) -> None:
    """F-04: a task still running when the stop timeout ends is re-queued, not lost, and
    the attempt does not count."""
    first = await start_agent(rt, "first", agents.GatedAgent)
    task_id = await rt.submit_task("work")
    await asyncio.wait_for(started("work").wait(), 5)
    await rt.stop_agent(first, graceful=True, timeout_seconds=0.05)
    assert rt.get_task_status(task_id).status is TaskStatus.PENDING
    second = await start_agent(rt, "second", agents.GatedAgent)
    gate("work").set()
    task = await rt.wait_for_task(task_id, 5)
    assert task.status is TaskStatus.COMPLETED
    assert task.assigned_agent_id == second
    assert task.retry_count == 0
    assert await rt.query_events(event_type=EventType.TASK_REQUEUED, task_id=task_id)


async def test_forced_stop_skips_on_stop(rt: AgentRuntime) -> None:
    """F-04: a forced stop does not run on_stop."""
    agent_id = await start_agent(rt, "rec", agents.RecordingAgent)
    await rt.stop_agent(agent_id, graceful=False)
    assert ("on_stop", "rec") not in agents.CALLS
    assert rt.get_agent_status(agent_id).status is AgentStatus.STOPPED


async def test_max_concurrent_agents_queues_extra_starts(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-08: starts beyond max_concurrent_agents wait as QUEUED with a reason, and start in
    order when a slot frees."""
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config) as rt:
        first = await start_agent(rt, "first", agents.EchoAgent)
        second = await rt.register_agent("second", agents.EchoAgent)
        queued = await rt.start_agent(second)
        assert queued.status is AgentStatus.QUEUED
        assert "free agent slot" in (queued.status_reason or "")
        capacity = rt.get_capacity()
        assert (
            capacity.active_agents,
            capacity.free_agent_slots,
            capacity.queued_agent_starts,
        ) == (1, 0, 1)
        task_id = await rt.submit_task("for-second", agent_id=second)
        [held] = rt.explain(task_id).reasons
        assert held.kind.value == "concurrency_limit"
        assert "free agent slot (1 of 1 in use)" in held.message
        await rt.stop_agent(first)
        task = await rt.wait_for_task(task_id, 5)
        assert task.assigned_agent_id == second
        assert rt.get_agent_status(second).status is AgentStatus.RUNNING


async def test_group_operations(rt: AgentRuntime) -> None:
    """F-18, F-25: lifecycle operations apply to a whole group in one call."""
    ids = [await rt.register_agent(f"w{i}", agents.EchoAgent, group="workers") for i in range(3)]
    other = await start_agent(rt, "other", agents.EchoAgent, group="others")
    assert {a.status for a in await rt.start_group("workers")} == {AgentStatus.RUNNING}
    assert {a.status for a in await rt.pause_group("workers")} == {AgentStatus.PAUSED}
    assert rt.get_agent_status(other).status is AgentStatus.RUNNING
    assert {a.status for a in await rt.resume_group("workers")} == {AgentStatus.RUNNING}
    assert {a.status for a in await rt.stop_group("workers")} == {AgentStatus.STOPPED}
    assert sorted(a.agent_id for a in rt.list_agents(status="stopped")) == sorted(ids)


async def test_wrong_lifecycle_state_is_rejected(rt: AgentRuntime) -> None:
    """R-04: calls in the wrong lifecycle state raise a clear InvalidStateError."""
    agent_id = await rt.register_agent("echo", agents.EchoAgent)
    with pytest.raises(InvalidStateError, match=r"cannot pause agent .* it is registered"):
        await rt.pause_agent(agent_id)
    with pytest.raises(InvalidStateError, match="cannot resume"):
        await rt.resume_agent(agent_id)
    await rt.start_agent(agent_id)
    with pytest.raises(InvalidStateError, match="cannot start"):
        await rt.start_agent(agent_id)
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING


async def test_register_rejects_bad_input(rt: AgentRuntime) -> None:
    """R-04: duplicate names, non-agents, bad config and unknown isolation are rejected."""
    await rt.register_agent("echo", agents.EchoAgent)
    with pytest.raises(AlreadyExistsError):
        await rt.register_agent("echo", agents.EchoAgent)
    with pytest.raises(ValidationError, match="cannot register"):
        await rt.register_agent("number", 42)
    with pytest.raises(ValidationError, match="JSON"):
        await rt.register_agent("cfg", agents.EchoAgent, config={"x": object()})
    with pytest.raises(Exception, match="isolation 'nope'"):
        await rt.register_agent("iso", agents.EchoAgent, isolation="nope")
    assert [a.name for a in rt.list_agents()] == ["echo"]


class BrokenStart(BaseAgent):
    async def on_start(self) -> None:
        raise OSError("no connection")

    async def execute_task(self, task: Task) -> None:
        return None


async def test_failing_on_start_marks_agent_failed(rt: AgentRuntime) -> None:
    """F-07: an agent whose on_start raises is FAILED with the reason; the runtime goes on."""
    agent_id = await rt.register_agent("broken", BrokenStart)
    status = await rt.start_agent(agent_id)
    assert status.status is AgentStatus.FAILED
    assert "OSError: no connection" in (status.error_message or "")
    await start_agent(rt, "echo", agents.EchoAgent)
    assert (
        await rt.wait_for_task(await rt.submit_task("still works"), 5)
    ).status is TaskStatus.COMPLETED


async def test_paused_state_survives_restart(make_config: Callable[..., RuntimeConfig]) -> None:
    """F-09: what on_pause returned is handed back unchanged to on_resume after a restart."""
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await start_agent(rt, "rec", agents.RecordingAgent)
        await rt.pause_agent(agent_id)
    agents.CALLS.clear()
    async with AgentRuntime(config=make_config()) as rt:
        again = await rt.register_agent("rec", agents.RecordingAgent)
        assert again == agent_id
        assert rt.get_agent_status(agent_id).status is AgentStatus.PAUSED
        await rt.resume_agent(agent_id)
        assert agents.CALLS == [
            ("on_start", "rec"),
            ("on_resume", {"counter": 41, "nested": {"items": [1, "two", None, 3.5]}}),
        ]
        assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING
        task = await rt.wait_for_task(await rt.submit_task("after"), 5)
        assert task.status is TaskStatus.COMPLETED


class NeverYields(BaseAgent):
    """Runs a task that never reaches a safe point until released."""

    async def execute_task(self, task: Task) -> dict[str, bool]:
        started(task.name).set()
        await gate(task.name).wait()  # not a context call: no safe point
        return {"done": True}


async def test_pause_that_times_out_is_abandoned(rt: AgentRuntime) -> None:
    """F-04: when no safe point comes in time the pause is abandoned; the agent keeps
    running and takes new tasks."""
    agent_id = await start_agent(rt, "busy", NeverYields)
    first = await rt.submit_task("first")
    await asyncio.wait_for(started("first").wait(), 5)
    with pytest.raises(TimeoutError, match="abandoned"):
        await rt.pause_agent(agent_id, timeout_seconds=0.05)
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING
    gate("first").set()
    gate("second").set()
    assert (await rt.wait_for_task(first, 5)).status is TaskStatus.COMPLETED
    second = await rt.wait_for_task(await rt.submit_task("second"), 5)
    assert second.assigned_agent_id == agent_id


class BadPause(BaseAgent):
    async def on_pause(self) -> dict[str, Any]:
        raise RuntimeError("cannot save")

    async def execute_task(self, task: Task) -> None:
        return None


async def test_failing_on_pause_fails_agent_and_frees_its_slot(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-07, F-08: an agent whose on_pause raises is FAILED and gives its slot back."""
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config) as rt:
        bad = await start_agent(rt, "bad", BadPause)
        waiting = await rt.register_agent("waiting", agents.EchoAgent)
        assert (await rt.start_agent(waiting)).status is AgentStatus.QUEUED
        with pytest.raises(AgentHookError, match="on_pause failed: RuntimeError: cannot save"):
            await rt.pause_agent(bad)
        assert rt.get_agent_status(bad).status is AgentStatus.FAILED
        task = await rt.wait_for_task(await rt.submit_task("t", agent_id=waiting), 5)
        assert task.status is TaskStatus.COMPLETED
        assert rt.get_capacity().active_agents == 1


async def test_agent_starts_wait_while_the_machine_is_loaded(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-08: above ``max_load_per_cpu`` a start queues with the load as its reason; once
    the load falls the agent starts on its own, in order."""
    probe = FixedLoad(1.7)
    recorder = EventRecorder()
    config = make_config(limits=ResourceLimits(max_load_per_cpu=0.8))
    async with AgentRuntime(config=config, plugins=[probe, recorder]) as rt:
        first = await rt.register_agent("first", agents.EchoAgent)
        second = await rt.register_agent("second", agents.EchoAgent)
        assert (await rt.start_agent(first)).status is AgentStatus.QUEUED
        assert (await rt.start_agent(second)).status is AgentStatus.QUEUED
        reason = rt.get_agent_status(first).status_reason or ""
        assert "machine load (1.70 per CPU)" in reason
        assert "below 0.8" in reason
        task_id = await rt.submit_task("echo", {"x": 1})
        assert rt.get_task_status(task_id).status is TaskStatus.PENDING
        [held] = rt.explain(task_id).reasons  # F-24 names the load, not the slots
        assert held.kind.value == "concurrency_limit"
        assert "machine load (1.70 per CPU)" in held.message
        assert "max_concurrent_agents" not in held.message
        assert "free agent slot" not in held.message

        probe.load = 0.2
        started = await recorder.wait_for(EventType.AGENT_STARTED, agent_id=second, within=5)
        order = [e.agent_id for e in recorder.matching(EventType.AGENT_STARTED)]
        assert order == [first, second]
        assert started.agent_id == second
        assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED


async def test_without_a_load_limit_the_load_is_not_consulted(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-08: ``max_load_per_cpu`` unset (the default) means starts never wait for load."""
    async with AgentRuntime(config=make_config(), plugins=[FixedLoad(50.0)]) as rt:
        agent_id = await rt.register_agent("a", agents.EchoAgent)
        assert (await rt.start_agent(agent_id)).status is AgentStatus.RUNNING


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_spent_usage_budget_pauses_the_agent(
    make_config: Callable[..., RuntimeConfig], isolation: str
) -> None:
    """F-27: an agent whose self-reported tokens reach its budget is paused by the circuit
    breaker (BUDGET_EXHAUSTED, a status reason); after reset_usage and resume it works on."""
    recorder = EventRecorder()
    async with AgentRuntime(config=make_config(), plugins=[recorder]) as rt:
        limits = ResourceLimits(usage_budget=UsageBudget(tokens=100))
        agent_id = await rt.register_agent(
            "spender", agents.UsageAgent, isolation=isolation, limits=limits
        )
        await rt.start_agent(agent_id)
        for _ in range(2):
            task = await rt.wait_for_task(await rt.submit_task("t", {"tokens": 60}), 10)
            assert task.status is TaskStatus.COMPLETED
        event = await recorder.wait_for(EventType.BUDGET_EXHAUSTED, agent_id=agent_id)
        assert event.details["resource"] == "tokens"
        assert (event.details["used"], event.details["budget"]) == (120, 100)
        await recorder.wait_for(EventType.AGENT_PAUSED, agent_id=agent_id)
        status = rt.get_agent_status(agent_id)
        assert status.status is AgentStatus.PAUSED
        assert status.tokens_used == 120
        assert "circuit breaker" in (status.status_reason or "")
        assert "token budget (120 of 100)" in (status.status_reason or "")

        rt.reset_usage(agent_id)
        await rt.resume_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("t", {"tokens": 10}), 10)
        assert task.status is TaskStatus.COMPLETED
        assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING


@pytest.mark.parametrize("bad", [5, ["writers"], ""])
async def test_reset_usage_refuses_a_group_that_is_not_a_name(rt: AgentRuntime, bad: Any) -> None:
    """A group of the wrong type reset nothing, silently, leaving its breaker unarmed."""
    await rt.register_agent("w", agents.EchoAgent, group="writers")
    with pytest.raises(ValidationError, match="group"):
        rt.reset_usage(group=bad)


async def test_reset_usage_refuses_a_group_nobody_knows(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A misspelled group is NotFoundError; a group with members or with a budget resets."""
    config = make_config(group_budgets={"budgeted": UsageBudget(tokens=5)})
    async with AgentRuntime(config=config) as rt:
        await rt.register_agent("w", agents.EchoAgent, group="writers")
        with pytest.raises(NotFoundError, match="no group 'writer'"):
            rt.reset_usage(group="writer")
        rt.reset_usage(group="writers")
        rt.reset_usage(group="budgeted")


@pytest.mark.parametrize("isolation", ["inline", "process"])
@pytest.mark.parametrize("hook", ["on_start", "on_resume"])
async def test_a_budget_spent_while_starting_or_resuming_pauses_the_agent(
    make_config: Callable[..., RuntimeConfig], isolation: str, hook: str
) -> None:
    """F-27: usage reported by on_start or on_resume trips the breaker like any other: the
    agent is paused once it runs. It used to be skipped as not running, and as a breaker
    trips once the agent then ran unchecked, taking tasks."""
    recorder = EventRecorder()
    async with AgentRuntime(config=make_config(), plugins=[recorder]) as rt:
        agent_id = await rt.register_agent(
            "spender",
            agents.UsageAgent,
            isolation=isolation,
            limits=ResourceLimits(usage_budget=UsageBudget(tokens=10)),
            config={hook: 25},
        )
        await rt.start_agent(agent_id)
        if hook == "on_resume":
            await rt.pause_agent(agent_id)
            await rt.resume_agent(agent_id)
        await recorder.wait_for(EventType.BUDGET_EXHAUSTED, agent_id=agent_id)
        await wait_until(
            lambda: rt.get_agent_status(agent_id).status is AgentStatus.PAUSED,
            "the breaker's pause",
        )
        status = rt.get_agent_status(agent_id)
        assert status.status is AgentStatus.PAUSED
        assert "token budget (25 of 10)" in (status.status_reason or "")


class TeamBudget:
    """Sets the group budget from ``miminions_configure`` (a plugin adjusting the
    configuration before anything is built)."""

    miminions_plugin_name = "team_budget"

    @hookimpl
    def miminions_configure(self, config: RuntimeConfig) -> None:
        config.group_budgets = {"team": UsageBudget(cost=1.0)}


@pytest.mark.parametrize("given_by", ["config", "configure-hook"])
async def test_spent_group_budget_pauses_the_whole_group(
    make_config: Callable[..., RuntimeConfig], given_by: str
) -> None:
    """F-27: a group budget counts every member's reports; spending it pauses the group.
    A budget that ``miminions_configure`` sets counts the same."""
    recorder = EventRecorder()
    if given_by == "config":
        config, plugins = make_config(group_budgets={"team": UsageBudget(cost=1.0)}), []
    else:
        config, plugins = make_config(), [TeamBudget()]
    async with AgentRuntime(config=config, plugins=[recorder, *plugins]) as rt:
        ids = [await rt.register_agent(n, agents.UsageAgent, group="team") for n in "ab"]
        for agent_id in ids:
            await rt.start_agent(agent_id)
        for agent_id in ids:
            task_id = await rt.submit_task("t", {"cost": 0.6}, agent_id=agent_id)
            assert (await rt.wait_for_task(task_id, 10)).status is TaskStatus.COMPLETED
        event = await recorder.wait_for(EventType.BUDGET_EXHAUSTED)
        assert (event.details["scope"], event.details["name"]) == ("group", "team")
        for agent_id in ids:
            await recorder.wait_for(EventType.AGENT_PAUSED, agent_id=agent_id)
        assert {rt.get_agent_status(i).status for i in ids} == {AgentStatus.PAUSED}


async def test_bad_usage_reports_fail_the_task_clearly(rt: AgentRuntime) -> None:
    """F-27, R-04: negative or non-numeric usage is a ValidationError in the agent."""
    agent_id = await start_agent(rt, "spender", agents.UsageAgent)
    task = await rt.wait_for_task(await rt.submit_task("t", {"tokens": -1}, agent_id=agent_id), 10)
    assert task.status is TaskStatus.FAILED
    assert "tokens must be an integer from 0 to" in (task.error_message or "")


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_forced_stop_requeues_running_work_at_once(
    make_config: Callable[..., RuntimeConfig], isolation: str
) -> None:
    """F-14: ``stop(graceful=False)`` does not wait for running tasks: they are re-queued
    (found pending by the next runtime) and no worker process is left."""
    recorder = EventRecorder()
    config = make_config(shutdown_timeout_seconds=30.0)
    rt = AgentRuntime(config=config, plugins=[recorder])
    await rt.start()
    try:
        agent_id = await start_agent(rt, "sleepy", agents.SleepyAgent, isolation=isolation)
        pid = rt.get_agent_status(agent_id).process_id
        task_id = await rt.submit_task("nap", {"seconds": 60})
        await recorder.wait_for(EventType.TASK_STARTED, task_id=task_id)
    finally:
        async with asyncio.timeout(10):  # far below the 30 s graceful timeout
            await rt.stop(graceful=False)
    if pid is not None:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    async with AgentRuntime(config=config) as again:
        assert again.get_task_status(task_id).status is TaskStatus.PENDING


async def test_agent_status_counts_as_set_fields(rt: AgentRuntime) -> None:
    """The per-task fields of an agent's status are part of what a dump without defaults
    shows (they are written directly on the hot path, not through pydantic)."""
    agent_id = await start_agent(rt, "counted", agents.EchoAgent)
    await rt.wait_for_task(await rt.submit_task("echo", agent_id=agent_id))
    dumped = rt.get_agent_status(agent_id).model_dump(exclude_unset=True)
    assert dumped["tasks_completed"] == 1
    assert dumped["tasks_failed"] == 0
    assert dumped["task_id"] is None


async def test_a_config_nested_hundreds_of_levels_deep_is_registered_and_stored(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A registration config may nest as deep as any JSON value (its agent row was written
    by pydantic, which gave up past about 255 levels, after the agent was registered)."""
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH - 1):
        deep = [deep]
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent("deep", agents.EchoAgent, config={"x": deep})
    async with AgentRuntime(config=make_config()) as rt:
        assert await rt.register_agent("deep", agents.EchoAgent, config={"x": deep}) == agent_id
        [stored] = await rt.store.load_agents()
        assert stored.spec.config == {"x": deep}
