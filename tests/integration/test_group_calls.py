"""Group calls (``start_group``, ``pause_group``, ``resume_group``, ``stop_group``): a failing
member does not cut the call short, and members another call got to first are skipped."""

from __future__ import annotations

import asyncio

import pytest

from miminions import AgentHookError, AgentRuntime, AgentStatus, TaskStatus, ValidationError
from tests.support import agents
from tests.support.group_agents import LateSafePointAgent, PauseFailsAgent
from tests.support.waiting import WAIT_SECONDS, wait_until


async def test_a_failing_member_does_not_cut_pause_group_short(rt: AgentRuntime) -> None:
    """F-25: pause_group returns or raises only once every member is done; one member's
    failure is reported, naming it, after the other members reached their safe point."""
    bad = await rt.register_agent("bad", PauseFailsAgent, group="g")
    slow = await rt.register_agent("slow", LateSafePointAgent, group="g")
    await rt.start_group("g")
    await rt.submit_task("busy", agent_id=slow)
    await asyncio.wait_for(agents.STARTED.setdefault("busy", asyncio.Event()).wait(), WAIT_SECONDS)

    pausing = asyncio.ensure_future(rt.pause_group("g"))
    await wait_until(lambda: rt.get_agent_status(bad).status is AgentStatus.FAILED, "bad fails")
    agents.GATES.setdefault("busy", asyncio.Event()).set()  # slow reaches its safe point
    # One member failed: the error has its class, as pause_agent's would.
    with pytest.raises(AgentHookError) as info:
        await asyncio.wait_for(pausing, WAIT_SECONDS)

    # When the error arrives the other member's pause is complete, not still under way.
    assert rt.get_agent_status(slow).status is AgentStatus.PAUSED
    message = str(info.value)
    assert "pause_group('g'): 1 of 2 members failed" in message
    assert f"agent {bad!r} (bad): AgentHookError" in message
    assert "on_pause broke" in message
    assert slow not in message
    assert isinstance(info.value.__cause__, AgentHookError)
    await rt.stop_group("g", graceful=False)


async def test_a_member_another_call_got_to_first_is_skipped(rt: AgentRuntime) -> None:
    """A pause_group whose pause of a member is abandoned by a concurrent stop_group does
    not fail: that member is no longer running, so there is nothing left to pause."""
    member = await rt.register_agent("member", LateSafePointAgent, group="g")
    await rt.start_agent(member)
    await rt.submit_task("busy", agent_id=member)
    await asyncio.wait_for(agents.STARTED.setdefault("busy", asyncio.Event()).wait(), WAIT_SECONDS)

    pausing = asyncio.ensure_future(rt.pause_group("g"))
    # The pause waits for a safe point the task does not reach until the stop cancels it.
    await wait_until(lambda: rt.agent_book.get(member).pausing is not None, "the pause to wait")
    stopped = await rt.stop_group("g", graceful=False)

    assert [agent.status for agent in stopped] == [AgentStatus.STOPPED]
    assert await asyncio.wait_for(pausing, WAIT_SECONDS) == []
    assert rt.get_agent_status(member).status is AgentStatus.STOPPED


async def test_a_group_name_is_checked_like_the_bus_checks_it(rt: AgentRuntime) -> None:
    """F-18: a group's name travels with every message sent to it, so register_agent and
    submit_task refuse one the bus would refuse (over 256 characters) instead of making a
    group that can run tasks but never receive a message; a name at the limit works for
    both."""
    too_long = "team-" + "x" * 300
    with pytest.raises(ValidationError, match="at most 256 characters"):
        await rt.register_agent("member", agents.EchoAgent, group=too_long)
    with pytest.raises(ValidationError, match="at most 256 characters"):
        await rt.submit_task("t", group=too_long)
    assert rt.list_agents() == []
    at_limit = "x" * 256
    agent_id = await rt.register_agent("member", agents.EchoAgent, group=at_limit)
    await rt.start_group(at_limit)
    task = await rt.wait_for_task(await rt.submit_task("t", group=at_limit), WAIT_SECONDS)
    assert task.status is TaskStatus.COMPLETED
    assert len(await rt.send_to_group(at_limit, "memo", {"n": 1})) == 1
    assert rt.messenger.bus.pending(agent_id) == 1
