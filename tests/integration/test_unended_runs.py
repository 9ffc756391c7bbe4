"""Runs whose worker ended without ending the run (the program cancelled every task of its
loop): a cancel_task or a stop_agent afterwards returns at once, a timeout does not count
for a run nobody runs, and an agent's cleanup that raises is neither its failure nor a
reason for on_error when the runtime (or the program) cancelled the task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from miminions import AgentRuntime, BaseAgent, RuntimeConfig, Task
from tests.support.cancelling import AtTheWorkersCreation, cancel_everything
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until

MakeConfig = Callable[..., RuntimeConfig]


async def _after_a_cancel_all(make_config: MakeConfig) -> tuple[AgentRuntime, str, str]:
    """A started runtime (stop it yourself) whose inline agent ran a task when the program
    cancelled every task of its loop; returns once the worker has ended (the run unbooked)."""
    started = asyncio.Event()

    async def agent(task: object, context: object) -> str:
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return "never"

    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=300.0))
    await rt.start()
    agent_id = await start_agent(rt, "a", agent, isolation="inline")
    task_id = await rt.submit_task("job")
    await asyncio.wait_for(started.wait(), WAIT_SECONDS)
    others = cancel_everything()
    await asyncio.wait(others, timeout=WAIT_SECONDS)
    assert rt.get_task_status(task_id).status.value == "running"
    return rt, agent_id, task_id


async def _force_finish(rt: AgentRuntime) -> None:
    for run in list(rt.executor._runs.values()):  # type: ignore[attr-defined]
        rt.executor._settle_unended(run, "test cleanup")  # type: ignore[attr-defined]


async def test_cancel_task_after_a_cancel_all_returns(make_config: MakeConfig) -> None:
    """After a cancel of everything (docs/operations.md: "Stop the runtime then"), the
    program cancels the task that was running before it stops: rt.cancel_task() never
    returns, the run whose worker is gone is only marked (nobody books it)."""
    rt, _, task_id = await _after_a_cancel_all(make_config)
    try:
        cancelling = asyncio.ensure_future(rt.cancel_task(task_id))
        done, _ = await asyncio.wait({cancelling}, timeout=WAIT_SECONDS)
        status = rt.get_task_status(task_id).status.value
        if not done:
            await _force_finish(rt)
            await asyncio.wait({cancelling}, timeout=WAIT_SECONDS)
        assert done, f"rt.cancel_task() still waiting after {WAIT_SECONDS} s; task {status}"
        assert cancelling.result().status.value == "cancelled"
    finally:
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)


async def test_graceful_stop_agent_after_a_cancel_all_is_prompt(make_config: MakeConfig) -> None:
    """rt.stop() after a cancel of everything is prompt (drain waits for the run *or its
    worker*); rt.stop_agent(graceful=True) waits for run.wait() only (wait_agent_idle), so
    it takes its whole timeout for a run nobody will end."""
    rt, agent_id, task_id = await _after_a_cancel_all(make_config)
    try:
        stopping = asyncio.ensure_future(rt.stop_agent(agent_id, timeout_seconds=300.0))
        done, _ = await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
        if not done:
            await _force_finish(rt)
            await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
        assert done, f"stop_agent(graceful=True) still waiting after {WAIT_SECONDS} s"
        assert rt.get_task_status(task_id).status.value == "pending"
    finally:
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)


class CleanupRaises(BaseAgent):
    """Runs until cancelled; its cleanup then fails (a connection closing badly, say)."""

    started: asyncio.Event
    errors: list[str]

    async def execute_task(self, task: Task) -> str:
        CleanupRaises.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None
        return "never"

    async def on_error(self, error: BaseException, task: Task | None) -> None:
        CleanupRaises.errors.append(repr(error))


async def _cleanup_raises_running_a_task(rt: AgentRuntime) -> tuple[str, str]:
    """Start a CleanupRaises agent and give it a task; return (agent id, task id) once
    the task runs."""
    agent_id = await start_agent(rt, "a", CleanupRaises, isolation="inline")
    task_id = await rt.submit_task("job")
    await asyncio.wait_for(CleanupRaises.started.wait(), WAIT_SECONDS)
    return agent_id, task_id


def _reset_cleanup_raises() -> None:
    CleanupRaises.started = asyncio.Event()
    CleanupRaises.errors = []


async def test_forced_stop_agent_requeues_without_on_error(make_config: MakeConfig) -> None:
    """docs/concepts.md: on_error "is not called for ... cancellations or interruptions".
    A forced stop_agent re-queues the task, but the agent's cleanup raised: on_error runs
    for the re-queued task."""
    _reset_cleanup_raises()
    async with AgentRuntime(config=make_config()) as rt:
        agent_id, task_id = await _cleanup_raises_running_a_task(rt)
        await rt.stop_agent(agent_id, graceful=False)
        assert rt.get_task_status(task_id).status.value == "pending"
        assert CleanupRaises.errors == [], "on_error called for a re-queued task"


async def test_cancel_task_does_not_call_on_error(make_config: MakeConfig) -> None:
    """The same for cancel_task: the task ends cancelled, and on_error runs with the
    cleanup's error."""
    _reset_cleanup_raises()
    async with AgentRuntime(config=make_config()) as rt:
        _, task_id = await _cleanup_raises_running_a_task(rt)
        cancelled = await asyncio.wait_for(rt.cancel_task(task_id), WAIT_SECONDS)
        assert cancelled.status.value == "cancelled"
        assert CleanupRaises.errors == [], "on_error called for a cancelled task"


async def test_cancel_all_whose_cleanup_raises_books_nothing(make_config: MakeConfig) -> None:
    """docs/operations.md: a program cancelling every task of its loop: nothing is handed
    out, "the stop ... gives the interrupted tasks back to the queue". With a cleanup that
    raises, the task is failed for good during the cancel-all (max_retries=0)."""
    _reset_cleanup_raises()
    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=300.0))
    await rt.start()
    try:
        await start_agent(rt, "a", CleanupRaises, isolation="inline")
        task_id = await rt.submit_task("job", max_retries=0)
        await asyncio.wait_for(CleanupRaises.started.wait(), WAIT_SECONDS)
        others = cancel_everything()
        await asyncio.wait(others, timeout=WAIT_SECONDS)
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)
        task = rt.get_task_status(task_id)
        assert task.status.value == "pending", f"{task.status.value}: {task.error_message}"
    finally:
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)


async def test_cancel_all_before_a_workers_first_step_then_stop_requeues(
    make_config: MakeConfig,
) -> None:
    """A program cancels every task of its loop just after a task was handed out (its
    worker cancelled before its first step: the agent's code never ran). The task's timeout
    no longer counts; a stop after it gives the task back to the queue (it booked the
    never-run task as failed by timeout, for good with max_retries=0)."""
    ran: list[str] = []

    async def agent(task: object, context: object) -> str:
        ran.append("ran")
        return "done"

    swept: list[asyncio.Task[object]] = []
    main = asyncio.current_task()

    def sweep() -> None:  # the program cancels every task but main
        for other in asyncio.all_tasks():
            if other is not main:
                swept.append(other)
                other.cancel()

    config = make_config(shutdown_timeout_seconds=300.0)
    rt = AgentRuntime(config=config, plugins=[AtTheWorkersCreation(sweep)])
    await rt.start()
    try:
        agent_id = await start_agent(rt, "a", agent, isolation="inline")
        await rt.pause_agent(agent_id)
        task_id = await rt.submit_task("job", timeout_seconds=0.2, max_retries=0)
        # (Its own task: the sweep comes as the resume's record commits, and cancels it.)
        resuming = asyncio.ensure_future(rt.resume_agent(agent_id))
        await wait_until(lambda: swept and all(t.done() for t in swept), "the sweep ran")
        assert ran == []
        assert resuming in swept
        # The task's 0.2 s timeout passes while the program winds down (the time must pass
        # to show it does not count: nothing else would tell).
        await asyncio.sleep(0.5)
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)
        task = rt.get_task_status(task_id)
        assert ran == []
        assert task.status.value == "pending", f"{task.status.value}: {task.error_message}"
    finally:
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)
