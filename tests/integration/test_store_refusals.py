"""A store that refuses a write of an accepted task (its ``put_task`` raises: the store
contract in docs/plugins.md allows it) or whose agent record's commit fails or is given
up: the runtime goes on (the agent takes its next task, waiters wake, timeouts count, the
agent can be sent messages)."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Generator
from typing import Any

import pytest

from miminions import AgentRuntime, MiminionsError, RuntimeConfig, Task, TaskStatus, hookimpl
from tests.support import agents
from tests.support.waiting import WAIT_SECONDS


class _RefusingStore:
    """The chosen store, whose ``put_task`` raises once for the task named ``doomed`` in
    ``status``, and whose first agent record's commit fails if ``fail_agent``."""

    def __init__(self, inner: Any, status: TaskStatus | None, fail_agent: bool) -> None:
        self._inner = inner
        self._status = status
        self._fail_agent = fail_agent
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_task(self, task: Task) -> Any:
        if task.name == "doomed" and task.status is self._status and not self.refused:
            self.refused += 1
            raise OSError("disk full")
        return self._inner.put_task(task)

    def put_agent(self, agent: Any) -> Any:
        committed = self._inner.put_agent(agent)
        if not self._fail_agent:
            return committed
        self._fail_agent = False
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(OSError("disk full"))
        return failed


class _Refusals:
    def __init__(self, status: TaskStatus | None = None, *, fail_agent: bool = False) -> None:
        self._status = status
        self._fail_agent = fail_agent
        self.store: _RefusingStore | None = None

    @hookimpl(wrapper=True)
    def miminions_make_store(self, config: RuntimeConfig) -> Generator[None, Any, Any]:
        store = yield
        self.store = _RefusingStore(store, self._status, self._fail_agent)
        return self.store


async def test_a_refused_end_write_leaves_the_agent_serving_and_wakes_its_waiter(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The write of a task's end is refused: its waiter wakes with the store's error, the
    agent takes its next task and the runtime stops cleanly (the agent took no task again,
    a waiter without a timeout hung, and stop() raised an internal error)."""
    plugin = _Refusals(TaskStatus.COMPLETED)
    async with AgentRuntime(config=make_config(), plugins=[plugin]) as rt:
        await rt.start_agent(await rt.register_agent("a", agents.GatedAgent))
        doomed = await rt.submit_task("doomed")
        await asyncio.wait_for(agents.STARTED.setdefault("doomed", asyncio.Event()).wait(), 10)
        waiting = asyncio.ensure_future(rt.wait_for_task(doomed))  # no timeout
        agents.GATES.setdefault("doomed", asyncio.Event()).set()
        with pytest.raises(MiminionsError, match=f"task {doomed!r} was not stored") as info:
            await asyncio.wait_for(waiting, WAIT_SECONDS)
        assert isinstance(info.value.__cause__, OSError)
        assert plugin.store is not None
        assert plugin.store.refused == 1
        assert rt.get_task_status(doomed).status is TaskStatus.COMPLETED
        agents.GATES.setdefault("fine", asyncio.Event()).set()
        fine = await rt.submit_task("fine")
        assert (await rt.wait_for_task(fine, WAIT_SECONDS)).status is TaskStatus.COMPLETED


async def test_a_refused_start_write_keeps_the_tasks_timeout(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The write of a task's start is refused: its timeout still counts and the agent shows
    the task it runs (the task ran with no timeout)."""
    plugin = _Refusals(TaskStatus.RUNNING)
    async with AgentRuntime(config=make_config(), plugins=[plugin]) as rt:
        agent_id = await rt.register_agent("a", agents.SleepyAgent)
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task("doomed", timeout_seconds=0.2)
        await asyncio.wait_for(agents.STARTED.setdefault("doomed", asyncio.Event()).wait(), 10)
        assert rt.get_agent_status(agent_id).task_id == task_id
        task = await rt.wait_for_task(task_id, WAIT_SECONDS)
        assert task.status is TaskStatus.FAILED
        assert "TaskTimeoutError" in (task.error_message or "")


async def test_an_agent_whose_record_commit_failed_has_its_mailbox(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """register_agent raises the store's error, but the agent is registered (as a submit
    refused by the store is accepted) with its mailbox (it had none, for good)."""
    async with AgentRuntime(config=make_config(), plugins=[_Refusals(fail_agent=True)]) as rt:
        with pytest.raises(OSError, match="disk full"):
            await rt.register_agent("a", agents.EchoAgent)
        [agent] = rt.list_agents()
        assert await rt.send_message(agent.agent_id, "hello")


async def test_a_register_given_up_during_its_commit_leaves_an_agent_with_a_mailbox(
    rt: AgentRuntime,
) -> None:
    """register_agent cancelled while its record commits (asyncio.wait_for): the agent is
    registered with its mailbox (it had none, for good)."""
    registering = asyncio.ensure_future(rt.register_agent("a", agents.EchoAgent))
    for _ in range(100):  # until it awaits the commit of its record
        await asyncio.sleep(0)
        if rt.list_agents():
            break
    assert not registering.done()
    registering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await registering
    [agent] = rt.list_agents()
    assert await rt.send_message(agent.agent_id, "hello")


async def test_every_wait_of_a_refused_end_raises_the_refusal(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A refused end write is raised to every wait that says it is stored: one waiting
    already, ``wait_for_tasks`` (it returned the task as committed), a wait begun after."""
    plugin = _Refusals(TaskStatus.COMPLETED)
    async with AgentRuntime(config=make_config(), plugins=[plugin]) as rt:
        await rt.start_agent(await rt.register_agent("a", agents.GatedAgent))
        doomed = await rt.submit_task("doomed")
        await asyncio.wait_for(agents.STARTED.setdefault("doomed", asyncio.Event()).wait(), 10)
        single = asyncio.ensure_future(rt.wait_for_task(doomed, WAIT_SECONDS))
        group = asyncio.ensure_future(rt.wait_for_tasks([doomed], WAIT_SECONDS))
        for _ in range(5):  # both are waiting
            await asyncio.sleep(0)
        agents.GATES.setdefault("doomed", asyncio.Event()).set()
        for wait in (single, group, rt.wait_for_task(doomed), rt.wait_for_tasks([doomed])):
            with pytest.raises(MiminionsError, match=f"task {doomed!r} was not stored") as info:
                await wait
            assert isinstance(info.value.__cause__, OSError)
        # Raised anew each time: a later wait's error carries no earlier wait's frames.
        frames = []
        for _ in range(3):
            with pytest.raises(MiminionsError) as info:
                await rt.wait_for_task(doomed)
            frames.append(len(traceback.extract_tb(info.value.__traceback__)))
        assert frames[0] == frames[1] == frames[2]


async def test_a_cancel_whose_write_is_refused_raises_the_refusal(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """cancel_task reports the cancel stored only once it is: a refused write raises."""
    plugin = _Refusals(TaskStatus.CANCELLED)
    async with AgentRuntime(config=make_config(), plugins=[plugin]) as rt:
        doomed = await rt.submit_task("doomed")  # no agent: it stays pending
        with pytest.raises(MiminionsError, match="disk full"):
            await rt.cancel_task(doomed)
        assert rt.get_task_status(doomed).status is TaskStatus.CANCELLED


class _LetterRefusingStore:
    """The chosen store, refusing the write of a re-queued dead letter."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_dead_letter(self, letter: Any) -> Any:
        if letter.requeued_at is not None:
            raise OSError("disk full")
        return self._inner.put_dead_letter(letter)


class _LetterRefusals:
    @hookimpl(wrapper=True)
    def miminions_make_store(self, config: RuntimeConfig) -> Generator[None, Any, Any]:
        store = yield
        return _LetterRefusingStore(store)


async def test_a_requeue_whose_letter_write_is_refused_runs_the_task(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """requeue_dead_letter raises the refusal of the letter's write, and the task it
    revived runs (it stayed pending with the agent idle: nothing handed it out)."""
    async with AgentRuntime(config=make_config(), plugins=[_LetterRefusals()]) as rt:
        await rt.start_agent(await rt.register_agent("a", agents.SwitchAgent))
        agents.FAILING.add("flaky")
        task_id = await rt.submit_task("flaky", max_retries=0)
        assert (await rt.wait_for_task(task_id, WAIT_SECONDS)).status is TaskStatus.FAILED
        [letter] = rt.list_dead_letters("task")
        agents.FAILING.discard("flaky")
        with pytest.raises(MiminionsError, match="disk full"):
            await rt.requeue_dead_letter(letter.dead_letter_id)
        task = await rt.wait_for_task(task_id, WAIT_SECONDS)
        assert task.status is TaskStatus.COMPLETED
