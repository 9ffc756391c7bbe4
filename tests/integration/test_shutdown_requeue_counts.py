"""A graceful stop gives back a process agent's prefetch window, and the runtime_stopped
event counts those tasks among the re-queued ones (it did not)."""

from __future__ import annotations

import asyncio
from typing import Any

from miminions import AgentRuntime, EventType
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until


async def _stop_with_a_window(make_config: Any, tmp_path: Any, *, b_finishes: bool) -> Any:
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
        if b_finishes:
            stopping = asyncio.create_task(rt.stop(timeout_seconds=WAIT_SECONDS))
            await wait_until(lambda: not rt.is_running, "the stop has begun")
            gates["b"].touch()
            await asyncio.wait_for(stopping, WAIT_SECONDS * 2)
        else:
            await asyncio.wait_for(rt.stop(timeout_seconds=0.3), WAIT_SECONDS * 2)
    finally:
        for gate in gates.values():
            gate.touch()
        await rt.stop(graceful=False)
    async with AgentRuntime(config=config) as again:
        stopped = await again.query_events(event_type=EventType.RUNTIME_STOPPED, limit=None)
        requeued = await again.query_events(event_type=EventType.TASK_REQUEUED, limit=None)
        statuses = {name: again.get_task_status(t).status.value for name, t in ids.items()}
        return stopped, requeued, statuses


async def test_runtime_stopped_counts_the_window_given_back(
    make_config: Any, tmp_path: Any
) -> None:
    stopped, requeued, statuses = await _stop_with_a_window(make_config, tmp_path, b_finishes=True)
    assert statuses == {"a": "completed", "b": "completed", "c": "pending"}, statuses
    requeued_ids = [e.task_id for e in requeued]
    assert len(stopped) == 1
    assert stopped[0].details["tasks_requeued"] == len(requeued_ids), (
        stopped[0].details,
        [(e.task_id, e.details) for e in requeued],
    )


async def test_runtime_stopped_counts_the_window_given_back_past_the_timeout(
    make_config: Any, tmp_path: Any
) -> None:
    stopped, requeued, statuses = await _stop_with_a_window(make_config, tmp_path, b_finishes=False)
    assert statuses == {"a": "completed", "b": "pending", "c": "pending"}, statuses
    assert len(stopped) == 1
    assert stopped[0].details["tasks_requeued"] == len(requeued), (
        stopped[0].details,
        [(e.task_id, e.details) for e in requeued],
    )
