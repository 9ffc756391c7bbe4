"""Calls that race the runtime's start, and concurrent queue calls (found by review).

A store that waits where the test says (:class:`GatedStore`) orders the steps: no sleeps.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, RuntimeConfig, hookimpl
from miminions.kernel.ownership import RUN_META_KEY
from miminions.kernel.runtime import QUEUE_PAUSED_KEY
from miminions.plugins.sqlite_batch import Committed
from miminions.plugins.sqlite_store import SQLiteStore
from tests.support.waiting import WAIT_SECONDS, wait_until

MakeConfig = Callable[..., RuntimeConfig]


class GatedStore(SQLiteStore):
    """The built-in store; ``open`` and the first ``flush`` after the run record was
    written wait for the test when it asks (``gates``: name -> (reached, release))."""

    def __init__(self, path: str, gates: dict[str, tuple[asyncio.Event, asyncio.Event]]) -> None:
        super().__init__(path)
        self.gates = gates
        self.run_recorded = False

    async def _gate(self, name: str) -> None:
        gate = self.gates.pop(name, None)
        if gate is not None:
            reached, release = gate
            reached.set()
            await release.wait()

    async def open(self) -> None:
        await self._gate("open")
        await super().open()

    def put_meta(self, key: str, value: Any) -> Committed:
        if key == RUN_META_KEY:
            self.run_recorded = True
        return super().put_meta(key, value)

    async def flush(self) -> None:
        if self.run_recorded:
            await self._gate("flush_after_run_record")
        await super().flush()


class Gates:
    """The plugin making a :class:`GatedStore` with the gates ``names``."""

    miminions_plugin_name = "gated_store"

    def __init__(self, *names: str) -> None:
        self.gates = {name: (asyncio.Event(), asyncio.Event()) for name in names}

    async def reached(self, name: str) -> None:
        await asyncio.wait_for(self.gates[name][0].wait(), WAIT_SECONDS)

    def release(self, name: str) -> None:
        self.gates[name][1].set()

    @hookimpl(tryfirst=True)
    def miminions_make_store(self, config: RuntimeConfig) -> GatedStore:
        return GatedStore(config.storage_path, dict(self.gates))


async def test_a_stop_called_while_the_runtime_starts_stops_it(make_config: MakeConfig) -> None:
    """stop() during start() waits for the start to end, then stops the runtime: it does
    not return at once and leave the runtime running (and the database claimed)."""
    config = make_config()
    gates = Gates("open")
    rt = AgentRuntime(config=config, plugins=[gates])
    starting = asyncio.create_task(rt.start())
    await gates.reached("open")
    stopping = asyncio.create_task(rt.stop())
    await asyncio.sleep(0)  # the stop is under way too
    assert not stopping.done()
    gates.release("open")
    await asyncio.wait_for(asyncio.gather(starting, stopping), WAIT_SECONDS)
    assert not rt.is_running
    async with AgentRuntime(config=config) as again:  # the database is free, the stop clean
        assert again.recovery is None


async def test_a_cancelled_start_is_not_reported_as_a_crash(make_config: MakeConfig) -> None:
    """A start cancelled after it wrote its run record (asyncio.wait_for(rt.start(), ...)
    timing out) leaves the record clean: the next runtime reports no crash."""
    config = make_config()
    gates = Gates("flush_after_run_record")
    rt = AgentRuntime(config=config, plugins=[gates])
    starting = asyncio.create_task(rt.start())
    await gates.reached("flush_after_run_record")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(starting, WAIT_SECONDS)
    assert not rt.is_running
    async with AgentRuntime(config=config) as again:
        assert again.recovery is None


def _stored_queue_paused(db: Path) -> object:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT value FROM meta WHERE key = ?", (QUEUE_PAUSED_KEY,)).fetchall()
    conn.close()
    return json.loads(rows[0][0]) if rows else None


@pytest.mark.parametrize("call", ["pause_queue", "resume_queue"])
async def test_a_second_queue_call_returns_once_the_state_is_committed(
    make_config: MakeConfig, call: str
) -> None:
    """pause_queue and resume_queue return once the queue's state is committed: also a
    second call made while the first one's write is still on its way."""
    config = make_config()
    async with AgentRuntime(config=config) as rt:
        if call == "resume_queue":
            await rt.pause_queue()
        first = asyncio.create_task(getattr(rt, call)())
        await asyncio.sleep(0)  # the first call has queued its write and waits for it
        await getattr(rt, call)()
        assert _stored_queue_paused(Path(config.storage_path)) is (call == "pause_queue")
        await first


async def test_a_task_group_failure_does_not_make_a_later_cancelled_error_a_requeue(
    make_config: MakeConfig,
) -> None:
    """On Python 3.11 a TaskGroup whose child fails while the body waits in __aexit__
    leaves its task's cancelling() at 1. The agent's next task raising CancelledError of
    its own still fails (TaskCancelledError): the stale count is not taken for its worker
    being cancelled from outside, and the agent goes on taking tasks (found by review)."""

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("child failed")

    go = asyncio.Event()

    async def agent(task: object, context: object) -> str:
        kind = task.input_data["kind"]  # type: ignore[attr-defined]
        if kind == "group":
            await go.wait()  # until the next tasks wait behind it (same worker)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(boom())
            return "unreachable"
        if kind == "own-cancel":
            inner = asyncio.ensure_future(asyncio.Event().wait())
            await asyncio.sleep(0)
            inner.cancel()
            await inner  # the agent's own CancelledError: its failure
            return "unreachable"
        return "done"

    config = make_config()
    async with AgentRuntime(config=config) as rt:
        worker = await rt.register_agent("worker", agent, isolation="inline")
        await rt.start_agent(worker)
        group = await rt.submit_task("group", agent_id=worker, input_data={"kind": "group"})
        await wait_until(
            lambda: rt.get_task_status(group).status.value == "running", "the group task runs"
        )
        own = await rt.submit_task("own", agent_id=worker, input_data={"kind": "own-cancel"})
        after = await rt.submit_task("after", agent_id=worker, input_data={"kind": "plain"})
        go.set()
        await wait_until(
            lambda: rt.get_task_status(group).status.value == "failed", "the group task fails"
        )
        await wait_until(
            lambda: rt.get_task_status(own).status.value != "running", "the own task ends"
        )
        assert rt.get_task_status(own).status.value == "failed"
        await wait_until(
            lambda: rt.get_task_status(after).status.value == "completed",
            "the agent takes its next task",
        )
