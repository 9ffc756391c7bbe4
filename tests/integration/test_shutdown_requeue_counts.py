"""A stop gives back a process agent's prefetch window (tasks taken ahead of time, not
begun), and the runtime_stopped event counts those tasks among the re-queued ones (it did
not): a graceful stop whose running task finishes, one past its timeout, one cut short."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, EventType
from tests.support.prefetch_window import agent_holding_a_window
from tests.support.waiting import WAIT_SECONDS, wait_until


@pytest.mark.parametrize("how", ["b_finishes", "past_the_timeout", "cut_short"])
async def test_runtime_stopped_counts_the_window_given_back(
    make_config: Any, tmp_path: Path, how: str
) -> None:
    held = await agent_holding_a_window(make_config, tmp_path)
    rt, ids = held.rt, held.ids
    try:
        if how == "b_finishes":
            stopping = asyncio.create_task(rt.stop(timeout_seconds=WAIT_SECONDS))
            await wait_until(lambda: not rt.is_running, "the stop has begun")
            held.gates["b"].touch()
            await asyncio.wait_for(stopping, WAIT_SECONDS * 2)
        elif how == "past_the_timeout":
            await asyncio.wait_for(rt.stop(timeout_seconds=0.3), WAIT_SECONDS * 2)
        else:
            stopping = asyncio.create_task(rt.stop(timeout_seconds=30))
            await wait_until(
                lambda: rt.get_task_status(ids["c"]).status.value == "pending", "c given back"
            )
            stopping.cancel()  # the stop cut short (as asyncio.wait_for(rt.stop(), t) does)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(stopping, WAIT_SECONDS * 2)
    finally:
        held.open_gates()
        await rt.stop(graceful=False)
    async with AgentRuntime(config=held.config) as again:
        [stopped] = await again.query_events(event_type=EventType.RUNTIME_STOPPED, limit=None)
        requeued = await again.query_events(event_type=EventType.TASK_REQUEUED, limit=None)
        statuses = {name: again.get_task_status(t).status.value for name, t in ids.items()}
    b = "completed" if how == "b_finishes" else "pending"
    assert statuses == {"a": "completed", "b": b, "c": "pending"}
    requeued_ids = {event.task_id for event in requeued}
    assert requeued_ids == ({ids["c"]} if how == "b_finishes" else {ids["b"], ids["c"]})
    assert stopped.details["tasks_requeued"] == len(requeued_ids)
