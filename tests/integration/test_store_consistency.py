"""The database holds every task as the runtime has it in memory, after every kind of change.

The SQLite store writes a task whole once and then only its state columns (status, result,
error, agent, attempts, checkpoint, dead-letter flag, timestamps), relying on the runtime
changing nothing else of a stored task. This test runs every kind of change the runtime
makes to a task (start, completion, retry, failure for good, a cascade to a dependent, a
re-queue from the dead-letter list, checkpoints, cancels of a running and of a waiting
task) and compares the stored rows with the tasks in memory, field by field.
"""

from __future__ import annotations

import asyncio

from miminions import AgentRuntime, Task, TaskStatus
from miminions.plugins.sqlite_store import SQLiteStore
from tests.support import agents
from tests.support.waiting import WAIT_SECONDS

#: Filled in by queries, never stored.
_COMPUTED = {"effective_priority", "queue_position", "estimated_wait_seconds"}


def _fields(task: Task) -> dict[str, object]:
    return task.model_dump(exclude=_COMPUTED)


async def test_stored_tasks_match_the_runtime_after_every_kind_of_change(
    rt: AgentRuntime,
) -> None:
    switch = await rt.register_agent("switch", agents.SwitchAgent)
    gated = await rt.register_agent("gated", agents.GatedAgent)
    await rt.start_agent(switch)
    await rt.start_agent(gated)
    agents.FAILING.add("doomed")

    ok = await rt.submit_task("ok", {"n": 1}, agent_id=switch)
    doomed = await rt.submit_task("doomed", max_retries=1, agent_id=switch)
    dependent = await rt.submit_task("after-doomed", dependencies=[doomed], agent_id=switch)
    running = await rt.submit_task("held", agent_id=gated)
    await rt.wait_for_task(ok, WAIT_SECONDS)
    assert (await rt.wait_for_task(doomed, WAIT_SECONDS)).status is TaskStatus.FAILED
    assert (await rt.wait_for_task(dependent, WAIT_SECONDS)).status is TaskStatus.FAILED

    # a re-queue from the dead-letter list revives the task and the dependent it took down
    agents.FAILING.clear()
    (letter,) = rt.list_dead_letters("task")
    await rt.requeue_dead_letter(letter.dead_letter_id)
    assert (await rt.wait_for_task(doomed, WAIT_SECONDS)).status is TaskStatus.COMPLETED
    assert (await rt.wait_for_task(dependent, WAIT_SECONDS)).status is TaskStatus.COMPLETED

    # a running task with checkpoints, cancelled; a waiting one cancelled before it ran
    async with asyncio.timeout(WAIT_SECONDS):
        await agents.STARTED.setdefault("held", asyncio.Event()).wait()
    await rt.pause_queue()
    waiting = await rt.submit_task("never", agent_id=gated)
    await rt.cancel_task(running)
    await rt.cancel_task(waiting)
    await rt.resume_queue()
    finished = await rt.wait_for_tasks([ok, doomed, dependent, running, waiting], WAIT_SECONDS)
    assert [t.status for t in finished] == [TaskStatus.COMPLETED] * 3 + [TaskStatus.CANCELLED] * 2
    assert finished[3].checkpoint is not None

    live = {task.task_id: _fields(task) for task in rt.list_tasks(limit=None)}
    store = await SQLiteStore.open_readonly(rt.config.storage_path)
    try:
        stored = {task.task_id: _fields(task) for task in await store.load_tasks()}
    finally:
        await store.close()
    assert stored == live
