"""R-04: bad input raises a typed, clearly worded error and leaves stored state unchanged."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

import miminions
from miminions import (
    AgentRuntime,
    ConfigurationError,
    DependencyCycleError,
    InvalidStateError,
    MiminionsError,
    NotFoundError,
    ProcessSettings,
    QueueFullError,
    ResourceLimits,
    RestartPolicy,
    RuntimeConfig,
    RuntimeNotRunningError,
    TaskRequest,
    ValidationError,
)
from tests.support import agents
from tests.support.processes import alive
from tests.support.waiting import WAIT_SECONDS


def stored_counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        tasks = conn.execute("select count(*) from tasks").fetchone()[0]
        agents_ = conn.execute("select count(*) from agents").fetchone()[0]
    return tasks, agents_


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input_data": {"x": object()}}, ValidationError, "JSON"),
        ({"input_data": {"x": float("nan")}}, ValidationError, "JSON"),
        # JSON keys are strings: {3: x} would come back as {"3": x}, {1: a, "1": b} as
        # {"1": b} (it did, silently)
        ({"input_data": {"done": {3: True}}}, ValidationError, "keys must be strings"),
        ({"input_data": {1: "a", "1": "b"}}, ValidationError, "keys must be strings"),
        ({"input_data": ["not", "a", "dict"]}, ValidationError, "must be a dict"),
        ({"priority": 101}, ValidationError, "between 0"),
        ({"priority": -1}, ValidationError, "between 0"),
        ({"priority": "high"}, ValidationError, "integer"),
        ({"priority": True}, ValidationError, "integer"),
        ({"timeout_seconds": -1}, ValidationError, "positive"),
        ({"timeout_seconds": 0}, ValidationError, "positive"),
        ({"max_retries": -2}, ValidationError, "max_retries"),
        ({"max_retries": True}, ValidationError, "max_retries"),
        ({"max_retries": 1.0}, ValidationError, "max_retries"),
        ({"max_retries": 10**6}, ValidationError, "max_retries"),
        ({"priority": 5.0}, ValidationError, "integer"),
        ({"dependencies": ["no-such-task"]}, NotFoundError, "unknown task id"),
        ({"dependencies": "abc"}, ValidationError, "list of task ids"),
        ({"agent_id": "no-such-agent"}, NotFoundError, "no agent"),
        ({"agent_id": ["a list"]}, ValidationError, "agent_id must be"),
        ({"group": ""}, ValidationError, "group"),
        ({"timeout_seconds": 1e300}, ValidationError, "at most"),
        ({"timeout_seconds": float("inf")}, ValidationError, "at most"),
    ],
)
async def test_bad_submit_is_rejected_without_changes(
    rt: AgentRuntime, db_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """R-04: every rejected submit raises a typed error and stores nothing."""
    before = stored_counts(db_path)
    with pytest.raises(error, match=message) as info:
        await rt.submit_task("bad", **kwargs)
    assert isinstance(info.value, MiminionsError)
    await rt.store.flush()
    assert stored_counts(db_path) == before
    assert rt.get_queue_status().total == 0


async def test_empty_task_name_is_rejected(rt: AgentRuntime) -> None:
    """R-04: a task needs a name."""
    with pytest.raises(ValidationError, match="name"):
        await rt.submit_task("  ")


async def test_cycle_in_batch_is_rejected(rt: AgentRuntime, db_path: Path) -> None:
    """F-10, R-04: a dependency cycle is rejected at submit and nothing is stored."""
    with pytest.raises(DependencyCycleError, match="cycle"):
        await rt.submit_tasks(
            [
                TaskRequest(name="a", task_id="a", dependencies=["c"]),
                TaskRequest(name="b", task_id="b", dependencies=["a"]),
                TaskRequest(name="c", task_id="c", dependencies=["b"]),
            ]
        )
    with pytest.raises(DependencyCycleError, match="itself"):
        await rt.submit_tasks([TaskRequest(name="self", task_id="s", dependencies=["s"])])
    await rt.store.flush()
    assert stored_counts(db_path)[0] == 0


async def test_bad_batch_entry_rejects_whole_batch(rt: AgentRuntime) -> None:
    """R-04: a batch is all or nothing."""
    with pytest.raises(ValidationError):
        await rt.submit_tasks([{"name": "ok"}, {"name": "bad", "priority": 500}])
    with pytest.raises(ValidationError, match="invalid task request"):
        await rt.submit_tasks([{"name": "ok", "unknown_field": 1}])
    assert rt.get_queue_status().total == 0


async def test_full_queue_raises_queue_full(make_config: Callable[..., RuntimeConfig]) -> None:
    """F-08, R-04: a full task queue raises QueueFullError; running tasks do not count."""
    config = make_config(limits=ResourceLimits(max_task_queue_size=2))
    async with AgentRuntime(config=config) as rt:
        await rt.pause_queue()
        await rt.submit_task("one")
        await rt.submit_task("two")
        with pytest.raises(QueueFullError, match="limit is 2"):
            await rt.submit_task("three")
        assert rt.get_queue_status().total == 2
        assert rt.get_capacity().free_task_slots == 0


async def test_unknown_ids_raise_not_found(rt: AgentRuntime) -> None:
    """R-04: unknown ids raise NotFoundError, which is also a ValueError."""
    for call in (
        lambda: rt.get_task_status("nope"),
        lambda: rt.get_agent_status("nope"),
        lambda: rt.explain("nope"),
    ):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(ValueError, match="no task"):
        await rt.wait_for_task("nope")
    with pytest.raises(NotFoundError):
        await rt.cancel_task("nope")
    with pytest.raises(NotFoundError):
        await rt.start_agent("nope")
    with pytest.raises(NotFoundError):
        await rt.requeue_dead_letter("nope")
    with pytest.raises(NotFoundError, match="group"):
        await rt.pause_group("nobody")


async def test_bad_query_arguments(rt: AgentRuntime) -> None:
    """R-04: bad filters are rejected with the allowed values named."""
    with pytest.raises(ValidationError, match="not one of"):
        rt.list_tasks(status="done")
    with pytest.raises(ValidationError, match="limit"):
        rt.list_tasks(limit=0)
    with pytest.raises(ValidationError, match="not one of"):
        await rt.query_events(severity="loud")
    with pytest.raises(ValidationError, match="not one of"):
        await rt.query_events(event_type="nothing_happened")
    with pytest.raises(ValidationError, match="format"):
        await rt.export_events("/tmp/never-written", format="xml")
    with pytest.raises(ValidationError, match=">= 0"):
        await rt.wait_for_task(await rt.submit_task("t"), timeout_seconds=-1)


async def test_cancel_finished_task_is_invalid(rt: AgentRuntime) -> None:
    """R-04: cancelling a finished task is a wrong-state error."""
    agent_id = await rt.register_agent("echo", agents.EchoAgent)
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t")
    await rt.wait_for_task(task_id, 5)
    with pytest.raises(InvalidStateError, match="already completed"):
        await rt.cancel_task(task_id)


async def test_stopped_runtime_rejects_calls(make_config: Callable[..., RuntimeConfig]) -> None:
    """R-04: using a runtime that is not started, or stopped, raises RuntimeNotRunningError."""
    rt = AgentRuntime(config=make_config())
    with pytest.raises(RuntimeNotRunningError, match="start"):
        await rt.submit_task("early")
    with pytest.raises(RuntimeNotRunningError):
        rt.get_queue_status()
    await rt.start()
    await rt.stop()
    await rt.stop()  # idempotent
    with pytest.raises(RuntimeNotRunningError, match="new AgentRuntime"):
        await rt.submit_task("late")
    with pytest.raises(RuntimeNotRunningError):
        await rt.register_agent("late", agents.EchoAgent)
    with pytest.raises(InvalidStateError, match="starts once"):
        await rt.start()


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    """R-04: bad runtime arguments fail at construction."""
    with pytest.raises(ConfigurationError, match="list of plugin names"):
        AgentRuntime(tmp_path / "x.db", disable="sqlite_store")

    async def nothing() -> None:
        return None

    with pytest.raises(ConfigurationError, match="list of plugin names"):
        miminions.run(nothing(), disable="uvloop")  # the same error as AgentRuntime's
    with pytest.raises(ValueError, match="unknown plugin"):
        AgentRuntime(tmp_path / "x.db", disable=["no_such_plugin"])
    with pytest.raises(ValueError, match="ResourceLimits"):
        AgentRuntime(tmp_path / "x.db", limits={"max_concurrent_agents": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        ("", "storage_path is empty"),
        (b"miminions.db", "must be a str or a path"),
        (5, "must be a str or a path"),
        ("a\0b.db", "NUL"),
    ],
)
def test_a_bad_storage_path_is_refused_at_construction(bad: object, said: str) -> None:
    """R-04: a storage_path that is empty (it was a private temporary database: everything
    "stored" was lost at the stop), not text, or holds a NUL is a ConfigurationError saying
    what to pass (bytes, ints and NULs escaped as bare errors from deep inside)."""
    with pytest.raises(ConfigurationError, match=said):
        AgentRuntime(bad)  # type: ignore[arg-type]
    if not isinstance(bad, bytes):  # (pydantic turns UTF-8 bytes into text there)
        with pytest.raises(pydantic.ValidationError, match="storage_path"):
            RuntimeConfig(storage_path=bad)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent_agents", True),
        ("message_queue_max_size", True),
        ("max_task_queue_size", "5"),
        ("max_concurrent_agents", 2.0),
    ],
)
def test_limits_take_counts_as_ints_only(field: str, value: object) -> None:
    """R-04: a count limit given as True, "5" or 2.0 is refused, as the task API refuses
    such numbers (True became a limit of 1)."""
    with pytest.raises(pydantic.ValidationError, match=field):
        ResourceLimits(**{field: value})


async def test_flags_and_group_filters_of_the_wrong_type_are_refused(rt: AgentRuntime) -> None:
    """R-04: graceful="no" was read by its truth (a graceful stop), and list_agents(group=5)
    answered [] where every other group argument raises."""
    agent_id = await rt.register_agent("echo", agents.EchoAgent, group="5")
    await rt.start_agent(agent_id)
    with pytest.raises(ValidationError, match="graceful must be True or False"):
        await rt.stop_agent(agent_id, graceful="no")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="graceful must be True or False"):
        await rt.stop_group("5", graceful=None)  # type: ignore[arg-type]
    assert rt.get_agent_status(agent_id).status.value == "running"
    with pytest.raises(ValidationError, match="group"):
        rt.list_agents(group=5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="timeout_seconds"):
        await rt.kv.watch("k").next(timeout_seconds=float("nan"))


# ---------------------------------------------------------------------- text without UTF-8
#: What ``os.fsdecode`` makes of a file name with a byte that is not UTF-8: a string with a
#: lone surrogate, which has no UTF-8 form, so the store could not write it.
NOT_UTF8 = b"report-\xff.txt".decode("utf-8", "surrogateescape")

_NotUtf8Call = Callable[[AgentRuntime, str], Awaitable[object]]
NOT_UTF8_CALLS: dict[str, tuple[_NotUtf8Call, str]] = {
    "task name": (lambda rt, _: rt.submit_task(NOT_UTF8), "task name"),
    "task input value": (lambda rt, _: rt.submit_task("t", {"path": NOT_UTF8}), "input_data"),
    "task input key": (lambda rt, _: rt.submit_task("t", {NOT_UTF8: 1}), "input_data"),
    "idempotency key": (
        lambda rt, _: rt.submit_task("t", idempotency_key=NOT_UTF8),
        "idempotency_key",
    ),
    "task group": (lambda rt, _: rt.submit_task("t", group=NOT_UTF8), "group"),
    "explicit task id": (
        lambda rt, _: rt.submit_tasks([{"name": "t", "task_id": NOT_UTF8}]),
        "task_id",
    ),
    "later task of a batch": (
        lambda rt, _: rt.submit_tasks(
            [{"name": "ok"}, {"name": "t", "input_data": {"p": NOT_UTF8}}]
        ),
        "input_data",
    ),
    "agent name": (lambda rt, _: rt.register_agent(NOT_UTF8, agents.EchoAgent), "agent name"),
    "agent config": (
        lambda rt, _: rt.register_agent("b", agents.EchoAgent, config={"p": NOT_UTF8}),
        "config",
    ),
    "agent group": (
        lambda rt, _: rt.register_agent("b", agents.EchoAgent, group=NOT_UTF8),
        "group",
    ),
    "agent topic": (
        lambda rt, _: rt.register_agent("b", agents.EchoAgent, topics=[NOT_UTF8]),
        "topic",
    ),
    "kv key": (lambda rt, _: rt.kv.set(NOT_UTF8, 1), "key"),
    "kv value": (lambda rt, _: rt.kv.set("k", {"p": NOT_UTF8}), "value"),
    "kv namespace": (lambda rt, _: rt.kv.set("k", 1, namespace=NOT_UTF8), "namespace"),
    "message data": (lambda rt, a: rt.send_message(a, "note", {"p": NOT_UTF8}), "message data"),
    "message type": (lambda rt, a: rt.send_message(a, NOT_UTF8), "message_type"),
    "request data": (
        lambda rt, a: rt.request(a, "ask", {"p": NOT_UTF8}, timeout_seconds=5),
        "message data",
    ),
    "topic": (lambda rt, _: rt.publish(NOT_UTF8, "note"), "topic"),
}


def stored_rows(path: Path) -> dict[str, int]:
    """Rows of every kind a rejected call must not add."""
    queries = {
        "tasks": "select count(*) from tasks",
        "agents": "select count(*) from agents",
        "kv": "select count(*) from meta where key like 'kv:%'",
        "mailbox": "select count(*) from meta where key like 'mailbox:%'",
    }
    with sqlite3.connect(path) as conn:
        return {kind: int(conn.execute(sql).fetchone()[0]) for kind, sql in queries.items()}


def live_state(rt: AgentRuntime) -> tuple[object, ...]:
    """What the runtime shows in memory, for the same comparison."""
    return (
        [(task.task_id, task.name) for task in rt.list_tasks(limit=None)],
        [agent.name for agent in rt.list_agents()],
        rt.kv.keys(),
        rt.get_metrics().messages_sent,
    )


@pytest.mark.parametrize(("call", "names"), NOT_UTF8_CALLS.values(), ids=NOT_UTF8_CALLS.keys())
async def test_text_without_a_utf8_form_is_rejected_before_anything_changed(
    make_config: Callable[..., RuntimeConfig], call: _NotUtf8Call, names: str
) -> None:
    """R-04: a string the store cannot encode (a lone surrogate, as from ``os.fsdecode``)
    raises a ValidationError naming the argument when it is passed in; nothing is added in
    memory or stored, so nothing runs and nothing is lost at a restart."""
    config = make_config()
    async with AgentRuntime(config=config) as rt:
        recipient = await rt.register_agent("a", agents.EchoAgent)  # not started: keeps mail
        await rt.store.flush()
        stored, live = stored_rows(Path(config.storage_path)), live_state(rt)
        with pytest.raises(ValidationError, match="UTF-8") as info:
            await call(rt, recipient)
        assert str(info.value).startswith(names), info.value
        await rt.store.flush()
        assert stored_rows(Path(config.storage_path)) == stored
        assert live_state(rt) == live
    async with AgentRuntime(config=config) as rt:  # and what is stored reads back whole
        assert rt.list_tasks() == []
        assert rt.kv.keys() == []


async def test_a_task_result_without_a_utf8_form_fails_the_task(rt: AgentRuntime) -> None:
    """R-04: a result the store could not write fails the attempt, with the reason."""

    async def returns_undecoded_name(task: object, context: object) -> dict[str, str]:
        return {"path": NOT_UTF8}

    await rt.start_agent(await rt.register_agent("fs", returns_undecoded_name))
    task = await rt.wait_for_task(await rt.submit_task("list files"), 5)
    assert task.status.value == "failed"
    assert "UTF-8" in (task.error_message or "")


# ---------------------------------------------------------------------- typed errors
_BadCall = Callable[[AgentRuntime, str, Path], Awaitable[object] | object]
BAD_CALLS: dict[str, tuple[_BadCall, type[MiminionsError], str]] = {
    "submit_tasks of an int": (lambda rt, a, p: rt.submit_tasks(5), ValidationError, "list"),  # type: ignore[arg-type]
    "submit_tasks of one dict": (
        lambda rt, a, p: rt.submit_tasks({"name": "t"}),  # type: ignore[arg-type]
        ValidationError,
        "list",
    ),
    "submit_tasks with an int task id": (
        lambda rt, a, p: rt.submit_tasks(
            [TaskRequest.model_construct(name="t", task_id=5, dependencies=[])]  # type: ignore[arg-type]
        ),
        ValidationError,
        "task_id",
    ),
    "export into a missing directory": (
        lambda rt, a, p: rt.export_events(p / "missing" / "events.jsonl"),
        ValidationError,
        "cannot write the events to .*missing",
    ),
    "export to None": (lambda rt, a, p: rt.export_events(None), ValidationError, "path"),  # type: ignore[arg-type]
    "export to a name with a NUL": (
        lambda rt, a, p: rt.export_events(p / "bad\0name.jsonl"),
        ValidationError,
        "path",
    ),
    "export in a list of formats": (
        lambda rt, a, p: rt.export_events(p / "e.jsonl", format=["jsonl"]),  # type: ignore[arg-type]
        ValidationError,
        "format",
    ),
    "register with an int isolation": (
        lambda rt, a, p: rt.register_agent("b", agents.EchoAgent, isolation=1),  # type: ignore[arg-type]
        ValidationError,
        "isolation",
    ),
    "register with a list isolation": (
        lambda rt, a, p: rt.register_agent("b", agents.EchoAgent, isolation=["inline"]),  # type: ignore[arg-type]
        ValidationError,
        "isolation",
    ),
    "register with an int of topics": (
        lambda rt, a, p: rt.register_agent("b", agents.EchoAgent, topics=5),  # type: ignore[arg-type]
        ValidationError,
        "topics",
    ),
    "pause_group(None)": (lambda rt, a, p: rt.pause_group(None), ValidationError, "group"),  # type: ignore[arg-type]
    "start_group('')": (lambda rt, a, p: rt.start_group(""), ValidationError, "group"),
    "stop_group(5)": (lambda rt, a, p: rt.stop_group(5), ValidationError, "group"),  # type: ignore[arg-type]
    "resume_group of nobody": (
        lambda rt, a, p: rt.resume_group("nobody"),
        NotFoundError,
        "no agent belongs",
    ),
    "list_dead_letters of a bad kind": (
        lambda rt, a, p: rt.list_dead_letters(kind="foo"),
        ValidationError,
        "kind",
    ),
    "send to an int": (lambda rt, a, p: rt.send_message(123, "x"), ValidationError, "recipients"),  # type: ignore[arg-type]
    "send with a huge ttl": (
        lambda rt, a, p: rt.send_message(a, "x", ttl_seconds=1e300),
        ValidationError,
        "ttl_seconds must be at most",
    ),
    "request with a huge timeout": (
        lambda rt, a, p: rt.request(a, "x", timeout_seconds=1e300),
        ValidationError,
        "timeout_seconds must be at most",
    ),
    "kv keys of None": (lambda rt, a, p: rt.kv.keys(None), ValidationError, "prefix"),  # type: ignore[arg-type]
    "kv watch of an int": (lambda rt, a, p: rt.kv.watch(5), ValidationError, "prefix"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
async def test_bad_arguments_raise_typed_errors(
    rt: AgentRuntime,
    tmp_path: Path,
    call: _BadCall,
    error: type[MiminionsError],
    message: str,
) -> None:
    """R-04: wrong types and out-of-range values raise a MiminionsError subclass whose
    message names the argument (never a bare TypeError, OverflowError or OSError)."""
    recipient = await rt.register_agent("a", agents.EchoAgent)
    watchers = rt.kv.watchers
    with pytest.raises(error, match=message):
        await _outcome(call(rt, recipient, tmp_path))
    assert rt.kv.watchers == watchers
    assert rt.list_tasks() == []
    assert [agent.name for agent in rt.list_agents()] == ["a"]


async def _outcome(result: object) -> object:
    """What a call returned, awaited if it is a coroutine (async and sync calls alike)."""
    return await result if isinstance(result, Awaitable) else result


_DURATIONS = [
    (RuntimeConfig, "aging_seconds_per_level"),
    (RuntimeConfig, "shutdown_timeout_seconds"),
    (RuntimeConfig, "retry_backoff_max_seconds"),
    (ResourceLimits, "task_timeout_seconds"),
    (ProcessSettings, "heartbeat_timeout_seconds"),
    (RestartPolicy, "window_seconds"),
]


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [(m, f, v) for m, f in _DURATIONS for v in (float("inf"), float("nan"), 1e300)]
    + [(ResourceLimits, "max_memory_per_agent_mb", v) for v in (float("inf"), float("nan"), 1e300)],
)
def test_settings_refuse_infinite_and_absurd_numbers(
    model: type[pydantic.BaseModel], field: str, value: float
) -> None:
    """R-04: a setting is a finite number (durations at most 100 years); infinity is not
    "never" (that is None where allowed), and an infinite aging inverted priority order."""
    with pytest.raises(pydantic.ValidationError, match=field):
        model(**{field: value})


@pytest.mark.parametrize(
    ("soft", "hard"),
    [
        ("soft_memory_per_agent_mb", "max_memory_per_agent_mb"),
        ("soft_cpu_time_per_agent_seconds", "max_cpu_time_per_agent_seconds"),
    ],
)
def test_a_soft_limit_above_its_hard_limit_is_refused(soft: str, hard: str) -> None:
    """R-04: a soft limit above its hard one could never warn (the hard one stops the
    worker first): refused, naming both; equal ones, and either alone, are fine."""
    with pytest.raises(pydantic.ValidationError, match=f"{soft} \\(200\\) is above {hard}"):
        ResourceLimits(**{soft: 200, hard: 100})
    ResourceLimits(**{soft: 100, hard: 100})
    ResourceLimits(**{soft: 200})


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_context_calls_with_wrong_types_raise_typed_errors(
    rt: AgentRuntime, isolation: str
) -> None:
    """An agent's ``reply`` of something that is not a message and ``unsubscribe`` of a
    list get a ValidationError (not AttributeError / TypeError), and the agent goes on."""
    agent_id = await rt.register_agent("misuser", agents.misusing_agent, isolation=isolation)
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(await rt.submit_task("misuse"), timeout_seconds=30)
    assert task.status.value == "completed", task.error_message
    assert task.output_data == {"reply": "ValidationError", "unsubscribe": "ValidationError"}


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "call",
    [
        lambda rt, bad: rt.get_task_status(bad),
        lambda rt, bad: rt.get_agent_status(bad),
        lambda rt, bad: rt.explain(bad),
        lambda rt, bad: rt.submit_task("t", priority=bad),
        lambda rt, bad: rt.query_events(limit=bad),
        lambda rt, bad: rt.wait_for_task("t", timeout_seconds=bad),
        lambda rt, bad: rt.submit_task("t", max_retries=bad),
        lambda rt, bad: rt.submit_task("t", agent_id=bad),
        lambda rt, bad: rt.list_dead_letters(kind=bad),
        lambda rt, bad: rt.pause_group(bad),
        lambda rt, bad: rt.send_message(bad, "x"),
    ],
    ids=[
        "get_task_status",
        "get_agent_status",
        "explain",
        "priority",
        "limit",
        "timeout",
        "max_retries",
        "agent_id",
        "dead_letter_kind",
        "group",
        "recipients",
    ],
)
@pytest.mark.parametrize(
    "bad", [_nested(5000), "x" * 1_000_000, -(10**5000)], ids=["deep", "huge", "huge-int"]
)
async def test_an_absurd_argument_gets_a_short_typed_error(
    rt: AgentRuntime, call: Callable[[AgentRuntime, Any], Any], bad: Any
) -> None:
    """A deeply nested or huge value where an id, a number or a limit belongs gets a
    MiminionsError whose message quotes it briefly (building it raised RecursionError for
    the deep one, and quoted a megabyte for the huge one)."""
    with pytest.raises(MiminionsError) as caught:
        await _outcome(call(rt, bad))
    assert len(str(caught.value)) < 1000


async def test_a_call_from_another_event_loop_is_refused_before_it_changes_anything(
    rt: AgentRuntime,
) -> None:
    """R-04: the runtime belongs to the loop that started it. A call from another thread's
    loop is an InvalidStateError at once (wait_for_task hung for ever: its future was set
    from the runtime's thread and that loop never woke), and changes nothing."""
    await rt.pause_queue()
    task_id = await rt.submit_task("held")

    async def from_elsewhere() -> list[str]:
        said = []
        for call in (rt.wait_for_task(task_id), rt.submit_task("other"), rt.stop()):
            with pytest.raises(InvalidStateError, match="another event loop") as caught:
                await call
            said.append(str(caught.value))
        return said

    said = await asyncio.to_thread(asyncio.run, from_elsewhere())
    assert "run_coroutine_threadsafe" in said[0]
    assert [t.task_id for t in rt.list_tasks()] == [task_id]
    assert rt.is_running


_TWO_LOOPS = """
import asyncio, sys
from miminions import AgentRuntime, InvalidStateError

rt = AgentRuntime(sys.argv[1])
async def start_and_submit():
    await rt.start()
    return await rt.submit_task("kept")
kept = asyncio.run(start_and_submit())  # its loop ends here, the runtime still "running"
try:
    asyncio.run(rt.submit_task("t"))
    print("accepted")
except InvalidStateError as exc:
    print("refused:", exc)
asyncio.run(rt.stop())  # releases the database, as a crash would leave it
async def again():
    async with AgentRuntime(sys.argv[1]) as second:
        return [t.name for t in second.list_tasks(limit=None)]
print("tasks:", asyncio.run(again()))
"""


def test_a_runtime_whose_loop_ended_refuses_calls_and_releases_its_database(
    tmp_path: Path,
) -> None:
    """R-04: a runtime started in one asyncio.run and used in the next refuses the call,
    saying to keep it in one loop (it raised a bare "Event loop is closed" after adding the
    task: a retry duplicated it); its stop releases the database, so a new runtime in the
    same process continues its work (the stop could hang, or leave the database claimed)."""
    result = subprocess.run(
        [sys.executable, "-c", _TWO_LOOPS, str(tmp_path / "loops.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    assert "event loop that has ended" in lines[0], lines
    assert lines[1] == "tasks: ['kept']", lines


def test_a_runtime_stopped_after_its_loop_closed_kills_its_workers(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-14: a runtime whose loop was closed without cancelling its tasks (run_until_complete,
    then close), stopped from another loop, leaves no worker process (killing them failed on
    the closed loop before any was killed: the workers outlived the program's runtime),
    and gives back the collector threshold its executor held (it stayed raised)."""
    threshold = gc.get_threshold()
    rt = AgentRuntime(config=make_config())
    loop = asyncio.new_event_loop()

    async def start_one() -> int:
        await rt.start()
        agent_id = await rt.register_agent("echo", agents.EchoAgent, isolation="process")
        pid = (await rt.start_agent(agent_id)).process_id
        assert pid is not None
        return pid

    pid = loop.run_until_complete(start_one())
    loop.close()
    asyncio.run(rt.stop())
    deadline = time.monotonic() + WAIT_SECONDS
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid)
    assert gc.get_threshold() == threshold
