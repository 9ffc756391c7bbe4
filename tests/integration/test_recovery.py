"""F-20, R-02: the runtime process is SIGKILLed mid-run; a new runtime on the same database
recovers every task."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from miminions import AgentRuntime, EventType, RuntimeConfig, Task, TaskStatus
from miminions.kernel.ownership import RUN_META_KEY
from miminions.plugins.sqlite_store import SQLiteStore
from tests.support import agents
from tests.support.runtime import run_child_runtime, start_agent


async def run_and_kill(db_path: Path) -> dict[str, str]:
    """Start the child runtime, wait until both agents run a task, SIGKILL it."""
    child = await run_child_runtime("crash_child", db_path)
    assert child.stdout is not None
    try:
        async with asyncio.timeout(30):
            ids: dict[str, str] = json.loads(await child.stdout.readline())
            started: set[str] = set()
            while len(started) < 2:
                line = (await child.stdout.readline()).decode().strip()
                assert line, "child exited early"
                started.add(line.removeprefix("started "))
        assert started == {"no_retries", "with_retries"}
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    return ids


@pytest.mark.slow
async def test_recovery_after_sigkill(tmp_path: Path) -> None:
    """F-20: no task lost; running tasks are re-queued (attempt counted) or failed when out
    of retries; a RUNTIME_RECOVERED event says what was done; work then completes."""
    db_path = tmp_path / "crash.db"
    ids = await run_and_kill(db_path)
    config = RuntimeConfig(storage_path=str(db_path), retry_backoff_base_seconds=0.01)
    async with AgentRuntime(config=config) as rt:
        assert {t.task_id for t in rt.list_tasks(limit=None)} == set(ids.values())
        failed = rt.get_task_status(ids["no_retries"])
        assert failed.status is TaskStatus.FAILED
        assert "interrupted" in (failed.error_message or "")
        retried = rt.get_task_status(ids["with_retries"])
        assert (retried.status, retried.retry_count) == (TaskStatus.PENDING, 1)
        assert retried.checkpoint == {"started": True}
        assert rt.get_task_status(ids["blocked"]).status is TaskStatus.BLOCKED
        recovered = await rt.query_events(event_type=EventType.RUNTIME_RECOVERED)
        assert len(recovered) == 1
        details = recovered[0].details
        assert details["clean_shutdown"] is False
        assert (details["tasks_requeued"], details["tasks_failed"]) == (1, 1)
        assert details["tasks_restored"] == 5

        # the same agent names come back with the same ids; the work then finishes
        for name in ("hang1", "hang2"):
            await rt.start_agent(await rt.register_agent(name, agents.EchoAgent))
        for key in ("with_retries", "pending_a", "pending_b", "blocked"):
            task = await rt.wait_for_task(ids[key], 10)
            assert task.status is TaskStatus.COMPLETED, key
        assert [d.ref_id for d in rt.list_dead_letters()] == [ids["no_retries"]]

    # a clean stop leaves nothing to recover
    async with AgentRuntime(config=config) as rt:
        assert rt.recovery is None
        statuses = {t.status for t in rt.list_tasks(limit=None)}
        assert statuses == {TaskStatus.COMPLETED, TaskStatus.FAILED}


async def test_tasks_handed_over_ahead_of_time_are_requeued_without_an_attempt(
    db_path: Path,
) -> None:
    """F-20: a task a crashed runtime had only handed to its agent ahead of time (stored
    ``running`` with no ``started_at``: a prefetch window) never began, so it runs again
    without an attempt counted, even with no retries; a task that had begun is counted."""
    now = datetime.now(UTC)
    stored = {
        "prefetched": Task(
            task_id="prefetched",
            name="prefetched",
            status=TaskStatus.RUNNING,
            assigned_agent_id="gone",
            created_at=now,
        ),
        "begun": Task(
            task_id="begun",
            name="begun",
            status=TaskStatus.RUNNING,
            max_retries=1,
            assigned_agent_id="gone",
            created_at=now,
            started_at=now,
        ),
    }
    async with SQLiteStore(str(db_path)) as store:
        for task in stored.values():
            store.put_task(task)
        # the run record of a runtime that died (no process has this pid)
        await store.put_meta(RUN_META_KEY, {"pid": 2**31 - 1, "clean": False})
    async with AgentRuntime(db_path) as rt:
        prefetched = rt.get_task_status("prefetched")
        assert (prefetched.status, prefetched.retry_count) == (TaskStatus.PENDING, 0)
        begun = rt.get_task_status("begun")
        assert (begun.status, begun.retry_count) == (TaskStatus.PENDING, 1)
        assert rt.recovery is not None
        assert (rt.recovery["tasks_requeued"], rt.recovery["tasks_unstarted"]) == (1, 1)
        assert rt.recovery["tasks_failed"] == 0
        requeued = await rt.query_events(event_type=EventType.TASK_REQUEUED, task_id="prefetched")
        assert [e.details for e in requeued] == [
            {"reason": "runtime restarted before the task began", "attempt": 0}
        ]
        await start_agent(rt, "echo", agents.EchoAgent, isolation="inline")
        for task_id in stored:
            assert (await rt.wait_for_task(task_id, 10)).status is TaskStatus.COMPLETED
