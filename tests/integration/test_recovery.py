"""F-20, R-02: the runtime process is SIGKILLed mid-run; a new runtime on the same database
recovers every task."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from miminions import AgentRuntime, EventType, RuntimeConfig, TaskStatus
from tests.support import agents
from tests.support.runtime import run_child_runtime


async def run_and_kill(db_path: Path) -> dict[str, str]:
    """Start the child runtime, wait until both agents run a task, SIGKILL it."""
    child = await run_child_runtime("crash_child", db_path)
    assert child.stdout is not None
    try:
        async with asyncio.timeout(30):
            ids = json.loads(await child.stdout.readline())
            started = set()
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
