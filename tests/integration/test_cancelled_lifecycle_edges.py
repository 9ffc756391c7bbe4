"""A caller giving up on a lifecycle call at its edges (found by a review of the change
that made such calls leave no agent half way): as the host call completes, while the
agent's record commits, while the call fails the agent. The agent still ends in a state
that serves (or honestly does not serve) its tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    EventType,
    ResourceLimits,
    RuntimeConfig,
    Task,
    TaskStatus,
    hookimpl,
)
from miminions.kernel.models import Event
from tests.support import agents
from tests.support.waiting import WAIT_SECONDS, wait_until

S = AgentStatus
#: The call a CancelsCallerAgent hook, or a CancelCallerOn event, cancels.
VICTIM: list[asyncio.Future[Any]] = []
CANCEL_IN: set[str] = set()


@pytest.fixture(autouse=True)
def _fresh() -> None:
    VICTIM.clear()
    CANCEL_IN.clear()


class CancelCallerOn:
    """Cancels the call in ``VICTIM`` as the event ``when`` is recorded (the cancel lands
    at the call's next await)."""

    miminions_plugin_name = "test_cancel_caller_on"

    def __init__(self, when: EventType) -> None:
        self.when = when

    @hookimpl
    def miminions_event(self, event: Event) -> None:
        if event.event_type is self.when and VICTIM:
            VICTIM.pop().cancel()


class CancelsCallerAgent(BaseAgent):
    """Its ``on_pause`` / ``on_resume`` cancel the call in ``VICTIM`` (when named in
    ``CANCEL_IN``), then return; ``on_pause`` raises when ``CANCEL_IN`` has "fail-pause".
    Its task loops at safe points until ``GATES[task name]`` is set, and cleans up after a
    cancel until ``GATES["cleanup"]`` is set; a task named ``quick`` returns at once."""

    def _cancel_caller(self, hook: str) -> None:
        if hook in CANCEL_IN and VICTIM:
            VICTIM.pop().cancel()

    async def on_pause(self) -> dict[str, Any]:
        if "fail-pause" in CANCEL_IN:
            raise RuntimeError("cannot pause")
        self._cancel_caller("pause")
        return {"note": "saved"}

    async def on_resume(self, state: Any) -> None:
        self._cancel_caller("resume")

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if task.name == "quick":
            return {"quick": True}
        gate = agents.GATES.setdefault(task.name, asyncio.Event())
        agents.STARTED.setdefault(task.name, asyncio.Event()).set()
        try:
            while not gate.is_set():
                await self.context.checkpoint({})
                await asyncio.sleep(0.005)
        except asyncio.CancelledError:
            agents.STARTED.setdefault("cleanup", asyncio.Event()).set()
            await agents.GATES.setdefault("cleanup", asyncio.Event()).wait()
            raise
        return {"done": True}


class StartFailsAgent(BaseAgent):
    """``on_start`` waits for ``GATES['fail-start']``, then raises."""

    async def on_start(self) -> None:
        agents.STARTED.setdefault("fail-start", asyncio.Event()).set()
        await agents.GATES.setdefault("fail-start", asyncio.Event()).wait()
        raise RuntimeError("cannot start")

    async def execute_task(self, task: Task) -> None:
        return None


def given_up(call: Awaitable[Any]) -> asyncio.Future[Any]:
    """The call as a future, put in ``VICTIM`` for whoever cancels it."""
    future = asyncio.ensure_future(call)
    VICTIM.append(future)
    return future


async def ended(call: asyncio.Future[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(call, WAIT_SECONDS)


async def runs(rt: AgentRuntime, agent_id: str, name: str = "quick") -> bool:
    task_id = await rt.submit_task(name, agent_id=agent_id)
    with contextlib.suppress(Exception):
        await rt.wait_for_task(task_id, WAIT_SECONDS)
    return rt.get_task_status(task_id).status is TaskStatus.COMPLETED


async def busy_agent(rt: AgentRuntime) -> tuple[str, str]:
    agent_id = await rt.register_agent("a", CancelsCallerAgent)
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("busy", agent_id=agent_id)
    await asyncio.wait_for(agents.STARTED.setdefault("busy", asyncio.Event()).wait(), WAIT_SECONDS)
    return agent_id, task_id


async def test_a_pause_given_up_as_on_pause_returns_is_a_pause(rt: AgentRuntime) -> None:
    """``on_pause`` returned as the caller gave up: the agent is paused (the runtime said
    running, and handed tasks to an agent whose task stayed halted for good)."""
    agent_id, busy = await busy_agent(rt)
    CANCEL_IN.add("pause")
    pausing = given_up(rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS))
    await ended(pausing)
    assert pausing.cancelled()
    assert rt.get_agent_status(agent_id).status is S.PAUSED
    agents.GATES["busy"].set()
    await rt.resume_agent(agent_id)
    assert (await rt.wait_for_task(busy, WAIT_SECONDS)).status is TaskStatus.COMPLETED


async def test_a_resume_given_up_as_on_resume_returns_is_a_resume(rt: AgentRuntime) -> None:
    """``on_resume`` returned as the caller gave up: the agent runs (the runtime said
    paused while its task ran on)."""
    agent_id, busy = await busy_agent(rt)
    await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
    CANCEL_IN.add("resume")
    resuming = given_up(rt.resume_agent(agent_id))
    await ended(resuming)
    assert resuming.cancelled()
    assert rt.get_agent_status(agent_id).status is S.RUNNING
    agents.GATES["busy"].set()
    assert (await rt.wait_for_task(busy, WAIT_SECONDS)).status is TaskStatus.COMPLETED
    assert await runs(rt, agent_id)


@pytest.mark.parametrize("call", ["start", "resume"])
async def test_a_call_given_up_as_the_agent_record_commits_leaves_it_serving(
    make_config: Callable[..., RuntimeConfig], isolation: str, call: str
) -> None:
    """The cancel lands on the save of the agent's record, after the start or resume went
    through: the agent is running and given tasks (it was running, never given one)."""
    when = EventType.AGENT_STARTED if call == "start" else EventType.AGENT_RESUMED
    async with AgentRuntime(config=make_config(), plugins=[CancelCallerOn(when)]) as rt:
        agent_id = await rt.register_agent("echo", agents.EchoAgent, isolation=isolation)
        if call == "resume":
            await rt.start_agent(agent_id)
            await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
        calling = given_up(
            rt.start_agent(agent_id) if call == "start" else rt.resume_agent(agent_id)
        )
        await ended(calling)
        assert calling.cancelled()
        assert rt.get_agent_status(agent_id).status is S.RUNNING
        assert await runs(rt, agent_id)


async def test_a_pause_given_up_while_it_fails_the_agent_fails_it(rt: AgentRuntime) -> None:
    """``on_pause`` raised and the agent is being failed (its task cleans up) as the caller
    gives up: the failing goes through before the call ends (the agent stayed running,
    never given a task again)."""
    agent_id, _ = await busy_agent(rt)
    CANCEL_IN.add("fail-pause")
    pausing = given_up(rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS))
    await asyncio.wait_for(
        agents.STARTED.setdefault("cleanup", asyncio.Event()).wait(), WAIT_SECONDS
    )
    pausing.cancel()
    agents.GATES.setdefault("cleanup", asyncio.Event()).set()
    await ended(pausing)
    assert pausing.cancelled()
    assert rt.get_agent_status(agent_id).status is S.FAILED


async def test_a_start_given_up_while_it_fails_the_agent_passes_its_slot_on(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """``on_start`` raised and the caller gives up as the failure is recorded: the freed
    slot still goes to the next queued start (it waited for good, every slot free)."""
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config, plugins=[CancelCallerOn(EventType.AGENT_FAILED)]) as rt:
        first = await rt.register_agent("first", StartFailsAgent)
        second = await rt.register_agent("second", agents.EchoAgent)
        starting = given_up(rt.start_agent(first))
        await asyncio.wait_for(
            agents.STARTED.setdefault("fail-start", asyncio.Event()).wait(), WAIT_SECONDS
        )
        assert (await rt.start_agent(second)).status is S.QUEUED
        agents.GATES["fail-start"].set()
        await ended(starting)
        assert rt.get_agent_status(first).status is S.FAILED
        await wait_until(lambda: rt.get_agent_status(second).status is S.RUNNING, "second")
        assert await runs(rt, second)
