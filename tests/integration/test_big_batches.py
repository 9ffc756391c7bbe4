"""A ``submit_tasks`` batch bigger than one slice: checked whole, then booked a slice at a
time while agents already work on its first tasks (``miminions.kernel.sliced_booking``)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AlreadyExistsError,
    EventType,
    NotFoundError,
    QueueFullError,
    ResourceLimits,
    RuntimeConfig,
    RuntimeNotRunningError,
    Task,
    TaskStatus,
    hookimpl,
)
from miminions.kernel.sliced_booking import SLICE_SIZE
from tests.support import agents
from tests.support.runtime import start_agent
from tests.support.waiting import wait_until

BIG = 3 * SLICE_SIZE + 1  # four slices, the last of one task


def _requests(count: int = BIG, **fields: Any) -> list[dict[str, Any]]:
    return [{"name": f"t{index}", **fields} for index in range(count)]


async def _submitting(rt: AgentRuntime, requests: list[dict[str, Any]]) -> asyncio.Task[Any]:
    """Start submitting ``requests`` and return once the first slice is booked and the
    rest is not (the submit's first step books one slice, then lets the loop run)."""
    submit = asyncio.ensure_future(rt.submit_tasks(requests))
    await asyncio.sleep(0)
    assert 0 < rt.get_queue_status().total < len(requests)
    return submit


async def test_the_first_tasks_start_before_the_whole_batch_is_booked(rt: AgentRuntime) -> None:
    """Agents start on a big batch's first slice while the rest is still being booked; the
    batch's tasks all run and the call returns their ids in order."""
    known_at_start: list[int] = []

    async def count_known(task: Task, context: object) -> None:
        known_at_start.append(rt.get_queue_status().total)

    await start_agent(rt, "counter", count_known, isolation="inline")
    requests = _requests()
    ids = await rt.submit_tasks(requests)
    done = await rt.wait_for_tasks(ids, 30)
    assert [task.name for task in done] == [request["name"] for request in requests]
    assert all(task.status is TaskStatus.COMPLETED for task in done)
    assert known_at_start[0] < BIG


@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        ({"dependencies": ["no-such-task"]}, NotFoundError),
        ({"task_id": "twice"}, AlreadyExistsError),
    ],
)
async def test_a_big_batch_with_one_bad_request_adds_nothing(
    rt: AgentRuntime, spoil: dict[str, Any], error: type[Exception]
) -> None:
    """All or nothing holds for a big batch: a bad request in its last slice rejects the
    whole batch before any slice is booked."""
    requests = _requests()
    if "task_id" in spoil:
        requests[0]["task_id"] = spoil["task_id"]
    requests[-1].update(spoil)
    with pytest.raises(error):
        await rt.submit_tasks(requests)
    assert rt.get_queue_status().total == 0
    assert await rt.query_events(event_type=EventType.TASK_ENQUEUED) == []


async def test_a_big_batch_beyond_the_queue_limit_adds_nothing(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A big batch that does not fit the queue raises QueueFullError and adds nothing."""
    config = make_config(limits=ResourceLimits(max_task_queue_size=BIG - 1))
    async with AgentRuntime(config=config) as rt:
        with pytest.raises(QueueFullError):
            await rt.submit_tasks(_requests())
        assert rt.get_queue_status().total == 0
        assert len(await rt.submit_tasks(_requests(BIG - 1))) == BIG - 1


def _mixed_priorities(count: int = BIG) -> list[dict[str, Any]]:
    priorities = random.Random(7).choices(range(101), k=count)
    return [{"name": f"t{index}", "priority": p} for index, p in enumerate(priorities)]


async def test_a_big_batch_of_mixed_priorities_is_booked_at_once_and_runs_by_priority(
    rt: AgentRuntime,
) -> None:
    """A big batch of several priorities is booked in one go (in slices, an urgent task of
    a late slice could wait behind a less urgent one already started): one agent starts
    them in priority order, FIFO within a priority, and list_tasks lists the batch newest
    first."""
    started: list[tuple[int, int]] = []

    async def record(task: Task, context: object) -> None:
        started.append((task.priority, int(task.name[1:])))

    await start_agent(rt, "recorder", record, isolation="inline")
    submit = asyncio.ensure_future(rt.submit_tasks(_mixed_priorities()))
    await asyncio.sleep(0)
    assert rt.get_queue_status().total == BIG
    ids = await submit
    assert [task.task_id for task in rt.list_tasks(limit=None)] == list(reversed(ids))
    await rt.wait_for_tasks(ids, 30)
    assert started == sorted(started)
    assert len(started) == BIG


async def test_a_big_batch_of_one_priority_lists_newest_first(rt: AgentRuntime) -> None:
    """list_tasks lists a big batch booked in slices newest first, like any other."""
    await rt.pause_queue()
    ids = await rt.submit_tasks(_requests(priority=7))
    assert [task.task_id for task in rt.list_tasks(limit=None)] == list(reversed(ids))


class SameKeyForAll:
    """An order-key plugin making the queue plain FIFO: every task gets the same key (ties
    keep submission order), priorities notwithstanding."""

    miminions_plugin_name = "same_key_for_all"

    @hookimpl
    def miminions_order_key(self, priority: int, ready_at: float) -> float:
        return 0.0


@pytest.mark.parametrize("mixed", [False, True], ids=["one-priority", "mixed-priorities"])
async def test_a_custom_order_key_ranks_a_big_batch(
    make_config: Callable[..., RuntimeConfig], mixed: bool
) -> None:
    """With an order-key plugin the plugin ranks a big batch's tasks as it would a small
    batch's (here in submission order): the batch is booked in one go."""
    started: list[int] = []

    async def record(task: Task, context: object) -> None:
        started.append(int(task.name[1:]))

    async with AgentRuntime(config=make_config(), plugins=[SameKeyForAll()]) as rt:
        await start_agent(rt, "recorder", record, isolation="inline")
        await rt.pause_queue()
        requests = _mixed_priorities() if mixed else _requests()
        submit = asyncio.ensure_future(rt.submit_tasks(requests))
        await asyncio.sleep(0)
        assert rt.get_queue_status().total == BIG
        ids = await submit
        await rt.resume_queue()
        await rt.wait_for_tasks(ids, 30)
    assert started == list(range(BIG))


async def test_a_cancelled_submit_still_books_its_whole_batch(rt: AgentRuntime) -> None:
    """Once accepted, a big batch is booked in full even if the submitting call is
    cancelled while it books: every task is there, stored, and runs."""
    await rt.pause_queue()
    submit = await _submitting(rt, _requests())
    submit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submit
    assert rt.get_queue_status().pending == BIG
    await rt.store.flush()
    assert len(await rt.store.load_tasks()) == BIG
    await start_agent(rt, "echo", agents.EchoAgent, isolation="inline")
    await rt.resume_queue()
    ids = [task.task_id for task in rt.list_tasks(limit=BIG)]
    done = await rt.wait_for_tasks(ids, 30)
    assert all(task.status is TaskStatus.COMPLETED for task in done)


async def test_submits_made_while_a_big_batch_is_booked_see_all_of_it(
    rt: AgentRuntime,
) -> None:
    """A submit made while a big batch is still being booked waits for it, so an
    idempotency key or a dependency naming a task of the batch's last slice finds it."""
    await rt.pause_queue()
    requests = _requests()
    requests[-1].update(task_id="last", idempotency_key="last-key")
    submit = await _submitting(rt, requests)
    duplicate = await rt.submit_task("again", idempotency_key="last-key")
    dependent = await rt.submit_task("after", dependencies=["last"])
    ids = await submit
    assert duplicate == ids[-1] == "last"
    assert rt.get_task_status(dependent).dependencies == ["last"]
    assert rt.get_queue_status().total == BIG + 1


async def test_a_dead_letter_requeue_cannot_take_the_room_a_big_batch_holds(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A big batch holds the queue room it was accepted with while it is booked: a
    dead-letter re-queue in between finds the queue full (as get_capacity says), and the
    batch is added whole."""
    config = make_config(limits=ResourceLimits(max_task_queue_size=BIG))
    async with AgentRuntime(config=config) as rt:
        await start_agent(rt, "switch", agents.SwitchAgent, isolation="inline")
        agents.FAILING.add("doomed")
        doomed = await rt.wait_for_task(await rt.submit_task("doomed"), 10)
        assert doomed.status is TaskStatus.FAILED
        agents.FAILING.clear()
        await rt.pause_queue()
        submit = await _submitting(rt, _requests())
        capacity = rt.get_capacity()
        with pytest.raises(QueueFullError):
            await rt.requeue_dead_letter("task:" + doomed.task_id)
        assert len(await submit) == BIG
        assert rt.get_queue_status().pending == BIG
        assert capacity.free_task_slots == 0  # get_capacity counted the held room as taken


async def test_stopping_while_a_big_batch_is_booked_keeps_all_of_it(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A runtime stopped while a big batch is being booked books the rest first: a runtime
    started later on the same database has every task of the batch, waiting."""
    count = 12 * SLICE_SIZE  # more slices than the loop turns a stop takes
    async with AgentRuntime(config=make_config()) as rt:
        await rt.pause_queue()
        submit = await _submitting(rt, _requests(count))
        await rt.stop()
        ids = await submit
    async with AgentRuntime(config=make_config()) as rt:
        assert rt.get_queue_status().pending == count
        assert {rt.get_task_status(task_id).status for task_id in ids} == {TaskStatus.PENDING}


async def test_a_submit_waiting_for_a_big_batch_is_refused_if_the_runtime_stops(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A submit made while a big batch is booked waits for it; if the runtime begins
    stopping meanwhile, it is refused (RuntimeNotRunningError) and adds nothing."""
    async with AgentRuntime(config=make_config()) as rt:
        await rt.pause_queue()
        batch = await _submitting(rt, _requests())
        late = asyncio.ensure_future(rt.submit_task("late"))
        await asyncio.sleep(0)
        assert not late.done()  # waiting for the batch
        stopping = asyncio.ensure_future(rt.stop())
        with pytest.raises(RuntimeNotRunningError):
            await asyncio.wait_for(late, 10)
        await asyncio.wait_for(stopping, 10)
        assert len(await batch) == BIG
    async with AgentRuntime(config=make_config()) as rt:
        assert rt.get_queue_status().total == BIG
        assert "late" not in {task.name for task in rt.list_tasks(limit=None)}


async def test_a_big_batch_of_dependent_tasks_is_booked_at_once(rt: AgentRuntime) -> None:
    """A big batch whose tasks depend on each other is booked in one go (slices could
    split a prerequisite from its dependents): nothing is visible half-booked."""
    await rt.pause_queue()
    requests = _requests()
    requests[0]["task_id"] = "root"
    for request in requests[1:]:
        request["dependencies"] = ["root"]
    submit = asyncio.ensure_future(rt.submit_tasks(requests))
    await asyncio.sleep(0)
    assert rt.get_queue_status().total == BIG
    await submit
    assert rt.get_queue_status().blocked == BIG - 1


@pytest.mark.parametrize("ask", ["cancel_task", "get_task_status", "explain", "wait_for_task"])
async def test_a_task_of_a_batch_being_booked_is_found_by_its_given_id(
    rt: AgentRuntime, ask: str
) -> None:
    """A task of an accepted batch can be asked for by the id it was given while later
    slices are still being booked (the rest is then booked at once), as if the batch had
    been booked in one go: a cancel reaches it instead of raising NotFoundError."""
    await rt.pause_queue()
    requests = [{"name": f"t{index}", "task_id": f"job-{index}"} for index in range(BIG)]
    submit = await _submitting(rt, requests)
    last = requests[-1]["task_id"]
    if ask == "cancel_task":
        assert (await rt.cancel_task(last)).status is TaskStatus.CANCELLED
    elif ask == "get_task_status":
        assert rt.get_task_status(last).status is TaskStatus.PENDING
    elif ask == "explain":
        assert rt.explain(last).task_id == last
    else:
        waiting = asyncio.ensure_future(rt.wait_for_task(last, 30))  # asks before the rest
        await rt.resume_queue()
        await start_agent(rt, "echo", agents.EchoAgent, isolation="inline")
        assert (await waiting).status is TaskStatus.COMPLETED
    ids = await submit
    assert ids[-1] == last
    assert rt.get_queue_status().total == BIG
    with pytest.raises(NotFoundError):
        rt.get_task_status("no-such-task")


async def test_every_slice_of_a_batch_is_ready_as_of_its_acceptance(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The slices of a batch all count as ready from when the batch was accepted: a busy
    loop between slices does not let an older, less urgent task overtake the later slices
    by aging (booked at once, the whole batch runs first)."""
    aging = 0.05
    started: list[str] = []

    async def record(task: Task, context: object) -> None:
        started.append(task.name)

    async with AgentRuntime(config=make_config(aging_seconds_per_level=aging)) as rt:
        await start_agent(rt, "recorder", record, isolation="inline")
        await rt.pause_queue()
        await rt.submit_task("earlier-low", priority=51)  # one level less urgent
        submit = await _submitting(rt, _requests(priority=50))
        # The loop is busy between two slices (CPU-bound work): blocking it is the point.
        time.sleep(1.5 * aging)  # noqa: ASYNC251
        ids = await submit
        await rt.resume_queue()
        await rt.wait_for_tasks(ids, 30)
        await wait_until(lambda: "earlier-low" in started, "the earlier task to run")
    assert started.index("earlier-low") == BIG
