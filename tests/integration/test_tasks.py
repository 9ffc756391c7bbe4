"""Tasks end to end on a real runtime: submit, run, priorities, dependencies, retries,
timeouts, cancellation, idempotency, routing, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    EventType,
    HoldKind,
    InvalidStateError,
    NotFoundError,
    Priority,
    ResourceLimits,
    RuntimeConfig,
    TaskRequest,
    TaskStatus,
    ValidationError,
    WaitTimeoutError,
)
from miminions.kernel.task_input import MAX_JSON_DEPTH
from tests.support import agents
from tests.support.runtime import start_agent


async def test_submit_and_wait_returns_output(rt: AgentRuntime) -> None:
    """F-02: a task is stored, handed to an available agent and its result recorded."""
    agent_id = await start_agent(rt, "echo", agents.EchoAgent)
    task_id = await rt.submit_task("hello", {"text": "hi"})
    task = await rt.wait_for_task(task_id, timeout_seconds=5)
    assert task.status is TaskStatus.COMPLETED
    assert task.output_data == {"echo": {"text": "hi"}, "agent": "echo"}
    assert task.assigned_agent_id == agent_id
    assert task.started_at is not None
    assert task.completed_at is not None
    assert task.completed_at >= task.started_at >= task.created_at


@pytest.mark.parametrize("fn", [agents.async_function_agent, agents.sync_function_agent])
async def test_function_agents(rt: AgentRuntime, fn: object) -> None:
    """F-22: a plain async or sync function is an agent."""
    await start_agent(rt, "fn", fn)
    task = await rt.wait_for_task(await rt.submit_task("double", {"x": 21}), 5)
    assert task.status is TaskStatus.COMPLETED
    assert task.output_data["agent"] == "fn"


async def test_sync_agent_does_not_block_the_loop(rt: AgentRuntime) -> None:
    """F-22: synchronous agent code runs in a thread; other agents keep working."""
    await start_agent(rt, "sync", agents.SyncBlockingAgent, group="slow")
    await start_agent(rt, "echo", agents.EchoAgent, group="fast")
    blocked = await rt.submit_task("blocked", group="slow")
    quick = await rt.wait_for_task(await rt.submit_task("quick", group="fast"), 5)
    assert quick.status is TaskStatus.COMPLETED
    assert rt.get_task_status(blocked).status is TaskStatus.RUNNING
    agents.SyncBlockingAgent.release.set()
    done = await rt.wait_for_task(blocked, 5)
    assert done.status is TaskStatus.COMPLETED
    assert done.output_data["thread"] != "MainThread"


async def test_priority_order_and_fifo(rt: AgentRuntime) -> None:
    """F-03: a ready task of higher priority runs first; equal priorities are FIFO."""
    await start_agent(rt, "echo", agents.EchoAgent)
    await rt.pause_queue()
    ids = [
        await rt.submit_task("low", priority=Priority.LOW),
        await rt.submit_task("medium-1", priority=Priority.MEDIUM),
        await rt.submit_task("high", priority=Priority.HIGH),
        await rt.submit_task("medium-2", priority=Priority.MEDIUM),
        await rt.submit_task("p10", priority=10),
    ]
    await rt.resume_queue()
    for task_id in ids:
        await rt.wait_for_task(task_id, 5)
    assert [name for _, name in agents.CALLS] == ["high", "p10", "medium-1", "medium-2", "low"]


async def test_dependencies_run_in_order(rt: AgentRuntime) -> None:
    """F-10: a task runs only after all its prerequisites completed."""
    await start_agent(rt, "echo", agents.EchoAgent)
    await rt.pause_queue()
    first = await rt.submit_task("first", priority=Priority.LOW)
    second = await rt.submit_task("second", priority=Priority.LOW)
    last = await rt.submit_task("last", priority=Priority.HIGH, dependencies=[first, second])
    assert rt.get_task_status(last).status is TaskStatus.BLOCKED
    await rt.resume_queue()
    assert (await rt.wait_for_task(last, 5)).status is TaskStatus.COMPLETED
    assert [name for _, name in agents.CALLS] == ["first", "second", "last"]


async def test_batch_with_internal_dependencies(rt: AgentRuntime) -> None:
    """F-10: submit_tasks accepts a DAG whose tasks refer to each other by id."""
    await start_agent(rt, "echo", agents.EchoAgent)
    ids = await rt.submit_tasks(
        [
            TaskRequest(name="c", task_id="c", dependencies=["a", "b"]),
            {"name": "a", "task_id": "a"},
            TaskRequest(name="b", task_id="b", dependencies=["a"]),
        ]
    )
    assert ids == ["c", "a", "b"]
    await rt.wait_for_task("c", 5)
    assert [name for _, name in agents.CALLS] == ["a", "b", "c"]


async def test_failed_prerequisite_fails_dependents(rt: AgentRuntime) -> None:
    """F-10: a failed prerequisite fails its dependents with the reason, transitively."""
    await start_agent(rt, "rec", agents.RecordingAgent)
    root = await rt.submit_task("root", {"fail": "boom"})
    child = await rt.submit_task("child", dependencies=[root])
    grandchild = await rt.submit_task("grandchild", dependencies=[child])
    assert (await rt.wait_for_task(root, 5)).status is TaskStatus.FAILED
    for task_id in (child, grandchild):
        task = await rt.wait_for_task(task_id, 5)
        assert task.status is TaskStatus.FAILED
        assert "prerequisite task" in (task.error_message or "")
    assert root in (rt.get_task_status(child).error_message or "")
    assert ("execute", "child") not in agents.CALLS


async def test_cancelled_prerequisite_cancels_dependents(rt: AgentRuntime) -> None:
    """F-10: cancelling a prerequisite cancels its waiting dependents."""
    await rt.pause_queue()
    root = await rt.submit_task("root")
    child = await rt.submit_task("child", dependencies=[root])
    cancelled = await rt.cancel_task(root)
    assert cancelled.status is TaskStatus.CANCELLED
    assert rt.get_task_status(child).status is TaskStatus.CANCELLED


async def test_retries_with_backoff_then_success(rt: AgentRuntime) -> None:
    """F-19: a failing task is retried up to max_retries with backoff."""
    await start_agent(rt, "flaky", agents.FlakyAgent)
    task_id = await rt.submit_task("flaky", {"fail_times": 2}, max_retries=3)
    task = await rt.wait_for_task(task_id, 5)
    assert task.status is TaskStatus.COMPLETED
    assert task.retry_count == 2
    assert task.output_data == {"attempts": 3}
    retries = await rt.query_events(event_type=EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
    assert [e.details["attempt"] for e in retries] == [1, 2]
    delays = [e.details["delay_seconds"] for e in retries]
    assert delays[1] == pytest.approx(2 * delays[0])


async def test_exhausted_retries_go_to_dead_letters_and_can_be_requeued(rt: AgentRuntime) -> None:
    """F-19, F-28: out of retries the task fails, lands on the dead-letter list and can be
    re-queued from it with a fresh round of retries."""
    await start_agent(rt, "switch", agents.SwitchAgent)
    agents.FAILING.add("job")
    task_id = await rt.submit_task("job", max_retries=1)
    failed = await rt.wait_for_task(task_id, 5)
    assert failed.status is TaskStatus.FAILED
    assert failed.retry_count == 1
    assert failed.error_message == "RuntimeError: job is switched to fail"
    letters = rt.list_dead_letters()
    assert [(letter.kind, letter.ref_id) for letter in letters] == [("task", task_id)]
    assert rt.get_queue_status().dead_letters == 1
    letters[0].payload.clear()  # a snapshot: the runtime's letter keeps its payload
    assert rt.list_dead_letters()[0].payload != {}

    agents.FAILING.clear()
    assert await rt.requeue_dead_letter(letters[0].dead_letter_id) == task_id
    again = await rt.wait_for_task(task_id, 5)
    assert again.status is TaskStatus.COMPLETED
    assert again.retry_count == 0
    assert rt.get_queue_status().dead_letters == 0
    assert rt.list_dead_letters()[0].requeued_at is not None
    with pytest.raises(InvalidStateError):
        await rt.requeue_dead_letter(letters[0].dead_letter_id)


async def test_dead_letters_stay_oldest_first_when_a_task_fails_for_good_again(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-28: a re-queued task that fails for good again has one letter, now the newest:
    the list is oldest first before and after a restart alike."""
    config = make_config()
    agents.FAILING.update({"a", "b"})
    try:
        async with AgentRuntime(config=config) as rt:
            await start_agent(rt, "switch", agents.SwitchAgent)
            a = await rt.submit_task("a")
            await rt.wait_for_task(a, 5)
            b = await rt.submit_task("b")
            await rt.wait_for_task(b, 5)
            await rt.requeue_dead_letter("task:" + a)
            assert (await rt.wait_for_task(a, 5)).status is TaskStatus.FAILED
            assert [letter.ref_id for letter in rt.list_dead_letters()] == [b, a]
        async with AgentRuntime(config=config) as rt:
            assert [letter.ref_id for letter in rt.list_dead_letters()] == [b, a]
    finally:
        agents.FAILING.clear()


async def test_requeue_dead_letter_refuses_an_id_that_is_no_string(rt: AgentRuntime) -> None:
    """A dead letter id that is not a string is a ValidationError saying what to pass."""
    with pytest.raises(ValidationError, match="list_dead_letters"):
        await rt.requeue_dead_letter([])  # type: ignore[arg-type]


async def test_requeued_dead_letter_revives_its_dependents(rt: AgentRuntime) -> None:
    """F-28: re-queuing a failed prerequisite also revives the dependents it took down."""
    await start_agent(rt, "switch", agents.SwitchAgent)
    agents.FAILING.add("root")
    root = await rt.submit_task("root")
    child = await rt.submit_task("child", dependencies=[root])
    assert (await rt.wait_for_task(child, 5)).status is TaskStatus.FAILED
    agents.FAILING.clear()
    await rt.requeue_dead_letter("task:" + root)
    assert (await rt.wait_for_task(root, 5)).status is TaskStatus.COMPLETED
    assert (await rt.wait_for_task(child, 5)).status is TaskStatus.COMPLETED


async def test_timeout_fails_task_and_records_event(rt: AgentRuntime) -> None:
    """F-17: a task that runs past its timeout is stopped and failed (TASK_TIMEOUT)."""
    await start_agent(rt, "sleepy", agents.SleepyAgent)
    task_id = await rt.submit_task("forever", timeout_seconds=0.05)
    task = await rt.wait_for_task(task_id, 5)
    assert task.status is TaskStatus.FAILED
    assert "TaskTimeoutError" in (task.error_message or "")
    assert await rt.query_events(event_type="task_timeout", task_id=task_id)


async def test_cancel_pending_and_running(rt: AgentRuntime) -> None:
    """F-19: pending and running tasks can be cancelled."""
    await start_agent(rt, "sleepy", agents.SleepyAgent)
    running = await rt.submit_task("running")
    pending = await rt.submit_task("pending")
    await asyncio.wait_for(agents.STARTED.setdefault("running", asyncio.Event()).wait(), 5)
    assert (await rt.cancel_task(pending)).status is TaskStatus.CANCELLED
    cancelled = await rt.cancel_task(running)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error_message == "cancelled by user"
    assert rt.get_queue_status().cancelled == 2


async def test_idempotency_key_returns_the_same_task(rt: AgentRuntime) -> None:
    """F-19: a re-submitted task with the same idempotency key is not added again."""
    await start_agent(rt, "echo", agents.EchoAgent)
    first = await rt.submit_task("once", idempotency_key="k1")
    second = await rt.submit_task("once", idempotency_key="k1")
    assert first == second
    await rt.wait_for_task(first, 5)
    assert rt.get_queue_status().total == 1
    assert agents.CALLS == [("echo", "once")]


async def test_routing_to_agent_and_group(rt: AgentRuntime) -> None:
    """F-02, F-18: a task may target one agent or a group."""
    a1 = await start_agent(rt, "a1", agents.EchoAgent, group="alpha")
    await start_agent(rt, "b1", agents.EchoAgent, group="beta")
    await start_agent(rt, "b2", agents.EchoAgent, group="beta")
    to_agent = [await rt.submit_task(f"agent-{i}", agent_id=a1) for i in range(5)]
    to_group = [await rt.submit_task(f"group-{i}", group="beta") for i in range(10)]
    for task_id in to_agent:
        assert (await rt.wait_for_task(task_id, 5)).assigned_agent_id == a1
    beta = {a.agent_id for a in rt.list_agents(group="beta")}
    for task_id in to_group:
        assert (await rt.wait_for_task(task_id, 5)).assigned_agent_id in beta


async def test_queue_pause_holds_tasks(rt: AgentRuntime) -> None:
    """F-04: while the queue is paused no task is handed out."""
    await start_agent(rt, "echo", agents.EchoAgent)
    await rt.pause_queue()
    task_id = await rt.submit_task("held")
    assert rt.get_queue_status().paused
    explanation = rt.explain(task_id)
    assert [r.kind.value for r in explanation.reasons] == ["queue_paused"]
    with pytest.raises(TimeoutError):
        await rt.wait_for_task(task_id, timeout_seconds=0.05)
    await rt.resume_queue()
    assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED


async def test_explain_counts_only_tasks_its_own_agents_would_take_first(
    rt: AgentRuntime,
) -> None:
    """F-24: the "tasks ahead" of a task are those an agent that may run it would take
    first; a more urgent task of another group, which no such agent takes, is in its
    global queue position but does not hold it back."""
    await rt.register_agent("red-member", agents.EchoAgent, group="red")  # never started
    blue = await start_agent(rt, "blue-member", agents.EchoAgent, group="blue")
    await rt.pause_agent(blue)
    red_task = await rt.submit_task("red-work", group="red", priority=0)
    blue_task = await rt.submit_task("blue-work", group="blue", priority=50)
    loose_task = await rt.submit_task("any-work", priority=10)  # blue's agent takes it first

    explanation = rt.explain(blue_task)
    kinds = [reason.kind for reason in explanation.reasons]
    assert kinds == [HoldKind.AGENT_PAUSED, HoldKind.TASKS_AHEAD], explanation.summary
    assert explanation.reasons[1].message.startswith("1 ready task(s)")
    assert explanation.queue_position == 2  # the global rank counts the red task too
    assert [r.kind for r in rt.explain(red_task).reasons] == [HoldKind.NO_AGENT]

    await rt.resume_agent(blue)
    assert (await rt.wait_for_task(blue_task, 5)).status is TaskStatus.COMPLETED
    assert (await rt.wait_for_task(loose_task, 5)).status is TaskStatus.COMPLETED
    assert rt.get_task_status(red_task).status is TaskStatus.PENDING  # it never was ahead


async def test_explain_names_an_agent_still_running_on_error(rt: AgentRuntime) -> None:
    """F-24: a task waiting for an agent that still runs on_error for the task before it
    is held by a busy agent, and explain says so (it gave no reason at all)."""
    agent = agents.SlowOnErrorAfterFailure()
    agent_id = await start_agent(rt, "cleaner", agent)
    failed = await rt.submit_task("fail", agent_id=agent_id)
    assert (await rt.wait_for_task(failed, 5)).status is TaskStatus.FAILED
    await asyncio.wait_for(agent.in_on_error.wait(), 5)
    waiting = await rt.submit_task("next", agent_id=agent_id)
    [reason] = rt.explain(waiting).reasons
    assert reason.kind is HoldKind.AGENTS_BUSY
    assert f"{agent_id} still running on_error" in reason.message
    agent.release.set()
    assert (await rt.wait_for_task(waiting, 5)).status is TaskStatus.COMPLETED


async def test_task_status_reports_position_and_effective_priority(rt: AgentRuntime) -> None:
    """F-05, F-26: pending tasks show queue position, estimated wait and effective
    priority; a prerequisite of urgent work inherits its urgency."""
    await rt.pause_queue()
    low = await rt.submit_task("low", priority=Priority.LOW)
    other = await rt.submit_task("other", priority=Priority.MEDIUM)
    urgent = await rt.submit_task("urgent", priority=Priority.HIGH, dependencies=[low])
    low_status = rt.get_task_status(low)
    assert low_status.priority == Priority.LOW
    assert low_status.effective_priority == 0
    assert low_status.queue_position == 0
    assert rt.get_task_status(other).queue_position == 1
    assert rt.get_task_status(urgent).queue_position is None
    assert rt.get_task_status(urgent).status is TaskStatus.BLOCKED


async def test_agent_limit_timeout_applies_and_is_reported(rt: AgentRuntime) -> None:
    """F-17: a timeout set in the agent's limits applies to its tasks; the event says which."""
    await start_agent(
        rt, "sleepy", agents.SleepyAgent, limits=ResourceLimits(task_timeout_seconds=0.05)
    )
    task_id = await rt.submit_task("forever")
    assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.FAILED
    (event,) = await rt.query_events(event_type="task_timeout", task_id=task_id)
    assert event.details["timeout_seconds"] == 0.05


async def test_non_json_result_fails_the_task_and_tells_the_agent(rt: AgentRuntime) -> None:
    """R-04: a result that is not JSON fails the task (not stored), on_error is called and
    the attempt counts as failed for the agent."""
    agent_id = await start_agent(rt, "odd", agents.RecordingAgent)
    task_id = await rt.submit_task("odd", {"return": "object"})
    task = await rt.wait_for_task(task_id, 5)
    assert task.status is TaskStatus.FAILED
    assert "JSON" in (task.error_message or "")
    assert ("on_error", ("ValidationError", task_id)) in agents.CALLS
    status = rt.get_agent_status(agent_id)
    assert (status.tasks_completed, status.tasks_failed) == (0, 1)


async def test_wait_for_tasks_returns_all_in_order_once_finished(rt: AgentRuntime) -> None:
    """F-02: ``wait_for_tasks`` waits for a whole batch (finished, failed or not yet run)
    and returns the tasks in the order asked, each committed."""
    agent_id = await start_agent(rt, "echo", agents.EchoAgent)
    first = await rt.submit_task("echo", {"n": 1}, agent_id=agent_id)
    await rt.wait_for_task(first, 5)  # already finished when the batch wait starts
    later = await rt.submit_tasks(
        [TaskRequest(name="echo", input_data={"n": n}, agent_id=agent_id) for n in (2, 3)]
    )
    done = await rt.wait_for_tasks([later[1], first, later[0]], timeout_seconds=5)
    assert [t.task_id for t in done] == [later[1], first, later[0]]
    assert all(t.status is TaskStatus.COMPLETED for t in done)
    assert [t.input_data["n"] for t in done] == [3, 1, 2]


async def test_wait_for_tasks_times_out_and_names_what_is_left(rt: AgentRuntime) -> None:
    """F-02, R-04: a batch wait that runs out of time says how many are unfinished; an
    unknown id is a NotFoundError before anything waits."""
    task_id = await rt.submit_task("nobody-runs-this")  # no agent registered
    with pytest.raises(WaitTimeoutError, match="1 of 1 tasks are not finished"):
        await rt.wait_for_tasks([task_id], timeout_seconds=0.05)
    with pytest.raises(NotFoundError):
        await rt.wait_for_tasks([task_id, "no-such-task"], timeout_seconds=0.05)
    agent_id = await start_agent(rt, "echo", agents.EchoAgent)
    (task,) = await rt.wait_for_tasks([task_id], timeout_seconds=5)
    assert task.status is TaskStatus.COMPLETED
    assert task.assigned_agent_id == agent_id


async def test_an_agent_whose_tasks_never_suspend_still_lets_the_loop_turn(
    rt: AgentRuntime,
) -> None:
    """An inline agent working through tasks that never await anything hands the loop to
    the rest of the application between them, rather than running the whole queue in one go."""

    async def instant(task: object, context: object) -> None:
        return None

    await start_agent(rt, "instant", instant, isolation="inline")
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(rt.get_metrics().tasks_completed)
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    count = 200
    ids = await rt.submit_tasks([TaskRequest(name="quick") for _ in range(count)])
    tasks = await rt.wait_for_tasks(ids, 10)
    done.set()
    await watcher
    assert all(task.status is TaskStatus.COMPLETED for task in tasks)
    assert any(0 < completed < count for completed in seen)


async def test_an_agent_changing_its_task_does_not_change_the_stored_task(
    rt: AgentRuntime, isolation: str
) -> None:
    """What an agent does to the task object it was handed (its input, its dependencies)
    stays with the agent: the runtime's task and the stored one keep what was submitted."""

    agent_id = await start_agent(rt, "meddler", agents.meddling_agent, isolation=isolation)
    first = await rt.submit_task("first", agent_id=agent_id)
    task_id = await rt.submit_task(
        "meddled", {"nested": {"x": 1}}, dependencies=[first], agent_id=agent_id
    )
    done = await rt.wait_for_task(task_id, 10)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    stored = {task.task_id: task for task in await rt.store.load_tasks()}
    for task in (done, rt.get_task_status(task_id), stored[task_id]):
        assert task.input_data == {"nested": {"x": 1}}
        assert task.dependencies == [first]
    assert stored[first].input_data == {}
    assert stored[first].dependencies == []


async def test_changing_a_returned_task_does_not_change_the_runtime(rt: AgentRuntime) -> None:
    """Tasks the API returns are snapshots: changing one changes nothing in the runtime."""
    agent_id = await start_agent(rt, "echo", agents.EchoAgent, isolation="inline")
    task_id = await rt.submit_task("echo", {"nested": {"x": 1}}, agent_id=agent_id)
    for task in (
        await rt.wait_for_task(task_id, 10),
        (await rt.wait_for_tasks([task_id], 10))[0],
        rt.get_task_status(task_id),
        rt.list_tasks()[0],
    ):
        task.input_data["nested"]["x"] = 2
        task.dependencies.append("nonsense")
        if isinstance(task.output_data, dict):
            task.output_data["added"] = True
    again = rt.get_task_status(task_id)
    assert again.input_data == {"nested": {"x": 1}}
    assert again.dependencies == []
    assert isinstance(again.output_data, dict)
    assert "added" not in again.output_data


async def test_deeply_nested_input_is_handed_out_whole(rt: AgentRuntime) -> None:
    """Input nested as deep as JSON values may (hundreds of levels), accepted at submit, is
    also handed to the agent and back to callers (the copies made on the way have no depth
    limit of their own)."""
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(MAX_JSON_DEPTH - 2):  # the echo wraps it once more
        inner["x"] = {}
        inner = inner["x"]  # type: ignore[assignment]
    agent_id = await start_agent(rt, "echo", agents.EchoAgent, isolation="inline")
    task_id = await rt.submit_task("deep", deep, agent_id=agent_id)
    done = await rt.wait_for_task(task_id, 10)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert done.input_data == deep
    assert rt.get_task_status(task_id).input_data == deep
    assert [task.task_id for task in rt.list_tasks()] == [task_id]


async def test_with_many_busy_agents_an_idle_one_takes_the_untargeted_work(
    rt: AgentRuntime,
) -> None:
    """F-02, F-05: with more routes holding ready tasks than idle agents (tasks queued for
    four busy agents), the one idle agent gets the untargeted task at once, and each
    targeted task waits for its own agent, which then runs it."""
    busy = [await start_agent(rt, f"busy-{n}", agents.GatedAgent) for n in range(4)]
    for n, agent_id in enumerate(busy):
        await rt.submit_task(f"hold-{n}", agent_id=agent_id)
        await asyncio.wait_for(agents.STARTED.setdefault(f"hold-{n}", asyncio.Event()).wait(), 5)
    waiting = [await rt.submit_task(f"mine-{n}", agent_id=a) for n, a in enumerate(busy)]
    idle = await start_agent(rt, "idle", agents.GatedAgent)
    free = await rt.submit_task("free", priority=100)
    await asyncio.wait_for(agents.STARTED.setdefault("free", asyncio.Event()).wait(), 5)
    assert rt.get_task_status(free).assigned_agent_id == idle
    assert all(rt.get_task_status(t).status is TaskStatus.PENDING for t in waiting)
    for n in range(4):
        agents.GATES.setdefault(f"hold-{n}", asyncio.Event()).set()
        agents.GATES.setdefault(f"mine-{n}", asyncio.Event()).set()
    agents.GATES.setdefault("free", asyncio.Event()).set()
    for task_id, agent_id in zip(waiting, busy, strict=True):
        task = await rt.wait_for_task(task_id, 5)
        assert task.status is TaskStatus.COMPLETED
        assert task.assigned_agent_id == agent_id


async def test_estimated_wait_is_none_while_the_queue_is_paused(rt: AgentRuntime) -> None:
    """F-24: a pending task behind a busy agent has an estimated wait once a task has run;
    while the queue is paused nothing starts however long that lasts, so it has none."""
    await start_agent(rt, "estimator", agents.GatedAgent)
    agents.GATES.setdefault("est-first", asyncio.Event()).set()
    first = await rt.wait_for_task(await rt.submit_task("est-first"), 5)
    assert first.status is TaskStatus.COMPLETED  # a duration to estimate from
    busy = await rt.submit_task("est-busy")
    await asyncio.wait_for(agents.STARTED.setdefault("est-busy", asyncio.Event()).wait(), 5)
    waiting = await rt.submit_task("est-waiting")
    assert rt.get_task_status(waiting).estimated_wait_seconds is not None
    assert rt.explain(waiting).estimated_wait_seconds is not None
    await rt.pause_queue()
    assert rt.get_task_status(waiting).estimated_wait_seconds is None
    assert rt.explain(waiting).estimated_wait_seconds is None
    await rt.resume_queue()
    assert rt.get_task_status(waiting).estimated_wait_seconds is not None
    for name in ("est-busy", "est-waiting"):
        agents.GATES.setdefault(name, asyncio.Event()).set()
    for task_id in (busy, waiting):
        assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED


@pytest.mark.parametrize("target", ["group", "agent"])
async def test_untargeted_work_goes_to_an_agent_no_targeted_task_needs(
    rt: AgentRuntime, target: str
) -> None:
    """A (group "g", idle longest) and B (no group) are idle; X may run anywhere and is
    more urgent, Y only on A (through its group or its id). X goes to B, so Y runs on A
    at once instead of waiting for X beside the idle B."""
    a = await start_agent(rt, f"wc-a-{target}", agents.GatedAgent, group="g")
    b = await start_agent(rt, f"wc-b-{target}", agents.GatedAgent)
    await rt.pause_queue()
    x_name, y_name = f"wc-x-{target}", f"wc-y-{target}"
    x = await rt.submit_task(x_name, priority=0)
    routing: dict[str, Any] = {"group": "g"} if target == "group" else {"agent_id": a}
    y = await rt.submit_task(y_name, priority=50, **routing)
    await rt.resume_queue()
    for name in (x_name, y_name):
        await asyncio.wait_for(agents.STARTED.setdefault(name, asyncio.Event()).wait(), 5)
    assert rt.get_task_status(x).assigned_agent_id == b
    assert rt.get_task_status(y).assigned_agent_id == a
    for name in (x_name, y_name):
        agents.GATES.setdefault(name, asyncio.Event()).set()
    assert all(t.status is TaskStatus.COMPLETED for t in await rt.wait_for_tasks([x, y], 10))
