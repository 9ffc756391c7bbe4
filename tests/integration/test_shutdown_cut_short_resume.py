"""A stop cut short while a paused agent's resume is starting (its on_resume in progress,
returning afterwards) keeps the agent paused with its state, as the docs promise (it was
left running under a stopped runtime)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from miminions import AgentRuntime
from tests.support.cut_short_resume_child import Keeper
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS


class _SlowResume(Keeper):
    """A Keeper whose ``on_resume`` waits for ``go_on`` once it began."""

    resuming: asyncio.Event
    go_on: asyncio.Event

    async def on_resume(self, state: dict[str, object]) -> None:
        await super().on_resume(state)
        type(self).resuming.set()
        await type(self).go_on.wait()


async def test_a_stop_cut_short_during_on_resume_keeps_the_agent_paused(
    make_config: Any,
) -> None:
    _SlowResume.resuming = asyncio.Event()
    _SlowResume.go_on = asyncio.Event()
    Keeper.resumed_with = []
    config = make_config(default_isolation="inline", agent_start_timeout_seconds=60)
    async with AgentRuntime(config=config) as rt:
        keeper = await start_agent(rt, "keeper", _SlowResume)
        await rt.pause_agent(keeper)
    # Run 2: a new host starts for the resume; on_resume is in progress when the stop,
    # which waits for it (its grace is the stop's timeout), is cut short.
    rt = AgentRuntime(config=config)
    await rt.start()
    await rt.register_agent("keeper", _SlowResume)
    resuming = asyncio.create_task(rt.resume_agent(keeper))
    await asyncio.wait_for(_SlowResume.resuming.wait(), WAIT_SECONDS)
    assert rt.get_agent_status(keeper).status.value == "starting"
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(rt.stop(timeout_seconds=30), 0.2)
    assert not rt.is_running
    assert rt.get_agent_status(keeper).status.value == "paused"  # as abandon_all left it
    _SlowResume.go_on.set()  # on_resume returns after the runtime stopped
    outcome: Any = None
    try:
        outcome = await asyncio.wait_for(resuming, WAIT_SECONDS)
    except BaseException as exc:
        outcome = exc
    after = rt.get_agent_status(keeper)
    Keeper.resumed_with = []
    _SlowResume.go_on.set()
    async with AgentRuntime(config=config) as again:
        await again.register_agent("keeper", _SlowResume)
        stored = again.get_agent_status(keeper)
        if stored.status.value == "paused":
            await again.resume_agent(keeper)
    assert (after.status.value, stored.status.value, Keeper.resumed_with) == (
        "paused",
        "paused",
        [{"pages": 7}],
    ), (after, stored, outcome)
