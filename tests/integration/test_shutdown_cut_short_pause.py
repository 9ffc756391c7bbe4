"""A stop cut short while a pause is in flight: the pause raises the documented "was
abandoned" error, whether its on_pause returns as it is cancelled (it raised an internal
"cannot go from stopped to paused") or before."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from miminions import AgentRuntime, BaseAgent, Task
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until


class _Stuck(BaseAgent):
    """Its task reaches no safe point; its on_pause is quick."""

    began: asyncio.Event
    outcome: str = "plain"

    async def execute_task(self, task: Task) -> dict[str, object]:
        type(self).began.set()
        await asyncio.Event().wait()  # no context call: no safe point
        return {}

    async def on_pause(self) -> dict[str, object]:
        if type(self).outcome == "keeps":
            # Saves its state even when the pause is given up (it finishes its write).
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                return {"pages": 7}
        return {"pages": 7}


async def _cut_short_during_pause(make_config: Any, outcome: str) -> tuple[Any, Any, Any]:
    _Stuck.began = asyncio.Event()
    _Stuck.outcome = outcome
    config = make_config(default_isolation="inline")
    rt = AgentRuntime(config=config)
    await rt.start()
    agent = await start_agent(rt, "stuck", _Stuck)
    await rt.submit_task("t", agent_id=agent)
    await asyncio.wait_for(_Stuck.began.wait(), WAIT_SECONDS)
    pausing = asyncio.create_task(rt.pause_agent(agent))
    await wait_until(lambda: rt.agent_book.slots[agent].call == "pause", "pause in flight")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(rt.stop(timeout_seconds=30), 0.2)
    assert not rt.is_running
    outcome_of_pause: Any
    try:
        outcome_of_pause = await asyncio.wait_for(pausing, WAIT_SECONDS)
    except Exception as exc:
        outcome_of_pause = exc
    after = rt.get_agent_status(agent)
    async with AgentRuntime(config=config) as again:
        await again.register_agent("stuck", _Stuck)
        stored = again.get_agent_status(agent)
    return outcome_of_pause, after, stored


async def test_stop_cut_short_during_a_pause_whose_on_pause_returns(make_config: Any) -> None:
    pause, after, stored = await _cut_short_during_pause(make_config, "plain")
    print("PLAIN", pause, after.status, after.status_reason, stored.status)
    if isinstance(pause, Exception):
        assert "abandoned" in str(pause), repr(pause)


async def test_stop_cut_short_during_a_pause_that_finishes_when_cancelled(
    make_config: Any,
) -> None:
    pause, after, _stored = await _cut_short_during_pause(make_config, "keeps")
    # on_pause returned as the pause was given up: the stop cut short already recorded the
    # agent stopped. pause_agent must raise the documented "abandoned" InvalidStateError,
    # not an internal state-machine transition error.
    assert after.status.value == "stopped", after
    assert isinstance(pause, Exception), pause
    assert "was abandoned because the agent is being stopped" in str(pause), repr(pause)
