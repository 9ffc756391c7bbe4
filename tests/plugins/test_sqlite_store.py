"""Tests of the built-in SQLite store (``miminions.plugins.sqlite_store``)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import sqlite3
import stat
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime
from miminions.kernel.errors import (
    AlreadyExistsError,
    ConfigurationError,
    InvalidStateError,
    MiminionsError,
    RuntimeNotRunningError,
    ValidationError,
)
from miminions.kernel.interfaces import EventQuery, Store, StoredAgent
from miminions.kernel.models import (
    AgentSpec,
    AgentStatus,
    DeadLetter,
    Event,
    EventRecord,
    EventType,
    ResourceLimits,
    RuntimeConfig,
    Severity,
    Task,
    TaskStatus,
)
from miminions.plugins import sqlite_batch, sqlite_schema, sqlite_store
from miminions.plugins.interpreter_settings import SWITCH_INTERVAL
from miminions.plugins.sqlite_batch import StoreError
from miminions.plugins.sqlite_store import SQLiteStore, miminions_make_store
from tests.support.children import first_line, spawn

T0 = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
WAIT = 30.0  # the bound of a wait for another thread


def make_task(task_id: str = "t1", **fields: Any) -> Task:
    """A valid task; ``fields`` override the defaults."""
    return Task(task_id=task_id, name="work", created_at=T0, **fields)


def full_task(task_id: str = "full") -> Task:
    """A task with every stored field set to something other than its default."""
    return Task(
        task_id=task_id,
        name="summarise ✓",
        priority=7,
        status=TaskStatus.COMPLETED,
        input_data={"text": 'héllo\n"quoted"', "n": [1, 2.5, None, True], "deep": {"x": {}}},
        output_data=["result", {"score": 0.30000000000000004}],
        error_message="an earlier attempt failed",
        agent_id="agent-1",
        group="writers",
        assigned_agent_id="agent-2",
        dependencies=["dep-a", "dep-b"],
        retry_count=2,
        max_retries=3,
        timeout_seconds=1.5,
        idempotency_key=f"key-{task_id}",
        checkpoint={"step": 3, "partial": "abc"},
        dead_lettered=True,
        created_at=T0,
        started_at=T0 + timedelta(seconds=1, microseconds=7),
        completed_at=T0 + timedelta(seconds=2, microseconds=999999),
    )


def make_event(n: int, **fields: Any) -> EventRecord:
    """An event at ``T0 + n`` seconds, as the runtime hands it to the store; ``fields``
    override the defaults."""
    values: dict[str, Any] = {
        "timestamp": (T0 + timedelta(seconds=n)).timestamp(),
        "event_type": EventType.TASK_ENQUEUED,
        "severity": Severity.INFO,
        "agent_id": None,
        "task_id": None,
        "details": {},
    }
    values.update(fields)
    return EventRecord(**values)


def raw(path: str | os.PathLike[str], sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run ``sql`` on a second, plain sqlite3 connection (another reader of the file)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "miminions.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(db_path))
    await s.open()
    yield s
    await s.close()


# ----------------------------------------------------------------------------- round trips
async def test_task_round_trip_keeps_every_field(store: SQLiteStore, db_path: Path) -> None:
    """F-09: a stored task reads back field for field, also from a new store on the file."""
    task, plain = full_task(), make_task("plain")
    await store.put_task(task)
    await store.put_task(plain)

    loaded = await store.load_tasks()
    assert [t.model_dump() for t in loaded] == [task.model_dump(), plain.model_dump()]
    assert loaded[0].created_at.tzinfo is not None

    await store.close()
    reopened = SQLiteStore(str(db_path))
    await reopened.open()
    try:
        assert [t.model_dump() for t in await reopened.load_tasks()] == [
            task.model_dump(),
            plain.model_dump(),
        ]
    finally:
        await reopened.close()


def _lived(task: Task) -> Task:
    """``task`` after a run: every field a stored task's later writes change is changed."""
    return task.model_copy(
        update={
            "status": TaskStatus.FAILED,
            "output_data": {"partial": [1, 2]},
            "error_message": "boom",
            "assigned_agent_id": "agent-9",
            "retry_count": 1,
            "checkpoint": {"step": 9},
            "dead_lettered": True,
            "started_at": T0 + timedelta(seconds=5),
            "completed_at": T0 + timedelta(seconds=6),
        }
    )


@pytest.mark.parametrize("state_update", [True, False], ids=["state-update", "upsert-only"])
async def test_later_writes_of_a_task_keep_every_field(
    store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch, state_update: bool
) -> None:
    """A task written again after its first commit (its state changed) reads back field
    for field, in this store and in one opened later, which goes on updating it; with
    SQLite before 3.33 (no ``UPDATE ... FROM``) every write is a full upsert."""
    if not state_update:
        monkeypatch.setattr(sqlite_schema, "UPDATE_TASK_STATE", None)
    elif sqlite_schema.UPDATE_TASK_STATE is None:
        pytest.skip("this SQLite has no UPDATE ... FROM")
    live = full_task()
    await store.put_task(live)
    for field, value in _lived(live).__dict__.items():  # as the runtime changes its tasks
        setattr(live, field, value)
    await store.put_task(live)
    assert [t.model_dump() for t in await store.load_tasks()] == [live.model_dump()]

    await store.close()
    reopened = SQLiteStore(str(db_path))
    await reopened.open()
    try:
        (loaded,) = await reopened.load_tasks()
        await reopened.put_task(loaded)
        loaded.status, loaded.retry_count = TaskStatus.PENDING, 2
        await reopened.put_task(loaded)
        assert [t.model_dump() for t in await reopened.load_tasks()] == [loaded.model_dump()]
    finally:
        await reopened.close()
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(1,)]


async def test_another_object_for_a_stored_task_is_written_whole(store: SQLiteStore) -> None:
    """Only the very object whose row was stored gets the state-only update: a copy, or a
    task read back, may differ anywhere and is written whole."""
    original = make_task("t1")
    await store.put_task(original)
    other = original.model_copy(
        update={"name": "renamed", "input_data": {"x": 1}, "trace_context": {"k": "v"}}
    )
    await store.put_task(other)
    (loaded,) = await store.load_tasks()
    assert loaded.model_dump() == other.model_dump()
    loaded.priority = 3
    await store.put_task(loaded)
    assert [t.priority for t in await store.load_tasks()] == [3]


async def test_a_rejected_first_write_is_not_taken_as_stored(
    store: SQLiteStore, db_path: Path
) -> None:
    """A task whose first write was rejected has no row: its next write stores it whole."""
    bad = make_task("bad", max_retries=10**30)
    with pytest.raises(ValidationError):
        await store.put_task(bad)
    fixed = _lived(make_task("bad", max_retries=2))
    await store.put_task(fixed)
    assert [t.model_dump() for t in await store.load_tasks()] == [fixed.model_dump()]


async def test_state_update_of_a_bad_value_rejects_only_its_own_write(
    store: SQLiteStore, db_path: Path
) -> None:
    """A stored task's later write that cannot be stored fails alone, the row keeps its
    last good state and the neighbours' updates are stored."""
    tasks = [make_task(f"n{i}") for i in range(4)]
    await asyncio.gather(*(store.put_task(t) for t in tasks))
    before = tasks[1].model_dump()
    for task in tasks:
        for field, value in _lived(task).__dict__.items():
            setattr(task, field, value)
    tasks[1].retry_count = 10**30
    writes = [store.put_task(t) for t in tasks]
    await asyncio.gather(writes[0], *writes[2:])
    with pytest.raises(ValidationError, match=r"n1.*Overflow"):
        await writes[1]
    loaded = {t.task_id: t.model_dump() for t in await store.load_tasks()}
    assert loaded == {
        "n0": tasks[0].model_dump(),
        "n1": before,
        "n2": tasks[2].model_dump(),
        "n3": tasks[3].model_dump(),
    }


async def test_computed_task_fields_are_not_stored(store: SQLiteStore) -> None:
    """Queue position, ETA and effective priority are filled in by queries, never stored."""
    await store.put_task(
        make_task(effective_priority=1, queue_position=4, estimated_wait_seconds=2.0)
    )
    (loaded,) = await store.load_tasks()
    assert (loaded.effective_priority, loaded.queue_position) == (None, None)
    assert loaded.estimated_wait_seconds is None


async def test_agent_round_trip(store: SQLiteStore) -> None:
    """F-09: an agent's spec, status and pause state survive exactly."""
    spec = AgentSpec(
        agent_id="a1",
        name="writer",
        group="g",
        isolation="process",
        kind="function",
        target="pkg.mod:fn",
        config={"model": "small", "temperature": 0.1},
        limits=ResourceLimits(max_memory_per_agent_mb=256.0),
    )
    agent = StoredAgent(
        agent_id="a1",
        name="writer",
        spec=spec,
        status=AgentStatus.PAUSED,
        paused_state={"cursor": 17, "seen": ["x", "ü"], "nested": {"f": 1e-9}},
        restart_count=2,
        error_message="crashed once",
    )
    other = StoredAgent(
        agent_id="a2",
        name="reader",
        spec=AgentSpec(agent_id="a2", name="reader"),
        status=AgentStatus.REGISTERED,
    )
    await store.put_agent(agent)
    await store.put_agent(other)
    assert await store.load_agents() == [agent, other]

    agent.status = AgentStatus.RUNNING
    agent.paused_state = None
    await store.put_agent(agent)
    assert (await store.load_agents())[0] == agent


async def test_dead_letter_round_trip(store: SQLiteStore) -> None:
    """Dead letters keep every field and come back oldest first."""
    newer = DeadLetter(
        dead_letter_id="d2",
        kind="message",
        ref_id="m1",
        reason="expired",
        created_at=T0 + timedelta(seconds=5),
    )
    older = DeadLetter(
        dead_letter_id="d1",
        kind="task",
        ref_id="t1",
        reason="retries exhausted",
        payload={"error": "boom", "attempts": 3},
        created_at=T0,
        requeued_at=T0 + timedelta(seconds=9),
    )
    await store.put_dead_letter(newer)
    await store.put_dead_letter(older)
    assert await store.load_dead_letters() == [older, newer]


async def test_meta_round_trip(store: SQLiteStore) -> None:
    """Meta holds any JSON value; an unknown key reads as None; a put overwrites."""
    values: dict[str, Any] = {"dict": {"a": [1, 2]}, "list": [None, "x"], "str": "é", "int": 3}
    for key, value in values.items():
        store.put_meta(key, value)
    await store.flush()
    for key, value in values.items():
        assert await store.get_meta(key) == value
    assert await store.get_meta("missing") is None
    await store.put_meta("int", 4)
    assert await store.get_meta("int") == 4


async def test_event_round_trip_assigns_increasing_ids(store: SQLiteStore) -> None:
    """F-12: events are appended durably with every field and increasing ids."""
    first = make_event(
        0,
        event_type=EventType.AGENT_ERROR,
        severity=Severity.ERROR,
        agent_id="a1",
        task_id="t1",
        details={"error": "boom", "trace": ["x", "y"]},
    )
    second = make_event(1)
    store.put_event(first)
    store.put_event(second)
    await store.flush()

    loaded = await store.query_events(EventQuery())
    assert [e.model_dump(exclude={"event_id"}) for e in loaded] == [
        first.to_event().model_dump(exclude={"event_id"}),
        second.to_event().model_dump(exclude={"event_id"}),
    ]
    first_id, second_id = (e.event_id for e in loaded)
    assert first_id is not None
    assert second_id is not None
    assert first_id < second_id


async def test_event_details_that_are_not_json_are_stored_as_repr(store: SQLiteStore) -> None:
    """F-12: an odd detail value never loses the event (nor the batch); it is kept as text."""
    store.put_event(make_event(0, details={"obj": {1, 2}}))
    await store.flush()
    (event,) = await store.query_events(EventQuery())
    assert event.details == {"obj": "{1, 2}"}


# ----------------------------------------------------------------------------- group commit
async def test_task_put_three_times_in_one_iteration_is_written_once(
    store: SQLiteStore,
) -> None:
    """Puts before a commit coalesce: one row write, holding the latest state."""
    task = make_task()
    assert store._conn is not None
    changes_before = store._conn.total_changes
    first = store.put_task(task)
    task.status = TaskStatus.RUNNING
    second = store.put_task(task)
    task.status = TaskStatus.COMPLETED
    task.output_data = {"answer": 42}
    third = store.put_task(task)
    await asyncio.gather(first, second, third)

    assert store._conn.total_changes - changes_before == 1
    (loaded,) = await store.load_tasks()
    assert loaded.status is TaskStatus.COMPLETED
    assert loaded.output_data == {"answer": 42}


async def test_put_resolves_after_commit_visible_to_another_connection(
    store: SQLiteStore, db_path: Path
) -> None:
    """F-09: when the awaitable of a put resolves, the row is committed for every reader."""
    pending = store.put_task(make_task())
    # Nothing is written before the loop runs the committer.
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(0,)]
    await pending
    assert raw(db_path, "SELECT task_id, status FROM tasks") == [("t1", "pending")]


async def test_flush_commits_events(store: SQLiteStore, db_path: Path) -> None:
    """F-12: ``flush`` returns once every queued event is committed."""
    for n in range(3):
        store.put_event(make_event(n))
    await store.flush()
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(3,)]
    await store.flush()  # nothing queued: returns at once


async def test_writes_during_a_commit_go_to_the_next_one(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes queued while a commit runs share the following commit; both resolve."""
    real_write = store._write
    batches: list[list[str]] = []
    late: list[Any] = []

    async def write(batch: Any, tasks: dict[str, Task], *rest: Any) -> None:
        batches.append(list(tasks))
        if not late:  # a write arriving while the first commit is in flight
            late.append(store.put_task(make_task("b")))
        await real_write(batch, tasks, *rest)

    monkeypatch.setattr(store, "_write", write)
    await store.put_task(make_task("a"))
    await late[0]
    assert batches == [["a"], ["b"]]
    assert [t.task_id for t in await store.load_tasks()] == ["a", "b"]


async def test_many_rows_in_one_batch(store: SQLiteStore, db_path: Path) -> None:
    """F-12: a large batch (several multi-row statements) stores every row, events in order."""
    tasks = [make_task(f"t{i:04d}", priority=i % 100) for i in range(1500)]
    for i, task in enumerate(tasks):
        store.put_task(task)
        for n in range(2):
            store.put_event(make_event(0, task_id=task.task_id, details={"n": 2 * i + n}))
    await store.flush()
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(1500,)]
    assert [t.task_id for t in await store.load_tasks()] == [t.task_id for t in tasks]
    events = await store.query_events(EventQuery(limit=None))
    assert [e.details["n"] for e in events] == list(range(3000))


async def test_cancelling_one_wait_does_not_cancel_the_commit(store: SQLiteStore) -> None:
    """A caller that gives up waiting (cancellation) does not fail other writers."""
    impatient = asyncio.ensure_future(store.put_task(make_task("a")))
    patient = store.put_task(make_task("b"))
    await asyncio.sleep(0)
    impatient.cancel()
    await patient
    assert {t.task_id for t in await store.load_tasks()} == {"a", "b"}


async def test_failed_statement_is_retried_and_nothing_is_lost(
    store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operational error rolls the batch back and retries it; every write is stored once."""
    calls = 0

    def fail_once(database: sqlite3.Connection, sql: str, params: Any) -> None:
        # Fail the event insert, after the task rows went into the transaction: those must
        # be rolled back and written again, not stored twice.
        nonlocal calls
        if "INTO events" in sql:
            calls += 1
            if calls == 1:
                raise sqlite3.OperationalError("disk I/O error")
        database.execute(sql, params)

    patch_statements(monkeypatch, fail_once)
    first, second = store.put_task(make_task("a")), store.put_task(make_task("b"))
    store.put_event(make_event(0))
    await asyncio.gather(first, second)
    assert calls == 2
    assert raw(db_path, "SELECT task_id FROM tasks ORDER BY seq") == [("a",), ("b",)]
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(1,)]

    await store.put_task(make_task("c"))
    assert [t.task_id for t in await store.load_tasks()] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- failures
def patch_statements(
    monkeypatch: pytest.MonkeyPatch,
    execute: Callable[[sqlite3.Connection, str, Any], object],
    commit: Callable[[sqlite3.Connection], None] | None = None,
) -> None:
    """Make the store's commits run each statement through ``execute(database, sql,
    params)`` and the COMMIT through ``commit(database)`` (in the database thread, as
    ``sqlite_batch.execute_and_commit`` does), to inject failures."""

    def execute_and_commit(
        conn: Any, statements: list[tuple[str, list[Any]]], progress: Any
    ) -> BaseException | None:
        database = conn._conn
        try:
            for sql, params in statements:
                try:
                    execute(database, sql, params)
                except Exception as exc:
                    progress.committed = False
                    return exc
            (commit or sqlite3.Connection.commit)(database)
        except BaseException:
            progress.committed = False
            raise
        progress.committed = True
        return None

    monkeypatch.setattr(sqlite_batch, "_execute_and_commit", execute_and_commit)


def block_commits(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make the store's next COMMIT wait in the database thread: the first event is set
    once it is there, and it goes on once the second is."""
    in_flight, carry_on = threading.Event(), threading.Event()

    def commit(database: sqlite3.Connection) -> None:
        in_flight.set()
        carry_on.wait(WAIT)
        database.commit()

    patch_statements(monkeypatch, lambda db, sql, params: db.execute(sql, params), commit)
    return in_flight, carry_on


def failing_commits(
    monkeypatch: pytest.MonkeyPatch,
    store: SQLiteStore,
    times: int,
    error: Exception | None = None,
) -> list[int]:
    """Make the store's next ``times`` COMMITs fail with ``error`` (by default "database
    is locked") after their statements ran, whichever way the store commits (in one trip
    with its statements, or on its own after writing row by row).

    Returns ``[COMMITs tried, times]``; setting ``times`` below the count ends the fault.
    """
    state = [0, times]
    failure = error or sqlite3.OperationalError("database is locked")

    def fails() -> bool:
        state[0] += 1
        return state[0] <= state[1]

    def commit(database: sqlite3.Connection) -> None:
        if fails():
            raise failure
        database.commit()

    assert store._conn is not None
    real_commit = store._conn.commit

    async def commit_alone() -> None:  # an aiosqlite without _execute
        if fails():
            raise failure
        await real_commit()

    real_commit_in_thread = sqlite_batch._commit

    def commit_in_thread(conn: Any, progress: Any) -> None:  # after writing row by row
        if fails():
            progress.committed = False
            raise failure
        real_commit_in_thread(conn, progress)

    patch_statements(
        monkeypatch, lambda database, sql, params: database.execute(sql, params), commit
    )
    monkeypatch.setattr(store._conn, "commit", commit_alone)
    monkeypatch.setattr(sqlite_batch, "_commit", commit_in_thread)
    return state


@pytest.fixture
async def quick_store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    """A store that retries a failed commit 3 times, without pausing."""
    s = SQLiteStore(str(db_path), commit_attempts=3, retry_delay=0)
    await s.open()
    yield s
    await s.close()


async def test_too_large_int_rejects_only_its_own_write(store: SQLiteStore, db_path: Path) -> None:
    """A value SQLite cannot hold fails its own put; the rest of the batch is stored."""
    good = store.put_task(make_task("good"))
    huge = store.put_task(make_task("huge", max_retries=10**30))
    meta = store.put_meta("k", 1)
    store.put_event(make_event(0))
    await good
    await meta
    with pytest.raises(ValidationError, match=r"huge.*Overflow"):
        await huge
    assert raw(db_path, "SELECT task_id FROM tasks") == [("good",)]
    assert raw(db_path, "SELECT key FROM meta") == [("k",)]
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(1,)]
    assert store._queued() == 0  # a rejected write is not retried


async def test_unbindable_value_rejects_only_its_own_write(
    store: SQLiteStore, db_path: Path
) -> None:
    """A tuple idempotency key (not a type SQLite binds) fails its own put only."""
    bad = make_task("bad")
    bad.idempotency_key = ("a", 1)  # type: ignore[assignment]
    neighbours = [store.put_task(make_task(f"n{i}")) for i in range(5)]
    rejected = store.put_task(bad)
    neighbours.append(store.put_task(make_task("after")))
    await asyncio.gather(*neighbours)
    with pytest.raises(ValidationError, match="'bad'"):
        await rejected
    stored = [r[0] for r in raw(db_path, "SELECT task_id FROM tasks ORDER BY seq")]
    assert stored == ["n0", "n1", "n2", "n3", "n4", "after"]


async def test_bad_event_row_is_dropped_and_the_others_kept(
    store: SQLiteStore, db_path: Path
) -> None:
    """An event row SQLite cannot bind is logged and dropped; the other events keep order."""
    store.put_event(make_event(0, details={"n": 0}))
    # a tuple where a str goes, on purpose: SQLite cannot bind it
    store.put_event(make_event(1)._replace(agent_id=("x",)))  # type: ignore[arg-type]
    store.put_event(make_event(2, details={"n": 2}))
    task = store.put_task(make_task())
    await store.flush()
    await task
    assert [e.details for e in await store.query_events(EventQuery())] == [{"n": 0}, {"n": 2}]
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(1,)]


async def test_failed_commit_is_retried_and_waiters_succeed(
    quick_store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OperationalError at COMMIT is retried; everybody's writes are stored."""
    store = quick_store
    assert store._conn is not None
    state = failing_commits(monkeypatch, store, 1)
    puts = [store.put_task(make_task(f"t{i}")) for i in range(3)]
    puts.append(store.put_meta("k", "v"))
    store.put_event(make_event(0))
    await asyncio.gather(*puts)
    assert state[0] == 2
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(3,)]
    assert raw(db_path, "SELECT value FROM meta") == [('"v"',)]
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(1,)]


async def test_writes_during_a_failed_commit_are_not_overwritten(
    quick_store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Put back after a failure, old writes yield to newer puts of a key; events keep order."""
    store = quick_store
    in_flight, carry_on = threading.Event(), threading.Event()
    commits = 0

    def commit(database: sqlite3.Connection) -> None:
        nonlocal commits
        commits += 1
        if commits == 1:  # the first commit waits for the writes below, then fails
            in_flight.set()
            carry_on.wait(WAIT)
            raise sqlite3.OperationalError("disk I/O error")
        database.commit()

    patch_statements(monkeypatch, lambda db, sql, params: db.execute(sql, params), commit)
    first = store.put_task(make_task("a"))
    store.put_event(make_event(0, details={"n": 0}))
    assert await asyncio.to_thread(in_flight.wait, WAIT)
    late = [store.put_task(make_task("a", status=TaskStatus.RUNNING))]
    late.append(store.put_task(make_task("b")))
    store.put_event(make_event(1, details={"n": 1}))
    carry_on.set()
    await asyncio.gather(first, *late)
    assert raw(db_path, "SELECT task_id, status FROM tasks ORDER BY seq") == [
        ("a", "running"),
        ("b", "pending"),
    ]
    assert [e.details for e in await store.query_events(EventQuery())] == [{"n": 0}, {"n": 1}]


async def test_retries_back_off_exponentially(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry is logged as a warning, the pause doubling up to its cap."""
    async with SQLiteStore(
        str(db_path), commit_attempts=5, retry_delay=0.001, max_retry_delay=0.004
    ) as store:
        assert store._conn is not None
        state = failing_commits(monkeypatch, store, 4)
        with caplog.at_level(logging.WARNING, "miminions.plugins.sqlite_store"):
            await store.put_task(make_task())
        assert state[0] == 5
        retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [m.split("retrying in ")[1].split(" s")[0] for m in retries] == [
            "0.001",
            "0.002",
            "0.004",
            "0.004",
        ]
        assert [m.rsplit("(", 1)[1] for m in retries] == [
            "attempt 2 of 5)",
            "attempt 3 of 5)",
            "attempt 4 of 5)",
            "attempt 5 of 5)",
        ]
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(1,)]


async def test_persistent_failure_keeps_writes_queued_until_flush(
    quick_store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the bounded attempts waiters get a StoreError; the rows stay queued for flush."""
    store = quick_store
    assert store._conn is not None
    state = failing_commits(monkeypatch, store, 10**9, sqlite3.OperationalError("disk I/O"))
    task, meta = store.put_task(make_task("a")), store.put_meta("k", 1)
    store.put_event(make_event(0))
    with pytest.raises(StoreError, match=r"3 attempts.*disk I/O") as failure:
        await task
    assert isinstance(failure.value, MiminionsError)
    assert isinstance(failure.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(StoreError):
        await meta
    assert state[0] == 3
    assert store._queued() == 3
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(0,)]

    assert await store.load_tasks() == []  # reads still work (and do not retry)
    assert state[0] == 3
    with pytest.raises(StoreError):  # flush retries, and says it failed
        await store.flush()
    assert state[0] == 6
    assert store._queued() == 3

    state[1] = 0  # the fault goes away
    await store.flush()
    assert store._queued() == 0
    assert raw(db_path, "SELECT task_id FROM tasks") == [("a",)]
    assert raw(db_path, "SELECT key FROM meta") == [("k",)]
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(1,)]


async def test_next_put_retries_writes_of_a_failed_commit(
    quick_store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes left queued by a commit that gave up go out with the next put's commit."""
    store = quick_store
    assert store._conn is not None
    state = failing_commits(monkeypatch, store, 3)
    with pytest.raises(StoreError):
        await store.put_task(make_task("a"))
    await store.put_task(make_task("b"))
    assert state[0] == 4
    assert raw(db_path, "SELECT task_id FROM tasks ORDER BY seq") == [("a",), ("b",)]


async def test_close_after_persistent_failure_names_lost_writes(
    quick_store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() makes a final attempt, then raises naming how many writes were not stored."""
    store = quick_store
    assert store._conn is not None
    state = failing_commits(monkeypatch, store, 10**9)
    pending = store.put_task(make_task("a"))
    store.put_event(make_event(0))
    with pytest.raises(StoreError):
        await pending
    assert state[0] == 3
    with pytest.raises(StoreError, match="2 queued writes could not be stored"):
        await store.close()
    assert state[0] == 6
    assert store._conn is None  # released all the same
    await store.close()  # a second close does nothing


async def test_close_during_retries_waits_for_them(
    quick_store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() while a failed commit is being retried waits for the retry, which stores it."""
    store = quick_store
    assert store._conn is not None
    state = failing_commits(monkeypatch, store, 2)
    pending = store.put_task(make_task("a"))
    await store.close()
    await pending
    assert state[0] == 3
    assert raw(db_path, "SELECT task_id FROM tasks") == [("a",)]


async def test_row_error_and_operational_error_in_one_batch(
    quick_store: SQLiteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried batch still rejects its bad row, and only that one."""
    store = quick_store
    assert store._conn is not None
    state = failing_commits(monkeypatch, store, 1)
    good = store.put_task(make_task("good"))
    huge = store.put_task(make_task("huge", retry_count=2**64))
    await good
    with pytest.raises(ValidationError, match="huge"):
        await huge
    assert state[0] == 2
    assert raw(db_path, "SELECT task_id FROM tasks") == [("good",)]


async def test_a_commit_is_one_trip_to_the_database_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement of a batch and its COMMIT go to the database thread together: each
    trip's answer costs the event loop a wake-up."""
    conn = store._conn
    assert conn is not None
    trips: list[Any] = []
    real: Callable[..., Awaitable[Any]] = conn._execute

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(conn, "_execute", counted)
    writes = [store.put_task(make_task(f"t{i}")) for i in range(3)]
    writes.append(store.put_meta("k", 1))
    store.put_event(make_event(0))
    await asyncio.gather(*writes)
    assert len(trips) == 1
    assert raw_count(store, "tasks") == 3


async def cancel_the_commit_in_flight(
    store: SQLiteStore,
    waiter: Awaitable[None],
    in_flight: threading.Event,
    carry_on: threading.Event,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the database thread holds the commit (``in_flight``), cancel the store's
    committer, let the thread go on (``carry_on``) and check that ``waiter`` is cancelled;
    warnings are captured in ``caplog``."""
    assert await asyncio.to_thread(in_flight.wait, WAIT)
    committer = store._committer
    assert committer is not None
    with caplog.at_level(logging.WARNING, "miminions.plugins.sqlite_store"):
        committer.cancel()
        carry_on.set()
        with pytest.raises(StoreError, match="commit was cancelled"):
            await waiter  # not cancelled itself: it learns its commit was


def raw_count(store: SQLiteStore, table: str) -> int:
    return int(raw(Path(store.path), f"SELECT COUNT(*) FROM {table}")[0][0])


async def test_without_aiosqlite_s_function_call_a_commit_takes_a_trip_per_statement(
    quick_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aiosqlite without ``_execute`` still commits (statement by statement), and a
    failed COMMIT is retried there too."""
    store = quick_store
    assert store._conn is not None
    assert sqlite_batch.runs_functions(store._conn)  # the aiosqlite installed here can
    monkeypatch.setattr(sqlite_batch, "runs_functions", lambda conn: False)
    state = failing_commits(monkeypatch, store, 1)
    writes = [store.put_task(make_task(f"t{i}")) for i in range(3)]
    store.put_event(make_event(0))
    await asyncio.gather(*writes)
    assert state[0] == 2
    assert raw_count(store, "tasks") == 3
    assert raw_count(store, "events") == 1


async def test_a_commit_cancelled_in_the_database_thread_stores_each_write_once(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the COMMIT goes on a trip of its own (an aiosqlite that cannot run our function
    in its thread), a store cancelled while the thread commits cannot tell whether the
    commit was made: keyed writes are put back (an upsert again is harmless), events are
    not (they would be stored twice), and queries still see each event once."""
    in_flight, carry_on = threading.Event(), threading.Event()
    conn = store._conn
    assert conn is not None

    def commit_in_thread() -> None:
        in_flight.set()
        carry_on.wait(WAIT)
        conn._conn.commit()

    async def commit() -> None:
        await conn._execute(commit_in_thread)  # type: ignore[no-untyped-call]  # aiosqlite's private

    monkeypatch.setattr(sqlite_batch, "runs_functions", lambda conn: False)
    monkeypatch.setattr(conn, "commit", commit)
    task = store.put_task(make_task("a"))
    store.put_event(make_event(0, details={"n": 0}))
    await cancel_the_commit_in_flight(store, task, in_flight, carry_on, caplog)
    assert "cancelled while committing" in caplog.text
    monkeypatch.undo()
    await store.flush()  # the task write again
    assert raw_count(store, "tasks") == 1
    assert raw_count(store, "events") == 1
    store.put_event(make_event(1, details={"n": 1}))
    assert [e.details for e in await store.query_events(EventQuery())] == [{"n": 0}, {"n": 1}]


async def test_a_committer_cancelled_before_it_ran_does_not_stop_later_commits(
    store: SQLiteStore, db_path: Path
) -> None:
    """Cancelling every task of the loop (a common shutdown pattern) can catch the store's
    committer before its first step; the next flush starts another one instead of waiting
    for it forever."""
    pending = store.put_task(make_task("a"))
    committer = store._committer
    assert committer is not None
    committer.cancel()
    with pytest.raises(StoreError, match="commit was cancelled"):
        await pending
    await asyncio.wait_for(store.flush(), WAIT)
    await asyncio.wait_for(store.put_task(make_task("b")), WAIT)
    assert raw(db_path, "SELECT task_id FROM tasks ORDER BY seq") == [("a",), ("b",)]


@pytest.mark.parametrize("failure", ["operational", "row"])
async def test_a_commit_cancelled_before_its_statements_failed_keeps_its_events(
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    """Cancelled while its trip is in the database thread, a commit whose statements then
    fail made no COMMIT: everything, events too, is written by the next commit."""
    in_flight, carry_on = threading.Event(), threading.Event()
    error = sqlite3.OperationalError("database is locked") if failure == "operational" else None

    def execute(database: sqlite3.Connection, sql: str, params: Any) -> None:
        if "INTO events" in sql:
            in_flight.set()
            carry_on.wait(WAIT)
            if error is not None:
                raise error
            params = [*params[:-1], ("not", "bindable")]  # a row error
        database.execute(sql, params)

    patch_statements(monkeypatch, execute)
    task = store.put_task(make_task("a"))
    store.put_event(make_event(0, details={"n": 0}))
    store.put_event(make_event(1, details={"n": 1}))
    await cancel_the_commit_in_flight(store, task, in_flight, carry_on, caplog)
    assert "may be lost" not in caplog.text
    monkeypatch.undo()
    await store.flush()
    assert raw_count(store, "tasks") == 1
    assert [e.details for e in await store.query_events(EventQuery())] == [{"n": 0}, {"n": 1}]


async def test_a_commit_cancelled_after_it_was_made_is_not_made_again(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database thread says whether the COMMIT was made: cancelled while it commits, the
    store neither writes the events twice nor has to forget what it keeps in memory."""
    in_flight, carry_on = block_commits(monkeypatch)
    task = store.put_task(make_task("a"))
    store.put_event(make_event(0, details={"n": 0}))
    await cancel_the_commit_in_flight(store, task, in_flight, carry_on, caplog)
    assert "may be lost" not in caplog.text
    assert store._tail is not None
    assert len(store._tail) == 1  # still exact: no need to read the file
    monkeypatch.undo()
    await store.flush()
    assert raw_count(store, "events") == 1
    assert [e.details for e in await store.query_events(EventQuery())] == [{"n": 0}]


def test_retry_settings_are_checked(db_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="commit_attempts"):
        SQLiteStore(str(db_path), commit_attempts=0)
    with pytest.raises(ConfigurationError, match="retry_delay"):
        SQLiteStore(str(db_path), retry_delay=-1)


async def test_unserializable_task_rejects_only_its_own_write(store: SQLiteStore) -> None:
    """R-06: stored data is JSON; a value that is not JSON fails its own put only."""
    bad = make_task("bad", output_data={"when": object()})
    good = store.put_task(make_task("good"))
    rejected = store.put_task(bad)
    await good
    with pytest.raises(ValidationError, match="bad"):
        await rejected
    assert [t.task_id for t in await store.load_tasks()] == ["good"]


async def test_duplicate_idempotency_key_rejects_only_the_duplicate(store: SQLiteStore) -> None:
    """A unique-rule conflict in a batch fails the offending write, not its neighbours."""
    await store.put_task(make_task("first", idempotency_key="k"))
    neighbour = store.put_task(make_task("neighbour"))
    duplicate = store.put_task(make_task("second", idempotency_key="k"))
    await neighbour
    with pytest.raises(AlreadyExistsError, match="second"):
        await duplicate
    assert [t.task_id for t in await store.load_tasks()] == ["first", "neighbour"]


# ----------------------------------------------------------------------------- the file
async def test_database_file_is_private(store: SQLiteStore, db_path: Path) -> None:
    """R-06: the database file (and its WAL companions) are created mode 0600."""
    await store.put_task(make_task())
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        if path.exists() or path == db_path:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets new files be read by everyone (0644), as many systems have."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("named", ["uri", "dangling_symlink"])
async def test_a_database_named_by_uri_or_symlink_is_private_too(
    tmp_path: Path, named: str
) -> None:
    """R-06: a ``file:`` URI or a symlink whose target does not exist yet names a database
    that is created mode 0600 as well, with its WAL companions (SQLite would use the
    umask)."""
    target = tmp_path / "real.db"
    if named == "uri":
        storage_path = f"file:{target}"
    else:
        link = tmp_path / "link.db"
        link.symlink_to(target)
        storage_path = str(link)
    async with SQLiteStore(storage_path) as store:
        await store.put_task(make_task())
        for path in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
            if path.exists() or path == target:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    """An existing database file is opened as it is; its owner chose its permissions."""
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    async with SQLiteStore(str(path)):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


async def test_wal_mode(store: SQLiteStore, db_path: Path) -> None:
    """The database runs in WAL mode, so readers never block the writer."""
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_unwritable_location_is_a_configuration_error(tmp_path: Path) -> None:
    """A path whose directory does not exist fails with a clear error."""
    with pytest.raises(ConfigurationError, match="cannot create"):
        await SQLiteStore(str(tmp_path / "missing" / "x.db")).open()


async def test_in_memory_database(tmp_path: Path) -> None:
    """``:memory:`` works (handy in tests); nothing is created on disk."""
    async with SQLiteStore(":memory:") as store:
        await store.put_task(make_task())
        assert len(await store.load_tasks()) == 1


# ----------------------------------------------------------------------------- one writer
def file_mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def entries(directory: Path) -> list[str]:
    """The names in ``directory``."""
    return sorted(p.name for p in directory.iterdir())


async def test_second_writer_is_refused_until_the_first_closes(
    store: SQLiteStore, db_path: Path
) -> None:
    """R-02: while a writable store has the database open, another one (here in the same
    process) is refused; readers are not; once the first closes, the file is free."""
    link = db_path.with_name("link.db")
    os.symlink(db_path, link)
    for name in (db_path, link):  # any name of the file
        with pytest.raises(ConfigurationError, match="in use by another store in this process"):
            await SQLiteStore(str(name)).open()
    reader = await SQLiteStore.open_readonly(str(db_path))  # never takes the lock
    await reader.close()
    assert file_mode(Path(f"{db_path}-lock")) == 0o600  # private, like the database
    await store.close()
    async with SQLiteStore(str(db_path)) as again:
        await again.put_task(make_task())


async def test_in_memory_stores_take_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ``:memory:`` store is a database of its own: any number may be open at once,
    and no lock file appears."""
    monkeypatch.chdir(tmp_path)
    async with SQLiteStore(":memory:"), SQLiteStore(":memory:") as second:
        await second.put_task(make_task())
    assert entries(tmp_path) == []


@pytest.mark.slow
async def test_writer_in_another_process_holds_the_database_until_it_dies(
    db_path: Path,
) -> None:
    """R-02: a runtime is refused a database that a store in another process has open, even
    before that process wrote any run record (two runtimes starting at the same moment);
    the refusal names the holder. The lock dies with its holder (SIGKILL), so a crash never
    leaves the database taken."""
    holder = await spawn("store_holder", db_path)
    try:
        async with asyncio.timeout(60):
            line = await first_line(holder)
        assert line == f"open {holder.pid}"
        refusal = f"in use by a runtime in process {holder.pid}"
        with pytest.raises(ConfigurationError, match=refusal):
            await AgentRuntime(str(db_path)).start()
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    async with AgentRuntime(str(db_path)) as rt:
        assert rt.is_running


async def test_refusal_waits_for_a_new_holder_to_write_its_pid(db_path: Path) -> None:
    """A store that just took the lock writes its pid a moment later; until then the lock
    file still names the holder before it, which is gone. A start refused in that moment
    names the new holder, not the dead one."""
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # its pid is nobody's now
    fd = os.open(f"{db_path}-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, f"{gone.pid}\n".encode(), 0)
        writer = threading.Timer(0.01, lambda: os.pwrite(fd, f"{os.getpid()}\n".encode(), 0))
        writer.start()
        try:
            with pytest.raises(ConfigurationError, match="in use by another store in this process"):
                await SQLiteStore(str(db_path)).open()
        finally:
            writer.join()
    finally:
        os.close(fd)


@pytest.mark.parametrize("content", ["9" * 25, "-5", "0", "x"])
async def test_a_damaged_lock_file_still_gives_a_clear_refusal(db_path: Path, content: str) -> None:
    """A lock file whose holder wrote no valid pid is refused as held by another process."""
    fd = os.open(f"{db_path}-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, content.encode(), 0)
        with pytest.raises(ConfigurationError, match="in use by a runtime in another process"):
            await SQLiteStore(str(db_path)).open()
    finally:
        os.close(fd)


async def test_without_flock_the_store_opens_without_waiting_for_a_holder(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a file system without flock there is no holder to name: the store opens (with a
    warning) and never waits for a holder's pid."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "no locks available")

    def never(fd: int) -> None:
        raise AssertionError("looked for a lock holder")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # the module the store locks with
    monkeypatch.setattr(sqlite_store, "_live_pid", never)
    store = SQLiteStore(str(db_path))
    await store.open()
    await store.close()
    assert any("without its lock" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- unusable files
def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is not a SQLite database" * 200)


def _truncated(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [("y" * 500,)] * 100)
    conn.commit()
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_not_sqlite, _truncated], ids=["not_sqlite", "truncated"])
async def test_file_that_is_not_a_database_is_a_configuration_error(
    db_path: Path, damage: Callable[[Path], None]
) -> None:
    """R-04: a file SQLite cannot read as a database is refused with a ConfigurationError
    naming it and saying what to do, by writers and readers alike."""
    damage(db_path)
    match = f"cannot open database {str(db_path)!r}: .*point storage_path at a new file"
    with pytest.raises(ConfigurationError, match=match):
        await SQLiteStore(str(db_path)).open()
    with pytest.raises(ConfigurationError, match=match):
        await SQLiteStore.open_readonly(str(db_path))
    os.remove(db_path)  # replaced by a new file: the failed opens left the lock free
    async with SQLiteStore(str(db_path)) as store:
        await store.put_task(make_task())


async def test_directory_is_a_configuration_error(tmp_path: Path) -> None:
    """R-04: a directory as the database path is refused, suggesting a file inside it."""
    with pytest.raises(ConfigurationError, match="is a directory; give the path of a database"):
        await SQLiteStore(str(tmp_path)).open()
    assert f"{tmp_path.name}-lock" not in entries(tmp_path.parent)  # no lock file beside it


# ----------------------------------------------------------------------------- migrations
async def test_migrations_recorded_once_and_reopen_keeps_data(
    store: SQLiteStore, db_path: Path
) -> None:
    """F-09: each migration is applied once; reopening migrates nothing and keeps data."""
    await store.put_task(make_task())
    await store.close()
    for _ in range(2):
        async with SQLiteStore(str(db_path)) as again:
            assert [t.task_id for t in await again.load_tasks()] == ["t1"]
    versions = [v for (v,) in raw(db_path, "SELECT version FROM schema_migrations")]
    assert versions == [m.version for m in sqlite_schema.MIGRATIONS]
    assert versions[-1] == sqlite_schema.SCHEMA_VERSION


async def test_newer_schema_is_refused(store: SQLiteStore, db_path: Path) -> None:
    """A database from a newer miminions is refused, by writers and readers alike."""
    await store.close()
    newer = sqlite_schema.SCHEMA_VERSION + 1
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (newer,))
    conn.commit()
    conn.close()
    with pytest.raises(ConfigurationError, match=f"schema version {newer}"):
        await SQLiteStore(str(db_path)).open()
    with pytest.raises(ConfigurationError, match=f"schema version {newer}"):
        await SQLiteStore.open_readonly(str(db_path))


# ----------------------------------------------------------------------------- queries
@pytest.fixture
async def events(store: SQLiteStore) -> list[Event]:
    """Six events varying in type, severity, agent, task and time; returned as stored."""
    specs: list[dict[str, Any]] = [
        {"event_type": EventType.TASK_ENQUEUED, "task_id": "t1"},
        {"event_type": EventType.TASK_STARTED, "task_id": "t1", "agent_id": "a1"},
        {"event_type": EventType.AGENT_ERROR, "agent_id": "a1", "severity": Severity.ERROR},
        {"event_type": EventType.TASK_FAILED, "task_id": "t2", "severity": Severity.WARNING},
        {"event_type": EventType.RUNTIME_STOPPED, "severity": Severity.CRITICAL},
        {"event_type": EventType.MESSAGE_SENT, "agent_id": "a2", "severity": Severity.DEBUG},
    ]
    for n, fields in enumerate(specs):
        store.put_event(make_event(n, **fields))
    return await store.query_events(EventQuery(limit=None))


def types(found: list[Event]) -> list[EventType]:
    return [e.event_type for e in found]


async def test_query_by_type_agent_task(store: SQLiteStore, events: list[Event]) -> None:
    """F-12: event type list, agent id and task id filters, combined with AND."""
    q = store.query_events
    assert types(
        await q(EventQuery(event_types=[EventType.TASK_FAILED, EventType.AGENT_ERROR]))
    ) == [EventType.AGENT_ERROR, EventType.TASK_FAILED]
    assert await q(EventQuery(event_types=[])) == []
    assert types(await q(EventQuery(agent_id="a1"))) == [
        EventType.TASK_STARTED,
        EventType.AGENT_ERROR,
    ]
    assert types(await q(EventQuery(task_id="t1"))) == [
        EventType.TASK_ENQUEUED,
        EventType.TASK_STARTED,
    ]
    assert types(await q(EventQuery(task_id="t1", agent_id="a1"))) == [EventType.TASK_STARTED]
    assert await q(EventQuery(task_id="nope")) == []


async def test_query_by_min_severity(store: SQLiteStore, events: list[Event]) -> None:
    """F-12: ``min_severity`` keeps events at that severity or above."""
    q = store.query_events
    assert types(await q(EventQuery(min_severity=Severity.WARNING))) == [
        EventType.AGENT_ERROR,
        EventType.TASK_FAILED,
        EventType.RUNTIME_STOPPED,
    ]
    assert types(await q(EventQuery(min_severity=Severity.CRITICAL))) == [EventType.RUNTIME_STOPPED]
    assert len(await q(EventQuery(min_severity=Severity.DEBUG))) == 6


async def test_query_by_time_and_id(store: SQLiteStore, events: list[Event]) -> None:
    """F-12: ``since``/``until`` bound the timestamp (inclusive); ``after_id`` tails."""
    q = store.query_events
    assert types(await q(EventQuery(since=T0 + timedelta(seconds=4)))) == [
        EventType.RUNTIME_STOPPED,
        EventType.MESSAGE_SENT,
    ]
    assert types(await q(EventQuery(until=T0 + timedelta(seconds=1)))) == [
        EventType.TASK_ENQUEUED,
        EventType.TASK_STARTED,
    ]
    window = EventQuery(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=3))
    assert types(await q(window)) == [EventType.AGENT_ERROR, EventType.TASK_FAILED]
    naive = EventQuery(since=(T0 + timedelta(seconds=5)).replace(tzinfo=None))
    assert types(await q(naive)) == [EventType.MESSAGE_SENT]  # naive is taken as UTC
    after = events[3].event_id
    assert types(await q(EventQuery(after_id=after))) == types(events[4:])


async def test_query_limit_and_newest(store: SQLiteStore, events: list[Event]) -> None:
    """F-12: ``limit`` caps the result; ``newest`` takes the last ones, still oldest first."""
    q = store.query_events
    assert types(await q(EventQuery(limit=2))) == types(events[:2])
    assert types(await q(EventQuery(limit=2, newest=True))) == types(events[-2:])
    assert types(await q(EventQuery(limit=None, newest=True))) == types(events)
    assert types(await q(EventQuery(limit=1, newest=True, task_id="t1"))) == [
        EventType.TASK_STARTED
    ]


async def test_reads_see_unflushed_writes(store: SQLiteStore) -> None:
    """Reads commit pending writes first, so callers always read their own writes."""
    store.put_task(make_task())
    store.put_event(make_event(0))
    store.put_meta("k", 1)
    assert len(await store.load_tasks()) == 1
    assert len(await store.query_events(EventQuery())) == 1
    assert await store.get_meta("k") == 1


async def test_cli_helpers(store: SQLiteStore) -> None:
    """``count_tasks_by_status`` and ``list_tasks`` (newest first, filter, limit)."""
    for i, status in enumerate([TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.PENDING]):
        store.put_task(make_task(f"t{i}", status=status))
    assert await store.count_tasks_by_status() == {"pending": 2, "completed": 1}
    assert [t.task_id for t in await store.list_tasks(None, 10)] == ["t2", "t1", "t0"]
    assert [t.task_id for t in await store.list_tasks("pending", 1)] == ["t2"]
    assert [t.task_id for t in await store.list_tasks(TaskStatus.COMPLETED, 5)] == ["t1"]


# ----------------------------------------------------------------------------- read-only
async def test_readonly_reads_a_database_in_use(store: SQLiteStore, db_path: Path) -> None:
    """A read-only store inspects a database another store is writing, and takes no writes."""
    await store.put_task(make_task("t0", status=TaskStatus.RUNNING))
    store.put_event(make_event(0))
    await store.put_meta("k", "v")
    reader = await SQLiteStore.open_readonly(str(db_path))
    try:
        assert [t.task_id for t in await reader.load_tasks()] == ["t0"]
        assert len(await reader.query_events(EventQuery())) == 1
        assert await reader.get_meta("k") == "v"
        assert await reader.count_tasks_by_status() == {"running": 1}

        await store.put_task(make_task("t1"))  # the writer goes on; the reader sees it
        assert [t.task_id for t in await reader.list_tasks(None, 5)] == ["t1", "t0"]

        with pytest.raises(InvalidStateError, match="read-only"):
            reader.put_task(make_task("t2"))
        with pytest.raises(InvalidStateError):
            reader.put_event(make_event(1))
        with pytest.raises(InvalidStateError):
            reader.put_meta("k", 1)
    finally:
        await reader.close()
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(2,)]


async def test_readonly_missing_or_foreign_file(tmp_path: Path) -> None:
    """Read-only mode never creates a database, and rejects one that is not ours."""
    missing = tmp_path / "missing.db"
    with pytest.raises(ConfigurationError, match="does not exist"):
        await SQLiteStore.open_readonly(str(missing))
    assert not missing.exists()

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(ConfigurationError, match="not a miminions database"):
        await SQLiteStore.open_readonly(str(foreign))


# ----------------------------------------------------------------------------- lifecycle
async def test_use_after_close(store: SQLiteStore) -> None:
    """After close every call raises RuntimeNotRunningError; closing twice is fine."""
    store.put_task(make_task())
    await store.close()  # commits what was queued
    await store.close()
    with pytest.raises(RuntimeNotRunningError):
        store.put_task(make_task("t2"))
    with pytest.raises(RuntimeNotRunningError):
        store.put_event(make_event(0))
    with pytest.raises(RuntimeNotRunningError):
        await store.load_tasks()
    with pytest.raises(RuntimeNotRunningError):
        await store.open()


async def test_close_commits_queued_writes(db_path: Path) -> None:
    """F-09: ``close`` commits everything queued before it."""
    store = SQLiteStore(str(db_path))
    await store.open()
    store.put_task(make_task())
    store.put_event(make_event(0))
    await store.close()
    assert raw(db_path, "SELECT COUNT(*) FROM tasks") == [(1,)]
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(1,)]


async def test_put_before_open(db_path: Path) -> None:
    """Writing to a store that was never opened is a clear error, not a hang."""
    with pytest.raises(RuntimeNotRunningError, match="open"):
        SQLiteStore(str(db_path)).put_task(make_task())


# ----------------------------------------------------------------------------- plugin
def test_make_store_hook(tmp_path: Path) -> None:
    """The built-in hook builds a SQLite store at ``storage_path`` and yields to others."""
    path = str(tmp_path / "x.db")
    store = miminions_make_store(RuntimeConfig(storage_path=path))
    assert isinstance(store, SQLiteStore)
    assert isinstance(store, Store)
    assert store.path == path
    assert miminions_make_store.miminions_impl["trylast"] is True  # type: ignore[attr-defined]
    assert not os.path.exists(path)  # nothing is touched before open()


# ----------------------------------------------------------------------------- switch interval
def seconds(value: float) -> Any:
    """``value`` as the interpreter keeps a switch interval (whole microseconds)."""
    return pytest.approx(value, abs=1.5e-6)


@pytest.fixture
def interval() -> Iterator[float]:
    """The interpreter's switch interval before the test, restored after it; a store the
    test left open no longer holds it short."""
    before = sys.getswitchinterval()
    yield before
    SWITCH_INTERVAL._forget()
    sys.setswitchinterval(before)


async def test_open_store_shortens_the_switch_interval_until_closed(
    db_path: Path, tmp_path: Path, interval: float
) -> None:
    """While a writing store is open the GIL switch interval is at most its setting (its
    writer thread keeps pace beside a busy loop); the last close brings the old one back."""
    sys.setswitchinterval(0.005)
    first = SQLiteStore(str(db_path), switch_interval=0.001)
    second = SQLiteStore(str(tmp_path / "second.db"), switch_interval=0.0005)
    await first.open()
    assert sys.getswitchinterval() == seconds(0.001)
    await second.open()
    assert sys.getswitchinterval() == seconds(0.0005)  # the shortest asked for
    await second.close()
    assert sys.getswitchinterval() == seconds(0.001)
    await first.close()
    assert sys.getswitchinterval() == seconds(0.005)


async def test_switch_interval_is_never_lengthened_and_a_users_change_is_kept(
    db_path: Path, interval: float
) -> None:
    sys.setswitchinterval(0.0002)
    store = SQLiteStore(str(db_path), switch_interval=0.001)
    await store.open()
    assert sys.getswitchinterval() == seconds(0.0002)  # already shorter: kept
    await store.close()
    assert sys.getswitchinterval() == seconds(0.0002)

    sys.setswitchinterval(0.005)
    store = SQLiteStore(str(db_path), switch_interval=0.001)
    await store.open()
    sys.setswitchinterval(0.002)  # the application changes it meanwhile
    await store.close()
    assert sys.getswitchinterval() == seconds(0.002)  # theirs, not the old one


async def test_switch_interval_can_be_left_alone_or_set_by_plugin_options(
    tmp_path: Path, interval: float
) -> None:
    sys.setswitchinterval(0.005)
    path = str(tmp_path / "x.db")
    untouched = miminions_make_store(
        RuntimeConfig(
            storage_path=path, plugin_options={"sqlite_store": {"switch_interval_seconds": None}}
        )
    )
    assert untouched.switch_interval is None
    await untouched.open()
    assert sys.getswitchinterval() == seconds(0.005)
    await untouched.close()
    assert miminions_make_store(RuntimeConfig(storage_path=path)).switch_interval == 0.0005
    readonly = await SQLiteStore.open_readonly(path)  # no writer thread to speed up
    assert sys.getswitchinterval() == seconds(0.005)
    await readonly.close()
    with pytest.raises(ConfigurationError, match="switch_interval_seconds"):
        miminions_make_store(
            RuntimeConfig(
                storage_path=path, plugin_options={"sqlite_store": {"switch_interval_seconds": 0}}
            )
        )
    with pytest.raises(ConfigurationError, match="switch_interval"):
        SQLiteStore(path, switch_interval=-1.0)


@pytest.mark.parametrize(
    "migrations",
    [
        None,
        # Rails and dbmate, then golang-migrate: their own schema_migrations tables
        'CREATE TABLE "schema_migrations" ("version" varchar NOT NULL PRIMARY KEY)',
        "CREATE TABLE schema_migrations (version uint64, dirty bool)",
    ],
    ids=["plain", "rails", "golang-migrate"],
)
async def test_a_database_of_another_application_is_refused_unchanged(
    tmp_path: Path, migrations: str | None
) -> None:
    """storage_path naming another application's SQLite database (tables, no miminions
    schema, whatever its migrations table is called) is refused with an error saying so,
    and the file is left as it was: no miminions tables beside its own, its journal mode
    kept (they were added silently; one with a schema_migrations table was switched to
    WAL and refused with a misleading error)."""
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
        if migrations is not None:
            conn.execute(migrations)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (20240101000000)")
        conn.commit()
    with pytest.raises(ConfigurationError, match=r"not a miminions database.*users"):
        async with AgentRuntime(str(path)):
            pass
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
        ).fetchall()
        assert tables == ([] if migrations is None else [("schema_migrations",)]) + [("users",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("SELECT name FROM users").fetchall() == [("ada",)]
