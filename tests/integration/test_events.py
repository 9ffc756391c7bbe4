"""F-12, F-13: the event log records every transition; query, export and metrics."""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    Event,
    EventType,
    RuntimeConfig,
    Severity,
    TaskRequest,
    TaskStatus,
    ValidationError,
    accepts_events,
    hookimpl,
)
from tests.support import agents
from tests.support.runtime import start_agent


async def run_some_work(rt: AgentRuntime) -> tuple[str, str, str]:
    agent_id = await rt.register_agent("rec", agents.RecordingAgent, group="g")
    await rt.start_agent(agent_id)
    ok = await rt.submit_task("ok")
    bad = await rt.submit_task("bad", {"fail": "broken"})
    await rt.wait_for_task(ok, 5)
    await rt.wait_for_task(bad, 5)
    await rt.pause_agent(agent_id)
    await rt.resume_agent(agent_id)
    return agent_id, ok, bad


async def test_every_transition_is_logged(rt: AgentRuntime) -> None:
    """F-12: lifecycle changes and task transitions are appended with severities."""
    agent_id, ok, bad = await run_some_work(rt)
    events = await rt.query_events(limit=None)
    kinds = [e.event_type for e in events]
    assert kinds[0] is EventType.RUNTIME_STARTED
    for expected in (
        EventType.AGENT_REGISTERED,
        EventType.AGENT_STARTING,
        EventType.AGENT_STARTED,
        EventType.AGENT_PAUSED,
        EventType.AGENT_RESUMED,
    ):
        assert [e.agent_id for e in events if e.event_type is expected] == [agent_id]
    ok_events = [e.event_type for e in events if e.task_id == ok]
    assert ok_events == [EventType.TASK_ENQUEUED, EventType.TASK_STARTED, EventType.TASK_COMPLETED]
    failed = [e for e in events if e.task_id == bad and e.event_type is EventType.TASK_FAILED]
    assert failed[0].severity is Severity.ERROR
    assert failed[0].details["error"] == "RuntimeError: broken"
    assert [e.event_id for e in events] == sorted(e.event_id for e in events if e.event_id)


async def test_query_filters(rt: AgentRuntime) -> None:
    """F-12: every filter narrows the result; newest=True keeps the most recent."""
    agent_id, ok, _ = await run_some_work(rt)
    assert {e.task_id for e in await rt.query_events(task_id=ok)} == {ok}
    assert {e.agent_id for e in await rt.query_events(agent_id=agent_id, limit=None)} == {agent_id}
    errors = await rt.query_events(severity="error")
    assert errors
    assert all(e.severity in (Severity.ERROR, Severity.CRITICAL) for e in errors)
    types = {EventType.TASK_COMPLETED, EventType.TASK_FAILED}
    assert {e.event_type for e in await rt.query_events(event_type=list(types))} == types
    later = datetime.now(UTC) + timedelta(hours=1)
    assert await rt.query_events(since=later) == []
    everything = await rt.query_events(limit=None)
    assert await rt.query_events(limit=2) == everything[:2]
    assert await rt.query_events(limit=2, newest=True) == everything[-2:]
    # a limit beyond any count (even SQLite's largest integer) is every event
    assert await rt.query_events(limit=2**64) == everything
    assert await rt.query_events(limit=2**64, newest=True) == everything


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
async def test_export_formats(rt: AgentRuntime, tmp_path: Path, fmt: str) -> None:
    """F-12: the log exports as jsonl, csv and json with the same content."""
    await run_some_work(rt)
    path = tmp_path / f"events.{fmt}"
    count = await rt.export_events(path, format=fmt)
    everything = await rt.query_events(limit=None)
    assert count == len(everything)
    text = path.read_text()
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
    elif fmt == "json":
        rows = json.loads(text)
    else:
        rows = list(csv.DictReader(text.splitlines()))
        for row in rows:
            row["details"] = json.loads(row["details"])
    assert [row["event_type"] for row in rows] == [e.event_type.value for e in everything]
    assert rows[0]["event_type"] == "runtime_started"
    assert {"event_id", "timestamp", "severity", "agent_id", "task_id", "details"} <= set(rows[0])


async def test_export_with_filter(rt: AgentRuntime, tmp_path: Path) -> None:
    """F-12: export accepts the query filters."""
    _, ok, _ = await run_some_work(rt)
    path = tmp_path / "ok.jsonl"
    assert await rt.export_events(path, task_id=ok) == 3
    assert {json.loads(line)["task_id"] for line in path.read_text().splitlines()} == {ok}


async def test_metrics_and_queue_status(rt: AgentRuntime) -> None:
    """F-13: counts, durations and agent states are reported."""
    await run_some_work(rt)
    metrics = rt.get_metrics()
    assert (metrics.tasks_submitted, metrics.tasks_completed, metrics.tasks_failed) == (2, 1, 1)
    assert metrics.task_duration_mean_seconds is not None
    assert metrics.task_duration_p95_seconds is not None
    assert metrics.agents_by_status == {"running": 1}
    assert metrics.uptime_seconds > 0
    assert metrics.events_recorded >= len(await rt.query_events(limit=None))
    queue = rt.get_queue_status()
    assert (queue.total, queue.completed, queue.failed, queue.pending) == (2, 1, 1, 0)
    assert [t.status for t in rt.list_tasks()] == [TaskStatus.FAILED, TaskStatus.COMPLETED]
    assert [t.name for t in rt.list_tasks(status="completed")] == ["ok"]


async def test_logging_monitor_logs_events(
    rt: AgentRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """F-21: the built-in logging monitor writes events to the miminions.events logger."""
    caplog.set_level(logging.INFO, logger="miminions.events")
    await run_some_work(rt)
    messages = [r.getMessage() for r in caplog.records if r.name == "miminions.events"]
    assert any(m.startswith("task_completed") for m in messages)
    failed = [r for r in caplog.records if r.getMessage().startswith("task_failed")]
    assert failed[0].levelno == logging.ERROR


async def test_message_events_are_in_the_log_at_once_and_in_order(
    rt: AgentRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """MESSAGE_SENT is recorded just after the send (off the receiver's latency), yet a
    query made straight away finds it, before events emitted after it; monitors see it."""
    caplog.set_level(logging.INFO, logger="miminions.events")
    receiver = await rt.register_agent("quiet", agents.RecordingAgent)
    await rt.start_agent(receiver)
    [message_id] = await rt.send_message(receiver, "ping")
    [sent] = await rt.query_events(event_type=EventType.MESSAGE_SENT)
    assert sent.details["message_id"] == message_id

    [message_id] = await rt.send_message(receiver, "ping")
    await rt.pause_queue()  # emits QUEUE_PAUSED the ordinary way, with no loop turn between
    events = await rt.query_events(newest=True, limit=2)
    assert [e.event_type for e in events] == [EventType.MESSAGE_SENT, EventType.QUEUE_PAUSED]
    assert events[0].details["message_id"] == message_id
    assert events[0].event_id is not None
    assert events[1].event_id == events[0].event_id + 1
    logged = [r.getMessage().split()[0] for r in caplog.records if r.name == "miminions.events"]
    assert logged[-2:] == ["message_sent", "queue_paused"]


class _Collector:
    """A monitor that keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def miminions_event(self, event: Event) -> None:
        self.events.append(event)


class _ErrorsOnly(_Collector):
    """A monitor whose filter takes only error events."""

    @hookimpl
    @accepts_events(lambda event_type, severity: severity is Severity.ERROR)
    def miminions_event(self, event: Event) -> None:
        self.events.append(event)


class _BrokenFilter(_Collector):
    """A monitor whose filter raises on every event."""

    @hookimpl
    @accepts_events(lambda event_type, severity: 1 / 0 > 0)
    def miminions_event(self, event: Event) -> None:
        self.events.append(event)


async def test_event_filters_pass_only_what_a_monitor_accepts(
    make_config: Callable[..., RuntimeConfig], caplog: pytest.LogCaptureFixture
) -> None:
    """A monitor with an ``accepts_events`` filter gets only the events it takes, the same
    objects another monitor gets; a filter that raises is logged as its monitor's failure
    and the others still get every event."""
    everything, errors, broken = _Collector(), _ErrorsOnly(), _BrokenFilter()
    async with AgentRuntime(config=make_config(), plugins=[everything, errors, broken]) as rt:
        _, _, bad = await run_some_work(rt)
        stored = await rt.query_events(limit=None)
    assert [e.event_type for e in errors.events] == [EventType.TASK_FAILED]
    assert errors.events[0].task_id == bad
    assert broken.events == []
    assert len(everything.events) > len(stored)  # and the stop's events after the query
    assert [(e.event_type, e.task_id) for e in everything.events[: len(stored)]] == [
        (e.event_type, e.task_id) for e in stored
    ]
    assert any(e is errors.events[0] for e in everything.events)  # built once, shared
    failures = [r for r in caplog.records if "_BrokenFilter" in r.getMessage()]
    assert len(failures) == len(everything.events)
    assert all(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in failures)


async def test_monitors_see_the_timestamps_the_log_stores(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """An event's time as a monitor sees it is the one stored: querying with it as
    ``since`` finds the event itself."""
    seen = _Collector()
    async with AgentRuntime(config=make_config(), plugins=[seen]) as rt:
        await run_some_work(rt)
        stored = await rt.query_events(limit=None)
        assert [e.timestamp for e in seen.events[: len(stored)]] == [e.timestamp for e in stored]
        last = stored[-1]
        found = await rt.query_events(since=last.timestamp, limit=None)
        assert [e.event_id for e in found][:1] == [last.event_id]


async def test_logging_monitor_follows_a_level_set_while_running(
    rt: AgentRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """The logging monitor's filter asks the logger each time: routine (info) events are
    logged only while the logger is enabled for info, errors always."""
    caplog.set_level(logging.WARNING, logger="miminions.events")
    agent_id = await rt.register_agent("rec", agents.RecordingAgent)
    await rt.start_agent(agent_id)
    await rt.wait_for_task(await rt.submit_task("quiet"), 5)
    await rt.wait_for_task(await rt.submit_task("bad", {"fail": "broken"}), 5)
    logged = [r.getMessage().split()[0] for r in caplog.records if r.name == "miminions.events"]
    assert logged == ["task_failed", "task_dead_lettered"]  # an error, a warning

    caplog.set_level(logging.INFO, logger="miminions.events")
    loud = await rt.submit_task("loud")
    await rt.wait_for_task(loud, 5)
    logged = [r.getMessage() for r in caplog.records if r.name == "miminions.events"]
    assert [m.split()[0] for m in logged if f"task={loud}" in m] == [
        "task_enqueued",
        "task_started",
        "task_completed",
    ]


class _WrapsEverything:
    """A monitor that wraps the hook: pluggy then calls every implementation itself."""

    @hookimpl(wrapper=True)
    def miminions_event(self, event: Event) -> object:
        return (yield)


async def test_a_filter_holds_while_another_plugin_wraps_the_hook(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """With a hook wrapper registered, pluggy calls every monitor with every event; a
    filtered monitor still gets only the events its filter takes."""
    errors, everything = _ErrorsOnly(), _Collector()
    plugins = [errors, everything, _WrapsEverything()]
    async with AgentRuntime(config=make_config(), plugins=plugins) as rt:
        _, ok, bad = await run_some_work(rt)
    assert [(e.event_type, e.task_id) for e in errors.events] == [(EventType.TASK_FAILED, bad)]
    assert {e.task_id for e in everything.events} >= {ok, bad}


def _counted(function: Callable[..., Any]) -> Callable[..., Any]:
    """A user's own decorator, written the usual way (``functools.wraps``): it counts the
    events that reach it on its monitor's ``seen_by_decorator``."""

    @functools.wraps(function)
    def wrapper(self: _DecoratedErrors, event: Event) -> Any:
        self.seen_by_decorator.append(event.event_type)
        return function(self, event)

    return wrapper


class _DecoratedErrors(_Collector):
    """A filtered monitor under a decorator of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_by_decorator: list[EventType] = []

    @hookimpl
    @_counted
    @accepts_events(lambda event_type, severity: severity is Severity.ERROR)
    def miminions_event(self, event: Event) -> None:
        self.events.append(event)


async def test_a_decorator_over_a_filtered_monitor_runs(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A decorator of the user's own over an ``accepts_events`` monitor is called (the
    filter inside it still holds), with or without another plugin wrapping the hook."""
    for extra in ([], [_WrapsEverything()]):
        monitor = _DecoratedErrors()
        async with AgentRuntime(config=make_config(), plugins=[monitor, *extra]) as rt:
            _, _, bad = await run_some_work(rt)
        assert [(e.event_type, e.task_id) for e in monitor.events] == [(EventType.TASK_FAILED, bad)]
        assert EventType.TASK_FAILED in monitor.seen_by_decorator
        assert EventType.TASK_COMPLETED in monitor.seen_by_decorator  # filtered inside it


def test_a_filter_needs_the_event_argument() -> None:
    """accepts_events on a function without an ``event`` argument is a mistake, told at once."""
    with pytest.raises(TypeError, match="takes no 'event' argument"):

        @accepts_events(lambda event_type, severity: True)
        def miminions_event(runtime: AgentRuntime) -> None:  # pragma: no cover - never called
            return None


@pytest.mark.parametrize("target", ["database", "wal", "link"])
async def test_export_events_refuses_to_overwrite_the_runtime_database(
    rt: AgentRuntime, tmp_path: Path, target: str
) -> None:
    """export_events refuses the runtime's own database, its -wal file or another name of
    it (it truncated the live file and wrote events into it: the database was lost), as
    the CLI's --output does; the database stays whole."""
    await start_agent(rt, "echo", agents.EchoAgent)
    task_id = await rt.submit_task("job")
    await rt.wait_for_task(task_id, 5)
    database = Path(rt.config.storage_path)
    path = {"database": database, "wal": Path(f"{database}-wal"), "link": tmp_path / "db.link"}[
        target
    ]
    if target == "link":
        path.symlink_to(database)
    size = os.stat(database).st_size
    with pytest.raises(ValidationError, match="would destroy it"):
        await rt.export_events(path)
    assert os.stat(database).st_size == size
    assert (await rt.store.load_tasks())[0].task_id == task_id


async def test_export_events_refuses_the_database_named_by_a_file_uri(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """A runtime on ``file:<path>`` (a URI the store opens as that file) refuses an export
    to the file itself (it compared with the URI's text, and overwrote the database)."""
    database = tmp_path / "db.sqlite"
    async with AgentRuntime(config=make_config(storage_path=str(database))) as rt:
        await rt.submit_task("job")
    async with AgentRuntime(config=make_config(storage_path=f"file:{database}")) as rt:
        assert len(rt.list_tasks(limit=None)) == 1  # the same database
        with pytest.raises(ValidationError, match="would destroy it"):
            await rt.export_events(database)
        with pytest.raises(ValidationError, match="would destroy it"):
            await rt.export_events(f"{database}-wal")
    async with AgentRuntime(config=make_config(storage_path=str(database))) as rt:
        assert len(rt.list_tasks(limit=None)) == 1  # still whole


async def test_export_events_refuses_the_database_after_a_change_of_directory(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative storage_path names the file of the directory the runtime started in: after
    a chdir, an export to that file is still refused, and one to the same relative name
    (now another file) is written."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    async with AgentRuntime(config=make_config(storage_path="db.sqlite")) as rt:
        await rt.submit_task("job")
        monkeypatch.chdir(elsewhere)
        with pytest.raises(ValidationError, match="would destroy it"):
            await rt.export_events(home / "db.sqlite")
        assert await rt.export_events("db.sqlite") > 0
    assert (elsewhere / "db.sqlite").read_text().startswith("{")
    monkeypatch.chdir(home)
    async with AgentRuntime(config=make_config(storage_path="db.sqlite")) as rt:
        assert len(rt.list_tasks(limit=None)) == 1


async def test_the_event_log_can_be_read_page_by_page(rt: AgentRuntime, tmp_path: Path) -> None:
    """``after_id`` pages through events that share a timestamp (a batch's, which ``since``
    cannot get past), with filters and in exports too."""
    await rt.submit_tasks([TaskRequest(name=f"t{i}") for i in range(250)])
    everything = await rt.query_events(event_type=EventType.TASK_ENQUEUED, limit=None)
    assert len(everything) == 250
    pages: list[list[Event]] = []
    last: int | None = None
    for _ in range(10):  # bounded: a cursor that does not move must not loop forever
        page = await rt.query_events(event_type="task_enqueued", limit=100, after_id=last)
        if not page:
            break
        pages.append(page)
        last = page[-1].event_id
    assert [len(page) for page in pages] == [100, 100, 50]
    assert [e.event_id for page in pages for e in page] == [e.event_id for e in everything]
    tail = await rt.query_events(after_id=everything[-1].event_id, limit=None)
    assert all(e.event_id > everything[-1].event_id for e in tail)  # type: ignore[operator]
    path = tmp_path / "rest.jsonl"
    written = await rt.export_events(
        path, event_type="task_enqueued", after_id=everything[199].event_id
    )
    assert written == 50
    assert json.loads(path.read_text().splitlines()[0])["event_id"] == everything[200].event_id


@pytest.mark.parametrize("bad", [-1, 1.5, True, "7", 2**63, 2**64])
async def test_a_bad_after_id_is_refused(rt: AgentRuntime, bad: Any) -> None:
    """(One past SQLite's integers raised a raw OverflowError when a filter sent the query
    to the database.)"""
    with pytest.raises(ValidationError, match="after_id must be an event id"):
        await rt.query_events(agent_id="a", after_id=bad)
