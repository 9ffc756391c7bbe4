"""Scheduling under stress of the rules around it: queue pauses with process agents'
prefetch windows, a cancel racing a timeout, dead letters with several dead prerequisites,
idempotent batches, the queue limit on re-queue, strict numbers, bad event filters and a
store that fails to take a task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    EventType,
    QueueFullError,
    ResourceLimits,
    RuntimeConfig,
    Task,
    TaskStatus,
    ValidationError,
    hookimpl,
)
from tests.support import agents
from tests.support.runtime import start_agent
from tests.support.scheduling_agents import FileGatedAgent, SlowCleanupAgent
from tests.support.waiting import wait_until


# ---------------------------------------------------------------------------- queue pause
async def test_process_agent_takes_tasks_after_its_task_ended_while_queue_paused(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """A process agent (prefetch window) whose task ends while the queue is paused is idle
    again: after resume_queue() it takes the next task."""
    release = tmp_path / "release"
    async with AgentRuntime(config=make_config()) as rt:
        await start_agent(rt, "a", FileGatedAgent, isolation="process")
        first = await rt.submit_task("first", {"release": str(release)})
        await wait_until(lambda: rt.get_task_status(first).started_at, "first to begin")
        await rt.pause_queue()
        release.touch()
        assert (await rt.wait_for_task(first, 10)).status is TaskStatus.COMPLETED
        await rt.resume_queue()
        second = await rt.submit_task("second", {})
        assert (await rt.wait_for_task(second, 10)).status is TaskStatus.COMPLETED


async def test_pause_queue_gives_back_prefetched_tasks(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """A task handed to a process agent ahead of time goes back to the queue on
    pause_queue() and does not begin while the queue is paused."""
    release = tmp_path / "release"
    async with AgentRuntime(config=make_config()) as rt:
        await start_agent(rt, "a", FileGatedAgent, isolation="process")
        await rt.pause_queue()
        warm, gated, ahead = await rt.submit_tasks(
            [
                {"name": "warm"},
                {"name": "gated", "input_data": {"release": str(release)}},
                {"name": "ahead"},
            ]
        )
        await rt.resume_queue()

        def prefetched() -> bool:
            task = rt.get_task_status(ahead)
            return task.status is TaskStatus.RUNNING and task.started_at is None

        await wait_until(prefetched, "'ahead' to be taken ahead of time")
        await rt.pause_queue()
        await wait_until(
            lambda: rt.get_task_status(ahead).status is TaskStatus.PENDING,
            "'ahead' to go back to the queue",
        )
        release.touch()
        assert (await rt.wait_for_task(gated, 10)).status is TaskStatus.COMPLETED
        task = rt.get_task_status(ahead)
        assert task.status is TaskStatus.PENDING
        assert task.started_at is None
        assert not await rt.query_events(event_type=EventType.TASK_STARTED, task_id=ahead)
        await rt.resume_queue()
        done = await rt.wait_for_tasks([warm, ahead], 10)
        assert [t.status for t in done] == [TaskStatus.COMPLETED] * 2
        assert done[1].retry_count == 0  # given back, no attempt used


# ---------------------------------------------------------------------------- cancel
async def test_cancel_wins_over_a_timeout_not_yet_reported(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """cancel_task() while a timed-out task's agent is still cleaning up cancels it: the
    timeout does not retry it behind the cancel's back."""
    cleaning = tmp_path / "cleaning"
    async with AgentRuntime(config=make_config()) as rt:
        await start_agent(rt, "a", SlowCleanupAgent, isolation=isolation)
        task_id = await rt.submit_task(
            "t",
            {"cleaning": str(cleaning), "cleanup_seconds": 1.0},
            timeout_seconds=0.2,
            max_retries=1,
        )
        await wait_until(cleaning.exists, "the timed-out task to be cleaning up")
        task = await asyncio.wait_for(rt.cancel_task(task_id), 10)
        assert task.status is TaskStatus.CANCELLED
        assert task.error_message == "cancelled by user"
        assert task.retry_count == 0
        assert not await rt.query_events(event_type=EventType.TASK_RETRY_SCHEDULED, task_id=task_id)


# ---------------------------------------------------------------------------- dead letters
@pytest.mark.parametrize("first", ["x", "y"])
async def test_dependent_of_two_dead_prerequisites_comes_back_with_the_last(
    rt: AgentRuntime, first: str
) -> None:
    """A task failed by the cascade comes back when its last dead prerequisite is
    re-queued, in whichever order they are."""
    await start_agent(rt, "a", agents.SwitchAgent)
    agents.FAILING.update({"X", "Y"})
    await rt.pause_queue()
    x = await rt.submit_task("X", priority=0)
    y = await rt.submit_task("Y", priority=100)
    dependent = await rt.submit_task("D", dependencies=[x, y])
    await rt.resume_queue()
    await rt.wait_for_tasks([x, y, dependent], 10)
    assert rt.get_task_status(dependent).status is TaskStatus.FAILED
    agents.FAILING.clear()
    order = [x, y] if first == "x" else [y, x]
    await rt.requeue_dead_letter("task:" + order[0])
    await rt.wait_for_task(order[0], 10)
    assert rt.get_task_status(dependent).status is TaskStatus.FAILED  # the other is dead
    await rt.requeue_dead_letter("task:" + order[1])
    task = await rt.wait_for_task(dependent, 10)
    assert task.status is TaskStatus.COMPLETED
    assert task.output_data == {"ok": "D"}


async def test_requeue_dead_letter_respects_the_queue_limit(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """Re-queueing counts against max_task_queue_size, the dependents that come back with
    the task included; a full queue raises QueueFullError and changes nothing."""
    config = make_config(limits=ResourceLimits(max_task_queue_size=3))
    async with AgentRuntime(config=config) as rt:
        await start_agent(rt, "a", agents.SwitchAgent)
        agents.FAILING.add("P")
        prereq = await rt.submit_task("P")
        dependent = await rt.submit_task("D", dependencies=[prereq])
        await rt.wait_for_tasks([prereq, dependent], 10)
        await rt.pause_queue()
        await rt.submit_tasks([{"name": "a"}, {"name": "b"}])  # one slot left, two needed
        with pytest.raises(QueueFullError):
            await rt.requeue_dead_letter("task:" + prereq)
        assert [t.status for t in (rt.get_task_status(prereq), rt.get_task_status(dependent))] == [
            TaskStatus.FAILED,
            TaskStatus.FAILED,
        ]
        assert rt.list_dead_letters()[0].requeued_at is None
        assert rt.get_capacity().queued_tasks == 2
        agents.FAILING.clear()
        await rt.submit_task("c")  # the slot is still free
        assert rt.get_capacity().free_task_slots == 0


# ---------------------------------------------------------------------------- submit
async def test_batch_depends_on_idempotent_duplicates_by_their_given_ids(
    rt: AgentRuntime,
) -> None:
    """In a batch, the task_id given to a request whose key names an existing task (or an
    earlier request of the batch) stands for that task in dependencies."""
    await rt.pause_queue()
    existing = await rt.submit_task("fetch", idempotency_key="fetch-1")
    ids = await rt.submit_tasks(
        [
            {"task_id": "f", "name": "fetch", "idempotency_key": "fetch-1"},
            {"task_id": "g", "name": "parse", "idempotency_key": "parse-1"},
            {"task_id": "h", "name": "parse", "idempotency_key": "parse-1"},
            {"task_id": "s", "name": "summarise", "dependencies": ["f", "h"]},
        ]
    )
    assert ids == [existing, "g", "g", "s"]
    assert rt.get_task_status("s").dependencies == [existing, "g"]


@pytest.mark.parametrize(
    "bad",
    [
        {"priority": "5"},
        {"priority": 5.0},
        {"priority": True},
        {"max_retries": "1"},
        {"timeout_seconds": "1"},
    ],
)
async def test_submit_tasks_numbers_are_strict_like_submit_task(
    rt: AgentRuntime, bad: dict[str, Any]
) -> None:
    """submit_tasks rejects what submit_task rejects: no string or float priorities."""
    with pytest.raises(ValidationError):
        await rt.submit_tasks([{"name": "t", **bad}])
    with pytest.raises(ValidationError):
        await rt.submit_task("t", **bad)
    assert rt.list_tasks() == []


# ---------------------------------------------------------------------------- queries
@pytest.mark.parametrize(
    "filters",
    [{"task_id": 123}, {"agent_id": ["a"]}, {"task_id": "\udcff"}, {"event_type": 5}],
)
async def test_query_events_rejects_bad_filters(rt: AgentRuntime, filters: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"task_id|agent_id|event_type"):
        await rt.query_events(**filters)


@pytest.mark.parametrize("task_ids", [None, "one-id", 5])
async def test_wait_for_tasks_rejects_what_is_not_a_list_of_ids(
    rt: AgentRuntime, task_ids: object
) -> None:
    with pytest.raises(ValidationError, match="task_ids must be a list of task ids"):
        await rt.wait_for_tasks(task_ids)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- store
class _RefusingStore:
    """Wraps the store; its put_task fails for the task named ``doomed``, once."""

    def __init__(self, inner: Any, mode: str) -> None:
        self._inner = inner
        self._mode = mode
        self._failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_task(self, task: Task) -> Any:
        if task.name == "doomed" and not self._failed:
            self._failed = True
            if self._mode == "raise":
                raise OSError("disk full")
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(OSError("disk full"))
            return failed
        return self._inner.put_task(task)


class _RefusingStorePlugin:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    @hookimpl(wrapper=True)
    def miminions_make_store(self, config: RuntimeConfig) -> Generator[None, Any, Any]:
        store = yield
        return _RefusingStore(store, self.mode)


@pytest.mark.parametrize("mode", ["raise", "fail"])
async def test_a_failed_store_write_raises_but_the_task_is_accepted(
    make_config: Callable[..., RuntimeConfig], mode: str
) -> None:
    """A store that refuses a new task's write (raising, or failing its commit): submit
    raises the store's error, and the task, accepted, is counted, announced and runs."""
    async with AgentRuntime(config=make_config(), plugins=[_RefusingStorePlugin(mode)]) as rt:
        await start_agent(rt, "a", agents.EchoAgent)
        with pytest.raises(OSError, match="disk full"):
            await rt.submit_task("doomed")
        [task] = rt.list_tasks()
        assert (await rt.wait_for_task(task.task_id, 10)).status is TaskStatus.COMPLETED
        assert rt.get_metrics().tasks_submitted == 1
        assert await rt.query_events(event_type=EventType.TASK_ENQUEUED, task_id=task.task_id)
