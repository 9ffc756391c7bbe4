"""Messages an agent was handling when it was stopped are not lost: a handler in
progress may finish within the stop's timeout (the rest wait in the mailbox for the next
start), and one cut off gives its message back (F-28: nothing silently dropped)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from miminions import AgentMessage, AgentStatus, BaseAgent, RuntimeConfig, Task
from miminions.testing import started_runtime

WAIT = 10.0

EVENTS: dict[str, asyncio.Event] = {}
HANDLED: list[tuple[str, str]] = []  # (message_type, "began" | "finished")


def _event(name: str) -> asyncio.Event:
    if name not in EVENTS:
        EVENTS[name] = asyncio.Event()
    return EVENTS[name]


class HaltingHandlerAgent(BaseAgent):
    """on_message: note it began, wait for the test, then a safe point (it halts there
    while the agent is paused), then note it finished."""

    async def on_message(self, message: AgentMessage) -> None:
        HANDLED.append((message.message_type, "began"))
        _event(f"began:{message.message_type}").set()
        if message.message_type == "job":
            await _event("release").wait()
            await self.context.checkpoint()  # a safe point
        HANDLED.append((message.message_type, "finished"))
        _event(f"finished:{message.message_type}").set()

    async def execute_task(self, task: Task) -> Any:
        return None


class StuckHandlerAgent(BaseAgent):
    """on_message for "job" never ends (no safe point); other messages are noted."""

    async def on_message(self, message: AgentMessage) -> None:
        HANDLED.append((message.message_type, "began"))
        _event(f"began:{message.message_type}").set()
        if message.message_type == "job" and not _event("second_start").is_set():
            await asyncio.Event().wait()  # never ends
        HANDLED.append((message.message_type, "finished"))
        _event(f"finished:{message.message_type}").set()

    async def execute_task(self, task: Task) -> Any:
        return None


async def _gate_closed(rt: Any, agent: str) -> None:
    """Wait (bounded) until the pause in flight closed the agent's gate."""
    runner = rt.agent_book.get(agent).host._runner
    for _ in range(1000):
        if not runner._gate.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pause never closed the gate")


async def _paused_with_its_handler_halted(rt: Any) -> str:
    """A started HaltingHandlerAgent, paused while its handler of "job" waits at its safe
    point; its id."""
    agent: str = await rt.register_agent("halting", HaltingHandlerAgent)
    await rt.start_agent(agent)
    await rt.send_message(agent, "job")
    await asyncio.wait_for(_event("began:job").wait(), WAIT)
    pausing = asyncio.ensure_future(rt.pause_agent(agent, timeout_seconds=WAIT))
    # the pause waits for the handler to reach a safe point: let it get there
    await _gate_closed(rt, agent)
    _event("release").set()
    assert (await pausing).status is AgentStatus.PAUSED
    return agent


def _reset() -> None:
    EVENTS.clear()
    HANDLED.clear()


async def _assert_handled_or_back(rt: Any, agent: str, message_type: str) -> None:
    assert await _handled_or_back(rt, agent, message_type), (
        f"the message {message_type!r} was lost: handled {HANDLED}, "
        f"pending {rt.messenger.bus.pending(agent)}"
    )


async def _handled_or_back(rt: Any, agent: str, message_type: str) -> bool:
    """After a stop: the message was handled to its end, or it comes again on the next
    start (in the mailbox, then delivered)."""
    if (message_type, "finished") in HANDLED:
        return True
    await rt.start_agent(agent)
    try:
        await asyncio.wait_for(_event(f"finished:{message_type}").wait(), WAIT)
    except TimeoutError:
        return False
    return True


async def test_a_graceful_stop_of_a_paused_agent_lets_its_halted_handler_finish(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A paused agent whose on_message handler halted at a safe point, stopped gracefully:
    the handler goes on and finishes (or its message comes again at the next start); it
    was cut off, its message lost (not handled, not redelivered, no dead letter)."""
    _reset()
    async with started_runtime(make_config(default_isolation="inline")) as rt:
        agent = await _paused_with_its_handler_halted(rt)
        assert ("job", "finished") not in HANDLED  # it halted at its safe point
        stopped = await rt.stop_agent(agent, timeout_seconds=WAIT)
        assert stopped.status is AgentStatus.STOPPED
        assert rt.list_dead_letters(kind="message") == []
        await _assert_handled_or_back(rt, agent, "job")


async def test_a_shutdown_keeps_the_message_a_paused_agents_handler_held(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The same at the runtime's shutdown: the paused agent comes back paused, and the
    message its halted handler held was handled (or waits in its mailbox)."""
    _reset()
    config = make_config(default_isolation="inline")
    async with started_runtime(config) as rt:
        await _paused_with_its_handler_halted(rt)
    finished_before = ("job", "finished") in HANDLED
    EVENTS.clear()
    _event("release").set()
    async with started_runtime(config) as rt:
        agent = await rt.register_agent("halting", HaltingHandlerAgent)
        assert rt.get_agent_status(agent).status is AgentStatus.PAUSED
        pending = rt.messenger.bus.pending(agent)
        if not finished_before:
            await rt.resume_agent(agent)
            try:
                await asyncio.wait_for(_event("finished:job").wait(), WAIT)
                finished_before = True
            except TimeoutError:
                pass
        assert finished_before, f"the message 'job' was lost: handled {HANDLED}, pending {pending}"


@pytest.mark.parametrize("graceful", [True, False], ids=["past-the-timeout", "forced"])
async def test_a_handler_cut_off_by_a_stop_gives_its_message_back(
    make_config: Callable[..., RuntimeConfig], graceful: bool
) -> None:
    """An on_message handler still running when a graceful stop's timeout runs out
    (agent_error "on_message did not finish within ..."), or when a forced stop comes, is
    cancelled, and its message goes back to the mailbox for the next start, as a task cut
    off the same way is re-queued (it was gone: not back in the mailbox, not a dead
    letter)."""
    _reset()
    async with started_runtime(make_config(default_isolation="inline")) as rt:
        agent = await rt.register_agent("stuck", StuckHandlerAgent)
        await rt.start_agent(agent)
        await rt.send_message(agent, "job")
        await asyncio.wait_for(_event("began:job").wait(), WAIT)
        stopped = await rt.stop_agent(agent, timeout_seconds=0.2, graceful=graceful)
        assert stopped.status is AgentStatus.STOPPED
        assert rt.list_dead_letters(kind="message") == []
        _event("second_start").set()
        await _assert_handled_or_back(rt, agent, "job")
