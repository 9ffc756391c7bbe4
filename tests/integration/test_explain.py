"""explain() and the estimated wait while agents are being paused, stopping or running
on_error, and with tasks no agent of the task takes."""

from __future__ import annotations

import asyncio
from typing import Any

from miminions import AgentRuntime, AgentStatus, BaseAgent, HoldKind, Task, TaskStatus
from miminions.testing_tools import wait_until
from tests.support import agents
from tests.support.runtime import start_agent


class SlowPauseAgent(BaseAgent):
    """Completes its tasks at once; its on_pause waits for ``release`` (say, it flushes a
    buffer to disk before pausing)."""

    entered: asyncio.Event
    release: asyncio.Event

    async def on_pause(self) -> dict[str, Any]:
        SlowPauseAgent.entered.set()
        await SlowPauseAgent.release.wait()
        return {}

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {"ok": True}


async def test_explain_says_the_target_agent_is_being_paused(
    rt: AgentRuntime,
) -> None:
    """While pause_agent() waits for on_pause, the agent is still reported ``running`` but
    takes no task: explain() of a task targeted at it says it is being paused (it named no
    reason and estimated a wait of 0 s)."""
    SlowPauseAgent.entered = asyncio.Event()
    SlowPauseAgent.release = asyncio.Event()
    agent_id = await start_agent(rt, "slow-pause", SlowPauseAgent)
    warm = await rt.wait_for_task(await rt.submit_task("warm", agent_id=agent_id), 5)
    assert warm.status is TaskStatus.COMPLETED  # a duration to estimate from
    pausing = asyncio.ensure_future(rt.pause_agent(agent_id))
    try:
        await asyncio.wait_for(SlowPauseAgent.entered.wait(), 5)
        held = await rt.submit_task("held", agent_id=agent_id)
        assert rt.get_task_status(held).status is TaskStatus.PENDING
        explanation = rt.explain(held)
        assert [r.kind for r in explanation.reasons] == [HoldKind.AGENT_PAUSED]
        assert "being paused" in explanation.summary
        assert explanation.estimated_wait_seconds is None  # no agent takes tasks now
    finally:
        SlowPauseAgent.release.set()
        await pausing
        await rt.resume_agent(agent_id)
    assert (await rt.wait_for_task(held, 5)).status is TaskStatus.COMPLETED


async def test_explain_calls_a_stopping_agent_stopping(rt: AgentRuntime) -> None:
    """An agent being stopped (graceful stop waiting for its task) is ``stopping``; explain()
    of a task targeted at it said the agent was *starting*, the opposite of the truth."""
    agent_id = await start_agent(rt, "gated", agents.GatedAgent)
    running = await rt.submit_task("stop-first", agent_id=agent_id)
    await asyncio.wait_for(agents.STARTED.setdefault("stop-first", asyncio.Event()).wait(), 5)
    waiting = await rt.submit_task("stop-second", agent_id=agent_id)
    stopping = asyncio.ensure_future(rt.stop_agent(agent_id, timeout_seconds=10))
    try:
        await wait_until(
            lambda: rt.get_agent_status(agent_id).status is AgentStatus.STOPPING, "stopping", 5
        )
        summary = rt.explain(waiting).summary
        assert "starting" not in summary, summary
        assert f"stopping: {agent_id}" in summary, summary
    finally:
        agents.GATES.setdefault("stop-first", asyncio.Event()).set()
        await stopping
    assert (await rt.wait_for_task(running, 5)).status is TaskStatus.COMPLETED


async def test_estimated_wait_counts_an_agent_in_on_error_as_busy(
    rt: AgentRuntime,
) -> None:
    """An agent still running on_error takes no task: explain() says AGENTS_BUSY, and the
    estimate counts the round it needs (it was 0 s: the agent has no task_id)."""
    agent = agents.SlowOnErrorAfterFailure()
    agent_id = await start_agent(rt, "cleaner", agent)
    failed = await rt.submit_task("fail", agent_id=agent_id)
    assert (await rt.wait_for_task(failed, 5)).status is TaskStatus.FAILED  # a duration
    await asyncio.wait_for(agent.in_on_error.wait(), 5)
    try:
        waiting = await rt.submit_task("next", agent_id=agent_id)
        explanation = rt.explain(waiting)
        assert [r.kind for r in explanation.reasons] == [HoldKind.AGENTS_BUSY]
        assert explanation.queue_position == 0
        # Its only agent is busy: at least one round of the mean task duration.
        assert explanation.estimated_wait_seconds, explanation
        assert rt.get_task_status(waiting).estimated_wait_seconds, "get_task_status too"
    finally:
        agent.release.set()
    assert (await rt.wait_for_task(waiting, 5)).status is TaskStatus.COMPLETED


async def test_estimated_wait_leaves_out_tasks_no_agent_of_the_task_takes(
    rt: AgentRuntime,
) -> None:
    """The estimated wait divided the *global* queue position by the agents serving the
    task's route: ten urgent tasks of another group made the estimate of a task next in
    line for its own agent eleven rounds instead of one (explain() said none is ahead)."""
    busy_agent = await start_agent(rt, "a-member", agents.GatedAgent, group="a")
    await rt.register_agent("b-member", agents.EchoAgent, group="b")  # never started
    agents.GATES.setdefault("a-warm", asyncio.Event()).set()
    warm = await rt.wait_for_task(await rt.submit_task("a-warm", group="a"), 5)
    assert warm.status is TaskStatus.COMPLETED  # a duration to estimate from
    running = await rt.submit_task("a-busy", group="a")
    await asyncio.wait_for(agents.STARTED.setdefault("a-busy", asyncio.Event()).wait(), 5)
    for n in range(10):
        await rt.submit_task(f"b-{n}", group="b", priority=0)
    mine = await rt.submit_task("a-next", group="a", priority=50)

    explanation = rt.explain(mine)
    assert [r.kind for r in explanation.reasons] == [HoldKind.AGENTS_BUSY]  # nothing ahead
    mean = rt.task_book.mean_duration
    assert mean is not None
    assert explanation.estimated_wait_seconds is not None
    rounds = explanation.estimated_wait_seconds / mean
    # One round: its agent finishes the task it runs, then takes this one.
    assert round(rounds, 6) == 1.0, f"estimated {rounds:.1f} rounds of the mean duration"

    agents.GATES.setdefault("a-busy", asyncio.Event()).set()
    agents.GATES.setdefault("a-next", asyncio.Event()).set()
    assert (await rt.wait_for_task(mine, 5)).assigned_agent_id == busy_agent
    assert (await rt.wait_for_task(running, 5)).status is TaskStatus.COMPLETED


async def test_tasks_targeted_at_an_agent_that_takes_no_tasks_do_not_hold_back_an_untargeted_one(
    rt: AgentRuntime,
) -> None:
    """An untargeted task is next in line for the only agent that takes tasks ("worker",
    busy). Ten urgent tasks targeted at "idle" (registered, never started) were counted
    ahead of it: explain() said 10 TASKS_AHEAD, and the estimate was 11 rounds, not 1."""
    worker = await start_agent(rt, "worker", agents.GatedAgent)
    idle = await rt.register_agent("idle", agents.EchoAgent)  # never started
    agents.GATES.setdefault("warm", asyncio.Event()).set()
    warm = await rt.wait_for_task(await rt.submit_task("warm", agent_id=worker), 5)
    assert warm.status is TaskStatus.COMPLETED  # a duration to estimate from
    running = await rt.submit_task("busy", agent_id=worker)
    await asyncio.wait_for(agents.STARTED.setdefault("busy", asyncio.Event()).wait(), 5)
    for n in range(10):
        await rt.submit_task(f"for-idle-{n}", agent_id=idle, priority=0)
    mine = await rt.submit_task("untargeted", priority=50)

    try:
        explanation = rt.explain(mine)
        kinds = [r.kind for r in explanation.reasons]
        ahead = [r.message for r in explanation.reasons if r.kind is HoldKind.TASKS_AHEAD]
        mean = rt.task_book.mean_duration
        assert mean is not None
        assert explanation.estimated_wait_seconds is not None
        rounds = explanation.estimated_wait_seconds / mean
        # worker finishes "busy", then takes this one: nothing it would take is ahead.
        assert round(rounds, 6) == 1.0, f"estimated {rounds:.1f} rounds of the mean duration"
        assert kinds == [HoldKind.AGENTS_BUSY], ahead
    finally:
        agents.GATES.setdefault("busy", asyncio.Event()).set()
        agents.GATES.setdefault("untargeted", asyncio.Event()).set()
    done = await rt.wait_for_task(mine, 5)
    assert done.assigned_agent_id == worker  # it was indeed next for worker
    assert (await rt.wait_for_task(running, 5)).status is TaskStatus.COMPLETED
