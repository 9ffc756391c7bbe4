"""R-04: bad input raises a typed, clearly worded error and leaves stored state unchanged."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    ConfigurationError,
    DependencyCycleError,
    InvalidStateError,
    MiminionsError,
    NotFoundError,
    QueueFullError,
    ResourceLimits,
    RuntimeConfig,
    RuntimeNotRunningError,
    TaskRequest,
    ValidationError,
)
from tests.support import agents


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
        ({"input_data": ["not", "a", "dict"]}, ValidationError, "must be a dict"),
        ({"priority": 101}, ValidationError, "between 0"),
        ({"priority": -1}, ValidationError, "between 0"),
        ({"priority": "high"}, ValidationError, "integer"),
        ({"priority": True}, ValidationError, "integer"),
        ({"timeout_seconds": -1}, ValidationError, "positive"),
        ({"timeout_seconds": 0}, ValidationError, "positive"),
        ({"max_retries": -2}, ValidationError, "max_retries"),
        ({"dependencies": ["no-such-task"]}, NotFoundError, "unknown task id"),
        ({"dependencies": "abc"}, ValidationError, "list of task ids"),
        ({"agent_id": "no-such-agent"}, NotFoundError, "no agent"),
        ({"group": ""}, ValidationError, "group"),
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
        AgentRuntime(tmp_path / "x.db", disable="sqlite_store")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown plugin"):
        AgentRuntime(tmp_path / "x.db", disable=["no_such_plugin"])
    with pytest.raises(ValueError, match="ResourceLimits"):
        AgentRuntime(tmp_path / "x.db", limits={"max_concurrent_agents": 1})  # type: ignore[arg-type]
