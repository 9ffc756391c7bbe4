"""Lifecycle calls their caller gives up on (``asyncio.wait_for``, a cancelled task): the
agent is never left in a state no call can leave or one that serves no tasks (F-04, F-14).
A pause given up is abandoned, as one past its timeout; a stop given up ends at once, as a
forced one; a start given up leaves the agent stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from unittest.mock import ANY

import pytest

from miminions import AgentRuntime, AgentStatus, EventType, RuntimeConfig, TaskStatus
from tests.support import agents
from tests.support.group_agents import LateSafePointAgent
from tests.support.lifecycle_agents import HangingHooksAgent, hook_log
from tests.support.waiting import WAIT_SECONDS, wait_until

S = AgentStatus


async def give_up(call: Awaitable[object], until: Callable[[], bool], what: str) -> None:
    """Run ``call``, cancel it once ``until()`` holds, and wait for it to end."""
    running = asyncio.ensure_future(call)
    await wait_until(until, what)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, WAIT_SECONDS)


def resumes(log: Path) -> int:
    """How many times the agent's ``on_resume`` began."""
    return [entry[0] for entry in hook_log(log)].count("resume")


async def busy_member(rt: AgentRuntime, agent: type, task: str = "busy") -> tuple[str, str]:
    """A started member of group ``g`` running the task ``task``; (agent id, task id)."""
    agent_id = await rt.register_agent("member", agent, group="g")
    await rt.start_group("g")
    task_id = await rt.submit_task(task, group="g")
    await asyncio.wait_for(agents.STARTED.setdefault(task, asyncio.Event()).wait(), WAIT_SECONDS)
    return agent_id, task_id


async def takes_tasks(rt: AgentRuntime) -> bool:
    """Whether a new task for group ``g`` starts (its gate is open up front)."""
    agents.GATES.setdefault("next", asyncio.Event()).set()
    next_id = await rt.submit_task("next", group="g")
    try:
        await asyncio.wait_for(
            agents.STARTED.setdefault("next", asyncio.Event()).wait(), WAIT_SECONDS
        )
    except TimeoutError:
        return False
    finally:
        await rt.cancel_task(next_id)
    return True


@pytest.mark.parametrize("call", ["pause_agent", "pause_group"])
async def test_a_pause_given_up_leaves_the_agent_taking_tasks(rt: AgentRuntime, call: str) -> None:
    """The pause is abandoned as one past its timeout is: the agent keeps running and is
    given tasks (it was running but never given one again)."""
    member, busy = await busy_member(rt, LateSafePointAgent)
    pause = rt.pause_agent(member) if call == "pause_agent" else rt.pause_group("g")
    await give_up(pause, lambda: rt.agent_book.get(member).pausing is not None, "a pause")
    assert rt.get_agent_status(member).status is S.RUNNING
    await rt.cancel_task(busy)
    assert await takes_tasks(rt)


@pytest.mark.parametrize("call", ["stop_agent", "stop_group"])
async def test_a_stop_given_up_ends_at_once(rt: AgentRuntime, call: str) -> None:
    """A graceful stop whose caller stops waiting for the running task ends as a forced
    stop: the task goes back to the queue and the agent is stopped (it stayed ``stopping``,
    a status no call can leave)."""
    member, busy = await busy_member(rt, agents.SleepyAgent)
    stop = (
        rt.stop_agent(member, timeout_seconds=3600)
        if call == "stop_agent"
        else rt.stop_group("g", timeout_seconds=3600)
    )
    await give_up(stop, lambda: rt.get_agent_status(member).status is S.STOPPING, "the stop")
    assert rt.get_agent_status(member).status is S.STOPPED
    assert rt.get_task_status(busy).status is TaskStatus.PENDING
    assert rt.get_capacity().active_agents == 0
    assert (await rt.start_agent(member)).status is S.RUNNING


async def test_a_start_given_up_leaves_the_agent_stopped(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """A start whose caller gives up during ``on_start`` is undone: the agent is stopped
    (it stayed ``starting`` for good, holding an agent slot, skipped by ``start_group``),
    and starting it again works."""
    log = tmp_path / "hooks.jsonl"
    async with AgentRuntime(config=make_config(agent_start_timeout_seconds=120.0)) as rt:
        agent_id = await rt.register_agent(
            "hooks",
            HangingHooksAgent,
            group="g",
            isolation=isolation,
            config={"log": str(log), "hang": ["start"]},  # the first on_start only
        )
        await give_up(rt.start_group("g"), lambda: ["start"] in hook_log(log), "on_start to begin")
        status = rt.get_agent_status(agent_id)
        assert status.status is S.STOPPED
        assert status.process_id is None
        assert "cancelled" in (status.status_reason or "")
        assert rt.get_capacity().active_agents == 0
        stopped = await rt.query_events(event_type=EventType.AGENT_STOPPED, agent_id=agent_id)
        assert len(stopped) == 1
        assert [agent.agent_id for agent in await rt.start_group("g")] == [agent_id]
        assert rt.get_agent_status(agent_id).status is S.RUNNING


@pytest.mark.parametrize("host", ["running", "restarted"])
async def test_a_resume_given_up_leaves_the_agent_paused_with_its_state(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path, host: str
) -> None:
    """A resume whose caller gives up during ``on_resume`` leaves the agent paused with the
    state ``on_pause`` saved, whether its host was running (``on_resume`` is cancelled) or
    the runtime restarted since the pause (the resume starts a host): the next resume hands
    ``on_resume`` that state."""
    log = tmp_path / "hooks.jsonl"
    config = make_config(agent_start_timeout_seconds=120.0)

    async def register(rt: AgentRuntime) -> str:
        return await rt.register_agent(
            "hooks",
            HangingHooksAgent,
            isolation=isolation,
            config={"log": str(log), "hang": ["resume"]},  # the first on_resume only
        )

    async with AgentRuntime(config=config) as rt:
        agent_id = await register(rt)
        await rt.start_agent(agent_id)
        await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
        if host == "restarted":
            await rt.stop()
            rt = AgentRuntime(config=config)
            await rt.start()
            assert await register(rt) == agent_id
        try:
            await give_up(rt.resume_agent(agent_id), lambda: resumes(log) == 1, "on_resume")
            assert rt.get_agent_status(agent_id).status is S.PAUSED
            assert rt.get_capacity().active_agents == (1 if host == "running" else 0)
            assert (await rt.resume_agent(agent_id)).status is S.RUNNING
            assert resumes(log) == 2
            assert hook_log(log)[-1] == ["resume", {"pid": ANY, "note": "saved by on_pause"}]
        finally:
            await rt.stop()
