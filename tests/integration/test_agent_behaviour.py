"""Agent behaviour, the same assertions for both isolation modes (``inline`` and
``process``).

A ``process`` agent lives in its own worker process and shares no memory with the test, so
the agents used here (:mod:`tests.support.journal_agents`) report only through observable
channels: task results, the event log, task checkpoints, and a journal file named in their
registration ``config``. Waiting on state held by another process is done with
:func:`wait_until`, which re-checks a condition with short sleeps and fails with a clear
message after a bounded time; nothing here sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentContext,
    AgentHookError,
    AgentRuntime,
    AgentStatus,
    EventType,
    InvalidStateError,
    RuntimeConfig,
    Task,
    TaskStatus,
    ValidationError,
    WaitTimeoutError,
)
from tests.support import journal_agents
from tests.support.journal_agents import (
    PAUSE_STATE,
    JournalAgent,
    PauseStateAgent,
    read_journal,
)
from tests.support.process_agents import (
    BrokenStrAgent,
    sync_checkpointing_until_gate,
    sync_context_calls,
)
from tests.support.waiting import WAIT_SECONDS, wait_until

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # bound for every wait on another process's progress


class Journal:
    """The journal file agents write to, and the gate files that hold them."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "journal.jsonl"
        self.gate_dir = tmp_path / "gates"
        self.gate_dir.mkdir()

    def records(self, hook: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """Records (of ``hook``, if given) whose fields equal ``fields``, in order."""
        return [
            record
            for record in read_journal(self.path)
            if (hook is None or record["hook"] == hook)
            and all(record.get(key) == value for key, value in fields.items())
        ]

    def hooks(self) -> list[str]:
        """The hook name of every record, in order."""
        return [record["hook"] for record in read_journal(self.path)]

    async def wait_for(self, hook: str, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """Wait until at least ``count`` records of ``hook`` matching ``fields`` exist."""

        def found() -> list[dict[str, Any]]:
            records = self.records(hook, **fields)
            return records if len(records) >= count else []

        return await wait_until(
            found, what=f"the journal has {count} {hook!r} record(s) matching {fields}"
        )

    def gate(self, name: str) -> str:
        """The path of gate ``name`` (closed until :meth:`open` creates the file)."""
        return str(self.gate_dir / name)

    def open(self, name: str) -> None:
        """Open gate ``name``: a task waiting at it goes on."""
        Path(self.gate(name)).touch()

    def open_all(self) -> None:
        """Open every gate a task could still wait at (teardown)."""
        for name in ("work", "first", "second", "again"):
            self.open(name)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path)


@pytest.fixture
async def rt(
    make_config: Callable[..., RuntimeConfig], isolation: str, journal: Journal
) -> AsyncIterator[AgentRuntime]:
    """A started runtime whose agents default to the mode under test."""
    runtime = AgentRuntime(config=make_config(default_isolation=isolation))
    await runtime.start()
    try:
        yield runtime
    finally:
        journal.open_all()  # nothing keeps the shutdown waiting
        await runtime.stop()


async def start(
    rt: AgentRuntime,
    isolation: str,
    journal: Journal,
    agent: object = JournalAgent,
    name: str = "agent",
    **config: Any,
) -> str:
    """Register ``agent`` in ``isolation`` with a journal in its config, start it and
    return its id."""
    agent_id = await rt.register_agent(
        name, agent, config={"journal": str(journal.path), **config}, isolation=isolation
    )
    status = await rt.start_agent(agent_id)
    assert status.status is AgentStatus.RUNNING, status.error_message
    return agent_id


def expected_pid(rt: AgentRuntime, agent_id: str, isolation: str) -> int:
    """The pid the agent's code runs in: the test's own for inline, the worker's otherwise."""
    if isolation == "inline":
        return os.getpid()
    pid = rt.get_agent_status(agent_id).process_id
    assert isinstance(pid, int)
    return pid


async def finished(rt: AgentRuntime, task_id: str) -> Task:
    return await rt.wait_for_task(task_id, timeout_seconds=WAIT)


# ---------------------------------------------------------------------- 1. lifecycle
async def test_lifecycle_hooks_in_order_and_process_id(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """on_start runs before the first task, on_stop at stop_agent; an inline agent has no
    process of its own, a process agent runs in a worker with a pid of its own."""
    agent_id = await start(rt, isolation, journal)
    status = rt.get_agent_status(agent_id)
    if isolation == "inline":
        assert status.process_id is None
    else:
        assert isinstance(status.process_id, int)
        assert status.process_id != os.getpid()
    pid = expected_pid(rt, agent_id, isolation)
    assert journal.hooks() == ["on_start"]  # before any task was submitted

    task = await finished(rt, await rt.submit_task("first", {"action": "echo"}))
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data is not None
    assert task.output_data["pid"] == pid
    assert task.assigned_agent_id == agent_id

    stopped = await rt.stop_agent(agent_id)
    assert stopped.status is AgentStatus.STOPPED
    assert stopped.process_id is None
    assert journal.hooks() == ["on_start", "execute", "on_stop"]
    assert {record["pid"] for record in journal.records()} == {pid}
    assert [e.event_type for e in await rt.query_events(agent_id=agent_id)] == [
        EventType.AGENT_REGISTERED,
        EventType.AGENT_STARTING,
        EventType.AGENT_STARTED,
        EventType.TASK_STARTED,
        EventType.TASK_COMPLETED,
        EventType.AGENT_STOPPING,
        EventType.AGENT_STOPPED,
    ]


# ---------------------------------------------------------------------- 2. agent kinds
@pytest.mark.parametrize(
    ("agent", "kind", "in_thread"),
    [
        (journal_agents.async_function_agent, "async_function", False),
        (journal_agents.sync_function_agent, "sync_function", True),
        (journal_agents.SyncExecuteAgent, "sync_class", True),
    ],
    ids=["async-function", "sync-function", "sync-execute-class"],
)
async def test_function_and_sync_agents_complete_tasks(
    rt: AgentRuntime,
    isolation: str,
    journal: Journal,
    agent: object,
    kind: str,
    in_thread: bool,
) -> None:
    """A plain async function, a plain sync function and a class with a sync
    ``execute_task`` all run tasks; sync code runs in the agent's own thread."""
    agent_id = await start(rt, isolation, journal, agent, name=kind, extra=[1, 2])
    pid = expected_pid(rt, agent_id, isolation)
    ids = [await rt.submit_task(f"t{x}", {"x": x}) for x in (1, 2, 3)]
    for x, task_id in zip((1, 2, 3), ids, strict=True):
        task = await finished(rt, task_id)
        assert task.status is TaskStatus.COMPLETED, task.error_message
        output = task.output_data
        assert output is not None
        assert output["kind"] == kind
        assert output["doubled"] == 2 * x
        assert output["pid"] == pid
        assert output["config"] == {"journal": str(journal.path), "extra": [1, 2]}
        if in_thread:
            assert output["thread"].startswith(f"miminions-{kind}")
    assert rt.get_agent_status(agent_id).tasks_completed == 3


async def test_sync_agent_class_is_built_in_the_agents_thread(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """The ``__init__`` of a class with a sync ``execute_task`` is synchronous agent code
    like the rest: it runs in the agent's thread, so a slow constructor does not hold up
    the event loop."""
    agent_id = await start(rt, isolation, journal, journal_agents.SyncInitAgent, name="init")
    task = await finished(rt, await rt.submit_task("which-thread"))
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == {
        "built_in": "miminions-init",
        "pid": expected_pid(rt, agent_id, isolation),
    }


async def test_async_agent_class_is_built_on_the_loop(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """The ``__init__`` of a class with an async ``execute_task`` runs on the loop the
    agent's code runs on, so it may create loop-bound objects."""
    agent_id = await start(rt, isolation, journal, journal_agents.AsyncInitAgent, name="init")
    task = await finished(rt, await rt.submit_task("which-loop"))
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == {"same_loop": True, "pid": expected_pid(rt, agent_id, isolation)}


# ---------------------------------------------------------------------- 3. pause/resume
async def test_on_pause_and_on_resume_may_use_the_context(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """A context call in on_pause (which runs with the gate closed) or on_resume (before
    it opens) is not a safe point to halt at: the pause and the resume complete, while the
    task the pause halted stays halted until the resume."""
    agent_id = await start(rt, isolation, journal, journal_agents.ContextInHooksAgent)
    first = await rt.submit_task("first", {"action": "gate", "gate": journal.gate("first")})
    await journal.wait_for("gate_entered", task_id=first)
    paused = await rt.pause_agent(agent_id, timeout_seconds=WAIT)
    assert paused.status is AgentStatus.PAUSED
    assert rt.kv.get("paused") is True
    assert rt.get_task_status(first).status is TaskStatus.RUNNING  # halted, not gone on
    resumed = await rt.resume_agent(agent_id)
    assert resumed.status is AgentStatus.RUNNING
    assert rt.kv.get("resumed_with") == {"saved": 1}
    journal.open("first")
    assert (await finished(rt, first)).status is TaskStatus.COMPLETED


async def test_pause_halts_task_and_state_round_trips(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """Pausing an agent whose task waits at its gate: pause_agent returns PAUSED with the
    halted task; while paused no new task starts; on_resume gets exactly what on_pause
    returned; the halted task completes once its gate opens."""
    agent_id = await start(rt, isolation, journal)
    first = await rt.submit_task("first", {"action": "gate", "gate": journal.gate("first")})
    await journal.wait_for("gate_entered", task_id=first)

    paused = await rt.pause_agent(agent_id, timeout_seconds=WAIT)
    assert paused.status is AgentStatus.PAUSED
    assert paused.task_id == first
    assert rt.get_task_status(first).status is TaskStatus.RUNNING
    [pause_record] = journal.records("on_pause")
    assert pause_record["pid"] == expected_pid(rt, agent_id, isolation)

    second = await rt.submit_task("second", {"action": "echo"}, agent_id=agent_id)
    assert rt.get_task_status(second).status is TaskStatus.PENDING
    assert [r.kind.value for r in rt.explain(second).reasons] == ["agent_paused"]
    assert not journal.records("execute", task_id=second)

    resumed = await rt.resume_agent(agent_id)
    assert resumed.status is AgentStatus.RUNNING
    [resume_record] = journal.records("on_resume")
    assert resume_record["state"] == pause_record["state"]
    assert resume_record["state"] == {**PAUSE_STATE, "paused_by_pid": pause_record["pid"]}

    journal.open("first")
    task = await finished(rt, first)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert (await finished(rt, second)).status is TaskStatus.COMPLETED
    hooks = journal.hooks()
    # the second task started only after the resume, and after the first one ended
    assert hooks.index("on_resume") < hooks.index("gate_passed")
    assert hooks[-1] == "execute"
    assert journal.records()[-1]["task_id"] == second
    [paused_event] = await rt.query_events(event_type=EventType.AGENT_PAUSED, agent_id=agent_id)
    assert paused_event.details["task_id"] == first


async def test_pause_that_times_out_is_abandoned(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """A pause whose safe point does not come in time is abandoned: WaitTimeoutError, the
    agent stays running, on_pause is not called, and its later tasks pass their safe
    points as if no pause had been asked for."""
    agent_id = await start(rt, isolation, journal)
    first = await rt.submit_task(
        "first", {"action": "gate", "gate": journal.gate("first"), "safe_points": False}
    )
    await journal.wait_for("gate_entered", task_id=first)
    with pytest.raises(WaitTimeoutError, match="abandoned"):
        await rt.pause_agent(agent_id, timeout_seconds=0.2)
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING

    journal.open("first")
    assert (await finished(rt, first)).status is TaskStatus.COMPLETED
    journal.open("second")  # open from the start: the task only passes its safe points
    second = await rt.submit_task("second", {"action": "gate", "gate": journal.gate("second")})
    try:
        # a few ms normally; bounded low because the bug makes it wait forever
        task = await rt.wait_for_task(second, timeout_seconds=3)
    except WaitTimeoutError:
        raise AssertionError(
            "the next task never got past its first safe point: the abandoned pause still "
            f"holds the agent (journal: {journal.hooks()})"
        ) from None
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert not journal.records("on_pause")
    assert not await rt.query_events(event_type=EventType.AGENT_PAUSED)
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING


@pytest.mark.parametrize("state", [[1, "two", None], "text", 0, {}])
async def test_any_json_pause_state_reaches_on_resume_unchanged(
    rt: AgentRuntime, isolation: str, journal: Journal, state: Any
) -> None:
    """F-25: whatever JSON value on_pause returns (not only an object) is what on_resume
    gets, in both modes."""
    agent_id = await start(rt, isolation, journal, PauseStateAgent, pause_state=state)
    await rt.pause_agent(agent_id, timeout_seconds=WAIT)
    await rt.resume_agent(agent_id)
    [resume_record] = await journal.wait_for("on_resume")
    assert resume_record["state"] == state


async def test_a_non_json_pause_state_fails_the_agent_with_validation_error(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """R-04: an on_pause returning something that is not JSON fails the agent, and
    pause_agent raises ValidationError, in both modes."""
    agent_id = await start(rt, isolation, journal, PauseStateAgent, non_json=True)
    with pytest.raises(ValidationError, match="on_pause returned"):
        await rt.pause_agent(agent_id, timeout_seconds=WAIT)
    status = rt.get_agent_status(agent_id)
    assert status.status is AgentStatus.FAILED
    assert "on_pause returned" in (status.error_message or "")


# ---------------------------------------------------------------------- 4. checkpoints
async def test_checkpoint_reaches_the_retry(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """A task that checkpoints and then raises gets its last checkpoint back on retry."""
    await start(rt, isolation, journal)
    task_id = await rt.submit_task(
        "resumable", {"action": "checkpoint_then_fail", "steps": 3}, max_retries=1
    )
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == {"last_checkpoint": {"step": 3}, "attempt": 1}
    assert task.retry_count == 1
    assert task.checkpoint == {"step": 3}
    attempts = journal.records("execute", task_id=task_id)
    assert [(r["attempt"], r["last_checkpoint"]) for r in attempts] == [
        (1, None),
        (2, {"step": 3}),
    ]
    [retry] = await rt.query_events(event_type=EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
    assert retry.details["error"] == "RuntimeError: the first attempt fails after its checkpoints"


# ---------------------------------------------------------------------- 5. errors
async def test_failing_task_reports_error_and_calls_on_error(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """ValueError("boom") fails the task with "ValueError: boom"; on_error gets the error
    and the task."""
    agent_id = await start(rt, isolation, journal)
    task_id = await rt.submit_task("bad", {"action": "fail", "message": "boom"})
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "ValueError: boom"
    assert task.retry_count == 0
    [record] = await journal.wait_for("on_error", task_id=task_id)
    assert (record["error_type"], record["message"]) == ("ValueError", "boom")
    assert record["pid"] == expected_pid(rt, agent_id, isolation)
    [failed] = await rt.query_events(event_type=EventType.TASK_FAILED, task_id=task_id)
    assert failed.details["error"] == "ValueError: boom"
    assert [d.ref_id for d in rt.list_dead_letters()] == [task_id]
    # the agent goes on
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING
    after = await finished(rt, await rt.submit_task("after", {"action": "echo"}))
    assert after.status is TaskStatus.COMPLETED


async def test_retries_until_success(rt: AgentRuntime, isolation: str, journal: Journal) -> None:
    """A task failing its first two attempts completes on the third with max_retries=2;
    each failed attempt is a retry event and an on_error call."""
    await start(rt, isolation, journal)
    task_id = await rt.submit_task(
        "flaky", {"action": "fail", "message": "flaky", "times": 2}, max_retries=2
    )
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == {"attempts": 3}
    assert task.retry_count == 2
    assert task.error_message is None
    retries = await rt.query_events(event_type=EventType.TASK_RETRY_SCHEDULED, task_id=task_id)
    assert [(e.details["attempt"], e.details["error"]) for e in retries] == [
        (1, "ValueError: flaky"),
        (2, "ValueError: flaky"),
    ]
    errors = await journal.wait_for("on_error", count=2, task_id=task_id)
    assert [(r["error_type"], r["message"]) for r in errors] == [("ValueError", "flaky")] * 2
    assert [r["attempt"] for r in journal.records("execute", task_id=task_id)] == [1, 2, 3]


async def test_retries_exhausted(rt: AgentRuntime, isolation: str, journal: Journal) -> None:
    """With max_retries=1 an always failing task runs twice, then fails for good."""
    await start(rt, isolation, journal)
    task_id = await rt.submit_task("bad", {"action": "fail", "message": "boom"}, max_retries=1)
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "ValueError: boom"
    assert task.retry_count == 1
    assert len(journal.records("execute", task_id=task_id)) == 2
    await journal.wait_for("on_error", count=2, task_id=task_id)
    [failed] = await rt.query_events(event_type=EventType.TASK_FAILED, task_id=task_id)
    assert failed.details["attempts"] == 2


# ---------------------------------------------------------------------- 6. non-JSON result
async def test_non_json_result_fails_the_task(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """A result that is not JSON (a set) fails the task with an error that says so, and
    the agent's on_error is told, in both isolation modes."""
    agent_id = await start(rt, isolation, journal)
    task = await finished(rt, await rt.submit_task("set", {"action": "non_json"}))
    assert task.status is TaskStatus.FAILED
    assert task.output_data is None
    assert task.error_message == (
        "ValidationError: the task result must be JSON-serialisable (dicts, lists, str, "
        "numbers, bools, None): Object of type set is not JSON serializable"
    )
    [record] = await journal.wait_for("on_error", task_id=task.task_id)
    assert record["error_type"] == "ValidationError"
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING
    after = await finished(rt, await rt.submit_task("after", {"action": "echo"}))
    assert after.status is TaskStatus.COMPLETED


# ---------------------------------------------------------------------- 7. cancel
async def test_cancel_running_task_then_next_task_runs(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """Cancelling a task waiting at its gate ends it CANCELLED (its code sees the
    cancellation); the same agent, in the same process, takes the next task."""
    agent_id = await start(rt, isolation, journal)
    pid_before = rt.get_agent_status(agent_id).process_id
    task_id = await rt.submit_task("work", {"action": "gate", "gate": journal.gate("work")})
    await journal.wait_for("gate_entered", task_id=task_id)

    cancelled = await asyncio.wait_for(rt.cancel_task(task_id), WAIT)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error_message == "cancelled by user"
    await journal.wait_for("cancelled", task_id=task_id)
    assert not journal.records("gate_passed")

    after = await finished(rt, await rt.submit_task("after", {"action": "echo"}))
    assert after.status is TaskStatus.COMPLETED, after.error_message
    assert after.assigned_agent_id == agent_id
    status = rt.get_agent_status(agent_id)
    assert status.status is AgentStatus.RUNNING
    assert status.process_id == pid_before  # not killed and restarted
    assert status.restart_count == 0
    assert not await rt.query_events(event_type=EventType.AGENT_KILLED)
    assert not journal.records("on_error")  # a cancellation is no failure of the agent


# ---------------------------------------------------------------------- 8. timeout
async def test_timeout_of_cooperative_task(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """A task running longer than its timeout_seconds fails with TaskTimeoutError; the
    agent goes on in the same process."""
    agent_id = await start(rt, isolation, journal)
    pid_before = rt.get_agent_status(agent_id).process_id
    task_id = await rt.submit_task("slow", {"action": "spin"}, timeout_seconds=0.5)
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == f"TaskTimeoutError: task {task_id} timed out after 0.5 s"
    [timeout] = await rt.query_events(event_type=EventType.TASK_TIMEOUT, task_id=task_id)
    assert timeout.details["timeout_seconds"] == 0.5
    await journal.wait_for("cancelled", task_id=task_id)
    [record] = await journal.wait_for("on_error", task_id=task_id)
    assert record["error_type"] == "TaskTimeoutError"

    after = await finished(rt, await rt.submit_task("after", {"action": "echo"}))
    assert after.status is TaskStatus.COMPLETED, after.error_message
    assert rt.get_agent_status(agent_id).process_id == pid_before
    assert not await rt.query_events(event_type=EventType.AGENT_KILLED)


# ---------------------------------------------------------------------- 9. graceful stop
async def test_graceful_stop_requeues_running_task(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """A graceful stop while a task runs: the agent sees ``context.is_stopping``; the task,
    still running when the stop timeout ends, is re-queued (no attempt used), not failed;
    on_stop runs; a new start runs the task to completion."""
    agent_id = await start(rt, isolation, journal)
    task_id = await rt.submit_task("work", {"action": "gate", "gate": journal.gate("again")})
    await journal.wait_for("gate_entered", task_id=task_id)

    stopped = await rt.stop_agent(agent_id, graceful=True, timeout_seconds=1.0)
    assert stopped.status is AgentStatus.STOPPED
    task = rt.get_task_status(task_id)
    assert task.status is TaskStatus.PENDING
    assert task.retry_count == 0
    assert task.error_message is None
    assert journal.records("stopping_seen", task_id=task_id)
    assert journal.hooks()[-2:] == ["cancelled", "on_stop"]
    [requeued] = await rt.query_events(event_type=EventType.TASK_REQUEUED, task_id=task_id)
    assert requeued.details["reason"] == "agent stopped"
    assert not await rt.query_events(event_type=EventType.TASK_FAILED)

    journal.open("again")
    assert (await rt.start_agent(agent_id)).status is AgentStatus.RUNNING
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.retry_count == 0
    assert task.output_data is not None
    assert task.output_data["stopping_seen"] is False  # a fresh start is not stopping
    assert task.output_data["pid"] == expected_pid(rt, agent_id, isolation)


async def test_graceful_stop_of_paused_agent_requeues_halted_task(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """Stopping a paused agent whose task is halted at a safe point: the task's code gets
    the cancellation, the task is re-queued, on_stop runs, nothing is killed."""
    agent_id = await start(rt, isolation, journal)
    task_id = await rt.submit_task("work", {"action": "gate", "gate": journal.gate("again")})
    await journal.wait_for("gate_entered", task_id=task_id)
    assert (await rt.pause_agent(agent_id, timeout_seconds=WAIT)).status is AgentStatus.PAUSED

    stopped = await rt.stop_agent(agent_id, graceful=True, timeout_seconds=2.0)
    assert stopped.status is AgentStatus.STOPPED
    task = rt.get_task_status(task_id)
    assert (task.status, task.retry_count) == (TaskStatus.PENDING, 0)
    [requeued] = await rt.query_events(event_type=EventType.TASK_REQUEUED, task_id=task_id)
    assert requeued.details["reason"] == "agent stopped"
    assert journal.hooks()[-3:] == ["on_pause", "cancelled", "on_stop"]
    assert not await rt.query_events(event_type=EventType.AGENT_KILLED)

    journal.open("again")
    assert (await rt.start_agent(agent_id)).status is AgentStatus.RUNNING
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.COMPLETED, task.error_message


# ---------------------------------------------------------------------- 10. config
async def test_registration_config_reaches_the_agent(
    rt: AgentRuntime, isolation: str, journal: Journal
) -> None:
    """The config given to register_agent is ``self.config`` in the agent, unchanged."""
    settings: dict[str, Any] = {
        "model": "tiny",
        "temperature": 0.5,
        "tools": ["search", "calc"],
        "limits": {"tokens": 1000, "strict": True, "fallback": None},
        "label": "ünïcode ✓",
    }
    agent_id = await start(rt, isolation, journal, **settings)
    task = await finished(rt, await rt.submit_task("cfg", {"action": "echo"}))
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data is not None
    assert task.output_data["config"] == {"journal": str(journal.path), **settings}
    assert task.output_data["agent"] == "agent"
    assert task.output_data["pid"] == expected_pid(rt, agent_id, isolation)


# ---------------------------------------------------------------------- 11. restart while paused
async def test_paused_agent_survives_a_runtime_restart(
    make_config: Callable[..., RuntimeConfig], isolation: str, journal: Journal
) -> None:
    """F-09, F-20 (issue 3 point 6): an agent paused mid-task comes back PAUSED after the
    runtime restarts; on resume a fresh agent (a fresh worker for ``process``) gets
    ``on_resume`` with exactly what ``on_pause`` returned, and the interrupted task runs
    again with ``context.last_checkpoint`` holding what it saved."""
    config = make_config(default_isolation=isolation)
    async with AgentRuntime(config=config) as first:
        agent_id = await start(first, isolation, journal)
        old_pid = expected_pid(first, agent_id, isolation)
        task_id = await first.submit_task(
            "work", {"action": "gate", "gate": journal.gate("work"), "save_progress": True}
        )
        await journal.wait_for("gate_entered", task_id=task_id)
        await wait_until(
            lambda: first.get_task_status(task_id).checkpoint is not None,
            what="the task saved a checkpoint",
        )
        paused = await first.pause_agent(agent_id, timeout_seconds=WAIT)
        assert paused.status is AgentStatus.PAUSED
        (on_pause,) = journal.records("on_pause")
    saved = on_pause["state"]

    async with AgentRuntime(config=config) as second:
        again = await second.register_agent(
            "agent", JournalAgent, config={"journal": str(journal.path)}, isolation=isolation
        )
        assert again == agent_id
        assert second.get_agent_status(agent_id).status is AgentStatus.PAUSED
        assert second.get_task_status(task_id).status is TaskStatus.PENDING

        resumed = await second.resume_agent(agent_id)
        assert resumed.status is AgentStatus.RUNNING
        (on_resume,) = journal.records("on_resume")
        assert on_resume["state"] == saved
        if isolation == "process":
            assert resumed.process_id not in (None, old_pid)
            assert on_resume["pid"] == resumed.process_id

        (_, second_run) = await journal.wait_for("execute", count=2, task_id=task_id)
        assert second_run["last_checkpoint"] is not None
        assert second_run["last_checkpoint"]["steps"] >= 0
        journal.open("work")
        done = await finished(second, task_id)
        assert done.status is TaskStatus.COMPLETED
        assert done.retry_count == 0  # a shutdown interruption does not use an attempt


@pytest.mark.parametrize("where", ["execute_task", "on_start", "on_pause"])
async def test_an_exception_whose_str_raises_is_reported_like_any_other(
    make_config: Callable[..., RuntimeConfig], isolation: str, where: str
) -> None:
    """An agent's exception whose ``__str__`` itself raises fails its task, start or
    pause at once, as any exception does: a process agent's worker sent no answer (the
    task timed out, the start or pause waited for ever), an inline start was left
    starting."""
    config = make_config(agent_start_timeout_seconds=WAIT_SECONDS * 2)
    async with AgentRuntime(config=config) as rt:
        agent = await rt.register_agent(
            "broken-str", BrokenStrAgent, isolation=isolation, config={"where": where}
        )
        started = await asyncio.wait_for(rt.start_agent(agent), WAIT_SECONDS)
        if where == "on_start":
            assert started.status is AgentStatus.FAILED
            assert "BrokenStrError: <str() failed: RuntimeError>" in (started.error_message or "")
            return
        if where == "on_pause":
            with pytest.raises(AgentHookError, match="BrokenStrError"):
                await asyncio.wait_for(rt.pause_agent(agent), WAIT_SECONDS)
            assert rt.get_agent_status(agent).status is AgentStatus.FAILED
            return
        task = await rt.wait_for_task(await rt.submit_task("bad", agent_id=agent), WAIT_SECONDS)
        assert task.status is TaskStatus.FAILED
        assert task.error_message == "BrokenStrError: <str() failed: RuntimeError>"
        assert await rt.query_events(event_type=EventType.AGENT_KILLED, agent_id=agent) == []


async def test_synchronous_agent_code_uses_its_context_through_call_sync(
    rt: AgentRuntime, isolation: str
) -> None:
    """F-22: a ``def`` agent reaches its context from its thread: call_sync for a KV write,
    a checkpoint and a receive, asyncio.run for a send. A process agent's call from its
    thread hung for ever (the reply settled a future of another loop); inline, checkpoints
    raced."""
    agent_id = await rt.register_agent("sync", sync_context_calls, isolation=isolation)
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(await rt.submit_task("calls"), 15)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data is not None
    assert task.output_data["received"] == task.output_data["sent"]
    assert task.checkpoint == {"step": 1}
    assert rt.kv.get("sync-key") == {"v": 1}


async def test_a_synchronous_task_halts_for_a_pause_at_its_call_sync_safe_point(
    rt: AgentRuntime, isolation: str, tmp_path: Path
) -> None:
    """F-25: a context call made with call_sync is a safe point of the task: the pause
    returns with the task halted there (it is not taken for other code of the agent)."""
    gate = tmp_path / "gate"
    agent_id = await rt.register_agent("sync", sync_checkpointing_until_gate, isolation=isolation)
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("loop", {"gate": str(gate)})
    await wait_until(lambda: rt.get_task_status(task_id).status is TaskStatus.RUNNING, "run")
    paused = await rt.pause_agent(agent_id, timeout_seconds=10)
    assert paused.status is AgentStatus.PAUSED
    gate.touch()
    assert rt.get_task_status(task_id).status is TaskStatus.RUNNING
    await rt.resume_agent(agent_id)
    assert (await rt.wait_for_task(task_id, 15)).status is TaskStatus.COMPLETED


def test_call_sync_on_the_agents_loop_says_to_await() -> None:
    """call_sync from the agent's own loop would block it: an InvalidStateError instead."""

    async def on_the_loop() -> None:
        context = AgentContext(
            agent_id="a",
            name="a",
            group=None,
            config={},
            channel=None,  # type: ignore[arg-type]
        )
        call = context.kv.get("k")
        with pytest.raises(InvalidStateError, match="await the call instead"):
            context.call_sync(call)

    asyncio.run(on_the_loop())
