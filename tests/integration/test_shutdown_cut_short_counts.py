"""A stop cut short after the drain gave back a process agent's prefetch window: the
runtime_stopped event counts those tasks among the re-queued ones (it did not)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from miminions import AgentRuntime, EventType
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until


async def test_runtime_stopped_counts_the_window_given_back_when_the_stop_is_cut_short(
    make_config: Any, tmp_path: Any
) -> None:
    from tests.support.process_agents import GatedAgent

    log = tmp_path / "log"
    gates = {name: tmp_path / f"gate-{name}" for name in "abc"}
    config = make_config(default_isolation="process")
    rt = AgentRuntime(config=config)
    await rt.start()
    try:
        await start_agent(rt, "gated", GatedAgent)
        ids = {
            name: await rt.submit_task(name, {"log": str(log), "gate": str(gates[name])})
            for name in "abc"
        }
        gates["a"].touch()
        await wait_until(lambda: rt.get_task_status(ids["b"]).started_at is not None, "b began")
        await wait_until(
            lambda: rt.get_task_status(ids["c"]).status.value == "running", "c taken ahead"
        )
        assert rt.get_task_status(ids["c"]).started_at is None
        stopping = asyncio.create_task(rt.stop(timeout_seconds=30))
        # c's give-back is in the TASK_REQUEUED log before the stop is cut short
        await wait_until(
            lambda: rt.get_task_status(ids["c"]).status.value == "pending", "c given back"
        )
        stopping.cancel()  # the stop cut short (as asyncio.wait_for(rt.stop(), t) does)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(stopping, WAIT_SECONDS * 2)
        assert not rt.is_running
    finally:
        for gate in gates.values():
            gate.touch()
        await rt.stop(graceful=False)
    async with AgentRuntime(config=config) as again:
        stopped = await again.query_events(event_type=EventType.RUNTIME_STOPPED, limit=None)
        requeued = await again.query_events(event_type=EventType.TASK_REQUEUED, limit=None)
        statuses = {name: again.get_task_status(t).status.value for name, t in ids.items()}
    assert statuses == {"a": "completed", "b": "pending", "c": "pending"}, statuses
    requeued_ids = sorted({e.task_id for e in requeued})
    assert requeued_ids == sorted([ids["b"], ids["c"]]), requeued
    assert len(stopped) == 1
    assert stopped[0].details["tasks_requeued"] == len(requeued_ids), (
        stopped[0].details,
        [(e.task_id, e.details) for e in requeued],
    )
