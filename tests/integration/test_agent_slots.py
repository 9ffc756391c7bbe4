"""Agent slots: a stop whose caller gave up while it waited for the agent's lock (having
abandoned the call in flight), and queue status numbers that must match reality."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    EventType,
    InvalidStateError,
    ResourceLimits,
    RuntimeConfig,
    Task,
)
from tests.support import agents
from tests.support.events import EventRecorder
from tests.support.machine_load import FixedLoad
from tests.support.waiting import wait_until

S = AgentStatus

# "entered": the slow hook began; "cancelled": the stop abandoned (cancelled) it;
# "release": let the hook's clean-up end. Made afresh for each test's loop.
EVENTS: dict[str, asyncio.Event] = {}


def _reset() -> None:
    for name in ("entered", "cancelled", "release"):
        EVENTS[name] = asyncio.Event()


async def _hook_that_cleans_up_on_cancel() -> None:
    """Waits forever; cancelled, it cleans up (closes a connection, say) before giving up."""
    EVENTS["entered"].set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        EVENTS["cancelled"].set()
        await EVENTS["release"].wait()
        raise


class SlowStart(BaseAgent):
    async def on_start(self) -> None:
        await _hook_that_cleans_up_on_cancel()

    async def execute_task(self, task: Task) -> Any:
        return {"ok": True}


class SlowPause(BaseAgent):
    async def on_pause(self) -> Any:
        await _hook_that_cleans_up_on_cancel()

    async def execute_task(self, task: Task) -> Any:
        return {"ok": True}


async def test_a_given_up_stop_of_a_starting_agent_still_frees_its_slot(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """stop_agent abandons the on_start in progress, then its caller gives up (wait_for /
    cancel) while it waits for the agent's lock. The stop still happens (forced), and the
    slot goes to the queued start (no stop came: the agent stayed ``starting``, holding
    the only slot, and the queued start waited for good)."""
    _reset()
    recorder = EventRecorder()
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config, plugins=[recorder]) as rt:
        slow = await rt.register_agent("slow", SlowStart)
        waiting = await rt.register_agent("waiting", agents.EchoAgent)
        starting = asyncio.ensure_future(rt.start_agent(slow))
        await asyncio.wait_for(EVENTS["entered"].wait(), 5)
        assert (await rt.start_agent(waiting)).status is S.QUEUED

        stopping = asyncio.ensure_future(rt.stop_agent(slow, graceful=False))
        await asyncio.wait_for(EVENTS["cancelled"].wait(), 5)  # the stop abandoned on_start
        stopping.cancel()  # ...and its caller gives up while it waits for the lock
        with pytest.raises(asyncio.CancelledError):
            await stopping
        EVENTS["release"].set()
        with pytest.raises(InvalidStateError, match="abandoned because the agent is being stopped"):
            await starting

        await recorder.wait_for(EventType.AGENT_STARTED, agent_id=waiting, within=5)
        assert rt.get_agent_status(slow).status is S.STOPPED


async def test_a_given_up_stop_of_a_pausing_agent_still_stops_it(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """Same with a pause: the stop abandons the pause at once, then its caller gives up
    while it waits for the lock. The agent still ends stopped (it stayed ``running``,
    holding its slot, but taken off the executor for the pause: it never got a task)."""
    _reset()
    async with AgentRuntime(config=make_config()) as rt:
        agent = await rt.register_agent("agent", SlowPause)
        await rt.start_agent(agent)
        pausing = asyncio.ensure_future(rt.pause_agent(agent))
        await asyncio.wait_for(EVENTS["entered"].wait(), 5)

        stopping = asyncio.ensure_future(rt.stop_agent(agent, graceful=False))
        await asyncio.wait_for(EVENTS["cancelled"].wait(), 5)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        EVENTS["release"].set()
        with pytest.raises(InvalidStateError, match="abandoned"):
            await pausing

        await wait_until(
            lambda: rt.get_agent_status(agent).status is S.STOPPED, "the given-up stop"
        )
        await rt.start_agent(agent)  # and it can be started again, and work
        task = await rt.wait_for_task(await rt.submit_task("work", agent_id=agent), 5)
        assert task.status.value == "completed"


async def test_a_queued_agents_status_reason_follows_what_it_waits_for(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """Two starts queue for the machine load (one slot). Once the load falls the first
    starts and the second now waits for the slot, as explain() and its status_reason
    say (which kept naming the machine load)."""
    probe = FixedLoad(1.7)
    recorder = EventRecorder()
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1, max_load_per_cpu=0.8))
    async with AgentRuntime(config=config, plugins=[probe, recorder]) as rt:
        first = await rt.register_agent("first", agents.EchoAgent)
        second = await rt.register_agent("second", agents.EchoAgent)
        assert (await rt.start_agent(first)).status is S.QUEUED
        assert (await rt.start_agent(second)).status is S.QUEUED
        probe.load = 0.2
        await recorder.wait_for(EventType.AGENT_STARTED, agent_id=first, within=5)

        task_id = await rt.submit_task("t", agent_id=second)
        [held] = rt.explain(task_id).reasons
        assert "free agent slot (1 of 1 in use)" in held.message  # explain() is right
        reason = rt.get_agent_status(second).status_reason or ""
        assert "free agent slot (1 of 1 in use)" in reason, reason


async def test_capacity_after_a_cut_short_stop_counts_no_stopped_agent(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A cancelled rt.stop() records every agent stopped, and get_capacity() counts none
    of them as holding a slot (it said active_agents 2, free_agent_slots 0)."""
    rt = AgentRuntime(config=make_config(limits=ResourceLimits(max_concurrent_agents=2)))
    await rt.start()
    sleepy = await rt.register_agent("sleepy", agents.SleepyAgent)
    echo = await rt.register_agent("echo", agents.EchoAgent)
    await rt.start_agent(sleepy)
    await rt.start_agent(echo)
    await rt.submit_task("nap", agent_id=sleepy)
    await asyncio.wait_for(agents.STARTED.setdefault("nap", asyncio.Event()).wait(), 5)
    stopping = asyncio.ensure_future(rt.stop(timeout_seconds=30))
    await asyncio.sleep(0)  # let the stop begin (it waits for the sleeping task)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert {a.status for a in rt.list_agents()} == {S.STOPPED}
    capacity = rt.get_capacity()
    assert (capacity.active_agents, capacity.free_agent_slots) == (0, 2)
