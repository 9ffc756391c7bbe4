"""Errors and counts a caller sees right after a call: a request that cannot wait, the
Prometheus export right after a send, a wait that times out on the final write of a task
that finished."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, BaseAgent, Task, ValidationError, WaitTimeoutError
from miminions.kernel.models import TaskStatus
from tests.support.runtime import start_agent

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


class Idle(BaseAgent):
    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {"ok": True}


class Gated(BaseAgent):
    """Finishes its task once ``release`` is set."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def execute_task(self, task: Task) -> dict[str, Any]:
        self.started.set()
        await self.release.wait()
        return {"ok": True}


async def _agent(rt: AgentRuntime) -> str:
    agent_id = await start_agent(rt, "idle", Idle(), isolation="inline")
    return agent_id


async def test_request_with_timeout_zero_is_refused_naming_timeout_seconds(tmp_path: Path) -> None:
    """A request that may not wait at all is refused naming its own argument (the timeout
    is also the request's TTL, and was refused as ``ttl_seconds``, which the caller never
    passed)."""
    async with AgentRuntime(str(tmp_path / "a.db")) as rt:
        agent_id = await _agent(rt)
        with pytest.raises(ValidationError) as caught:
            await rt.request(agent_id, "ping", timeout_seconds=0)
        assert "timeout_seconds" in str(caught.value), str(caught.value)


def _sample(body: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    assert match is not None, f"{name} not in the exposition"
    return float(match.group(1))


async def test_prometheus_event_counts_include_a_message_just_sent(tmp_path: Path) -> None:
    """The Prometheus export read right after a send counts its MESSAGE_SENT event, as
    get_metrics() and query_events do (the event is built after the receiver ran, and the
    export did not record it first)."""
    pytest.importorskip("prometheus_client", reason="needs miminions[prometheus]")
    async with AgentRuntime(str(tmp_path / "a.db")) as rt:
        agent_id = await _agent(rt)
        await rt.send_message(agent_id, "note")
        body = rt.export_prometheus_metrics().decode()
        sent_total = _sample(body, "miminions_messages_sent_total")
        sent_events = _sample(body, 'miminions_events_total{event_type="message_sent"}')
        assert sent_total == 1
        assert sent_events == sent_total


async def test_wait_for_task_timing_out_on_the_commit_does_not_say_the_task_keeps_running(
    tmp_path: Path,
) -> None:
    """A task that finished within the wait, whose final write is not committed when the
    timeout fires: the error says it finished and its state was not stored in time (it
    said "is still completed ...; it keeps running")."""
    async with AgentRuntime(str(tmp_path / "a.db")) as rt:
        agent = Gated()
        agent_id = await start_agent(rt, "gated", agent, isolation="inline")
        store = rt.store
        gate = asyncio.Event()
        finished_write = asyncio.Event()
        real_put_task = store.put_task

        def put_task(task: Task) -> Awaitable[None]:
            committed = real_put_task(task)
            if not task.status.is_terminal:
                return committed

            async def slow_commit() -> None:  # the disk is slow for the final write
                await gate.wait()
                await committed

            finished_write.set()
            return asyncio.ensure_future(slow_commit())

        store.put_task = put_task  # type: ignore[method-assign]
        try:
            task_id = await rt.submit_task("t", agent_id=agent_id)
            await asyncio.wait_for(agent.started.wait(), WAIT)
            waiting = asyncio.ensure_future(rt.wait_for_task(task_id, timeout_seconds=1.0))
            await asyncio.sleep(0)  # the wait is registered
            agent.release.set()  # finishes well within the wait's second
            await asyncio.wait_for(finished_write.wait(), WAIT)
            assert rt.get_task_status(task_id).status is TaskStatus.COMPLETED
            with pytest.raises(WaitTimeoutError) as caught:
                await asyncio.wait_for(waiting, WAIT)
            assert "keeps running" not in str(caught.value)
            assert "finished (completed)" in str(caught.value)
        finally:
            gate.set()
            store.put_task = real_put_task  # type: ignore[method-assign]


@pytest.mark.parametrize("many", [False, True], ids=["wait_for_task", "wait_for_tasks"])
async def test_polling_a_long_finished_task_with_timeout_zero_returns_it(
    tmp_path: Path, many: bool
) -> None:
    """Polling (timeout 0) a task that finished and was committed long ago returns it,
    while unrelated writes are being committed."""

    async def agent(task: object, context: object) -> str:
        return "done"

    async with AgentRuntime(str(tmp_path / "a.db")) as rt:
        await start_agent(rt, "a", agent, isolation="inline")
        task_id = await rt.submit_task("job")
        finished = await rt.wait_for_task(task_id, timeout_seconds=WAIT)
        assert finished.status.value == "completed"
        await rt.store.flush()  # its final state is committed, for good
        # Another part of the program writes something meanwhile (here: a new task).
        other = asyncio.ensure_future(rt.submit_task("other"))
        await asyncio.sleep(0)
        pending = rt.store._batch is not None or rt.store._committing is not None  # type: ignore[attr-defined]
        assert pending, "precondition: an unrelated write is being committed"
        try:
            if many:
                [polled] = await rt.wait_for_tasks([task_id], timeout_seconds=0)
            else:
                polled = await rt.wait_for_task(task_id, timeout_seconds=0)
        except WaitTimeoutError as exc:
            pytest.fail(f"a finished, committed task's poll raised: {exc}")
        finally:
            await asyncio.wait_for(other, WAIT)
        assert polled.status.value == "completed"
