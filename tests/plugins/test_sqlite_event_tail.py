"""The SQLite store answers event queries over its newest events from memory
(``miminions.plugins.sqlite_event_tail``): the answers must be exactly those the file gives."""

from __future__ import annotations

import asyncio
import copy
import pickle
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from miminions import AgentRuntime, TaskRequest
from miminions.kernel.errors import ConfigurationError
from miminions.kernel.interfaces import EventQuery
from miminions.kernel.models import Event, EventType, RuntimeConfig, Severity
from miminions.plugins import sqlite_store
from miminions.plugins.sqlite_store import SQLiteStore, miminions_make_store
from tests.plugins.test_sqlite_store import T0, failing_commits, make_event
from tests.support.waiting import wait_until

TYPES = [EventType.TASK_ENQUEUED, EventType.TASK_STARTED, EventType.TASK_COMPLETED]
SEVERITIES = list(Severity)


def nth_event(n: int) -> Any:
    """Event ``n`` of a varied log: types, severities, owners and details cycle, and the
    clock steps back now and then (timestamps are not sorted)."""
    return make_event(
        n - 3 * (n % 7 == 0),
        event_type=TYPES[n % 3],
        severity=SEVERITIES[n % len(SEVERITIES)],
        agent_id=f"a{n % 4}" if n % 5 else None,
        task_id=f"t{n % 9}" if n % 2 else None,
        details={"n": n, "nested": {"k": [n]}} if n % 3 else {},
    )


async def put_events(store: SQLiteStore, first: int, count: int, per_commit: int) -> None:
    """Put events ``first`` .. ``first + count - 1``, committing every ``per_commit``."""
    for n in range(first, first + count):
        store.put_event(nth_event(n))
        if (n - first + 1) % per_commit == 0:
            await store.flush()
    await store.flush()


def random_query(rng: random.Random, newest_id: int) -> EventQuery:
    """A query with a random mix of every filter the tail answers."""
    fields: dict[str, Any] = {"limit": rng.choice([None, 1, 2, 5, 17, 100, 10**30])}
    if rng.random() < 0.5:
        fields["newest"] = True
    if rng.random() < 0.3:
        fields["event_types"] = rng.sample(TYPES, rng.randint(1, 2))
    if rng.random() < 0.3:
        fields["min_severity"] = rng.choice(SEVERITIES)
    if rng.random() < 0.3:
        fields["since"] = T0 + timedelta(seconds=rng.randint(-5, 60))
    if rng.random() < 0.3:
        fields["until"] = T0 + timedelta(seconds=rng.randint(0, 70))
    if rng.random() < 0.3:
        fields["after_id"] = rng.randint(-1, newest_id + 1)
    return EventQuery(**fields)


def dumped(events: list[Event]) -> list[dict[str, Any]]:
    return [event.model_dump() for event in events]


async def from_the_file(path: Path, query: EventQuery) -> list[Event]:
    """The answer of a store that keeps no events in memory (a reader of the same file)."""
    reader = await SQLiteStore.open_readonly(str(path))
    try:
        return await reader.query_events(query)
    finally:
        await reader.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tail.db"


async def open_store(path: Path, event_cache_size: int) -> SQLiteStore:
    store = SQLiteStore(str(path), event_cache_size=event_cache_size)
    await store.open()
    return store


@pytest.mark.parametrize("capacity", [1, 7, 40, 1000])
async def test_answers_match_the_file_whatever_the_tail_holds(db_path: Path, capacity: int) -> None:
    """Events from an earlier run, events pushed out of the tail and events in it: every
    query gives what the file gives, in the same order."""
    earlier = await open_store(db_path, capacity)
    await put_events(earlier, 0, 12, per_commit=5)
    await earlier.close()
    store = await open_store(db_path, capacity)
    try:
        await put_events(store, 12, 48, per_commit=7)
        rng = random.Random(capacity)
        for _ in range(300):
            query = random_query(rng, newest_id=60)
            assert dumped(await store.query_events(query)) == dumped(
                await from_the_file(db_path, query)
            ), query
            task_query = query.model_copy(update={"task_id": "t3"})
            assert dumped(await store.query_events(task_query)) == dumped(
                await from_the_file(db_path, task_query)
            )
    finally:
        await store.close()


async def test_a_new_database_is_answered_from_memory_alone(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store(db_path, 100)
    try:
        await put_events(store, 0, 30, per_commit=10)
        conn = store._conn
        assert conn is not None
        reads: list[str] = []
        real = conn.execute_fetchall

        async def counted(sql: str, params: Any = None) -> Any:
            reads.append(sql)
            return await real(sql, params)

        monkeypatch.setattr(conn, "execute_fetchall", counted)
        everything = await store.query_events(EventQuery(limit=None))
        assert [e.event_id for e in everything] == list(range(1, 31))
        assert reads == []
        await store.query_events(EventQuery(task_id="t1", limit=None))
        assert len(reads) == 1  # by task: the file's index
    finally:
        await store.close()


async def test_event_ids_continue_after_a_restart_and_are_never_given_twice(
    db_path: Path,
) -> None:
    """The store numbers events itself: after a restart it goes on from the largest id the
    file ever held, also when the newest events were deleted since."""
    store = await open_store(db_path, 10)
    await put_events(store, 0, 5, per_commit=5)
    await store.close()
    raw_conn = sqlite3.connect(db_path)
    with raw_conn:
        raw_conn.execute("DELETE FROM events WHERE event_id > 3")
    raw_conn.close()
    store = await open_store(db_path, 10)
    try:
        store.put_event(nth_event(99))
        await store.flush()
        ids = [e.event_id for e in await store.query_events(EventQuery(limit=None))]
        assert ids == [1, 2, 3, 6]
    finally:
        await store.close()


async def test_shared_events_cannot_be_changed_by_a_caller(db_path: Path) -> None:
    """The tail hands the same event objects to every query: they refuse changes, and a
    copy is an ordinary dict to change at will."""
    store = await open_store(db_path, 100)
    try:
        store.put_event(nth_event(1))
        first = (await store.query_events(EventQuery()))[0]
        with pytest.raises(PydanticValidationError, match="frozen"):
            first.task_id = "other"  # type: ignore[misc]  # frozen on purpose: it must refuse
        with pytest.raises(TypeError, match="read-only"):
            first.details["n"] = 2
        change: Callable[[dict[str, Any]], object]
        for change in (
            lambda d: d.update(n=2),
            lambda d: d.pop("n"),
            lambda d: d.clear(),
            lambda d: d.setdefault("x", 1),
            lambda d: d.popitem(),
            lambda d: d.__delitem__("n"),
            lambda d: d.__ior__({"n": 2}),
        ):
            with pytest.raises(TypeError, match="read-only"):
                change(first.details)
        for copied in (
            dict(first.details),
            first.details.copy(),
            copy.copy(first.details),
            copy.deepcopy(first.details),
            pickle.loads(pickle.dumps(first.details)),
            first.model_dump()["details"],
            copy.deepcopy(first).details,
        ):
            assert type(copied) is dict
            copied["n"] = 2
        again = (await store.query_events(EventQuery()))[0]
        assert again.details == {"n": 1, "nested": {"k": [1]}}
        assert again.task_id == "t1"
        assert Event.model_validate_json(again.model_dump_json()) == again
    finally:
        await store.close()


@pytest.mark.parametrize("cache", [0, 100])
async def test_what_is_inside_the_details_is_read_only_too(db_path: Path, cache: int) -> None:
    """A list or dict inside an event's details refuses changes as the details do (a
    shallow copy keeps them), whether the event came from memory or from the file; a deep
    copy is ordinary all the way down, and later answers are what the file holds."""
    store = await open_store(db_path, cache)
    try:
        store.put_event(make_event(1, details={"items": [1, {"k": [2]}], "sub": {"a": 1}}))
        first = (await store.query_events(EventQuery()))[0]
        shallow = dict(first.details)
        change: Callable[[], object]
        for change in (
            lambda: shallow["items"].append(3),
            lambda: shallow["items"][1]["k"].extend([4]),
            lambda: shallow["sub"].update(b=2),
            lambda: first.details["items"].__setitem__(0, 9),
            lambda: first.details["items"].sort(),
        ):
            with pytest.raises(TypeError, match="read-only"):
                change()
        for deep in (copy.deepcopy(first.details), first.model_dump()["details"]):
            deep["items"].append(3)
            deep["items"][1]["k"].append(4)
            deep["sub"]["b"] = 2
            assert type(deep["items"]) is list
            assert type(deep["sub"]) is dict
        again = (await store.query_events(EventQuery()))[0]
        assert again.details == {"items": [1, {"k": [2]}], "sub": {"a": 1}}
        assert again.model_dump_json() == first.model_dump_json()
    finally:
        await store.close()


async def test_deeply_nested_details_are_frozen_all_the_way_down(db_path: Path) -> None:
    deep: Any = "bottom"
    for _ in range(400):
        deep = [deep]
    store = await open_store(db_path, 10)
    try:
        store.put_event(make_event(1, details={"deep": deep}))
        found = (await store.query_events(EventQuery()))[0].details["deep"]
        for _ in range(399):
            found = found[0]
        assert found == ["bottom"]
        with pytest.raises(TypeError, match="read-only"):
            found.append(1)
        event = (await store.query_events(EventQuery()))[0]
        # copies are made without recursion: as deep as before the details were frozen
        assert pickle.loads(pickle.dumps(event)).details == {"deep": deep}
        assert copy.deepcopy(event.details) == {"deep": deep}
        assert type(copy.deepcopy(event).details["deep"][0]) is list
    finally:
        await store.close()


async def test_copies_of_events_without_details_do_not_share_one_dict(db_path: Path) -> None:
    store = await open_store(db_path, 100)
    try:
        store.put_event(make_event(0))
        store.put_event(make_event(1))
        events = await store.query_events(EventQuery())
        for copies in (copy.deepcopy(events), pickle.loads(pickle.dumps(events))):
            copies[0].details["note"] = "about the first event only"
            assert copies[1].details == {}
    finally:
        await store.close()


def test_a_deep_copy_of_read_only_details_holding_a_cycle_ends() -> None:
    """Details built by hand may hold a cycle or share a part: copied once each, as
    ``copy.deepcopy`` does (in a child process with capped memory, in case it does not)."""
    code = (
        "import copy, resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 29, 1 << 29))\n"
        "from miminions.kernel.models import ReadOnlyDict, ReadOnlyList\n"
        "inner = {}\n"
        "inner['me'] = inner\n"
        "shared = [1]\n"
        "copied = copy.deepcopy(ReadOnlyDict(x=inner, a=ReadOnlyList([shared, shared]), s={2}))\n"
        "assert copied['x']['me'] is copied['x']\n"
        "assert copied['a'][0] is copied['a'][1] and copied['a'][0] is not shared\n"
        "assert type(copied['a']) is list and copied['s'] == {2}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]


async def test_events_read_from_the_file_are_read_only_too(db_path: Path) -> None:
    store = await open_store(db_path, 0)
    try:
        store.put_event(nth_event(1))
        store.put_event(nth_event(3))
        for event in await store.query_events(EventQuery()):
            with pytest.raises(TypeError, match="read-only"):
                event.details["n"] = 0
    finally:
        await store.close()


async def test_a_failed_commit_keeps_the_answers_right(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events of a commit that failed and was retried are in the tail once, in order."""
    store = SQLiteStore(str(db_path), commit_attempts=3, retry_delay=0, event_cache_size=5)
    await store.open()
    try:
        await put_events(store, 0, 3, per_commit=3)
        tried = failing_commits(monkeypatch, store, 1)
        await put_events(store, 3, 4, per_commit=4)
        await put_events(store, 7, 2, per_commit=2)
        everything = await store.query_events(EventQuery(limit=None))
        assert tried[0] == 3  # the failed commit, its retry, the next one
        assert [e.event_id for e in everything] == list(range(1, 10))
        assert dumped(everything) == dumped(await from_the_file(db_path, EventQuery(limit=None)))
    finally:
        await store.close()


async def test_a_refused_event_row_leaves_the_answers_right(db_path: Path) -> None:
    """A commit that had to leave a row out cannot tell the tail which: the tail starts
    again, and the file answers for what came before."""
    store = await open_store(db_path, 100)
    try:
        await put_events(store, 0, 3, per_commit=3)
        store.put_event(nth_event(3))
        store.put_event(nth_event(4)._replace(agent_id=("not", "bindable")))
        store.put_event(nth_event(5))
        await store.flush()
        await put_events(store, 6, 2, per_commit=2)
        query = EventQuery(limit=None)
        ids = [e.event_id for e in await store.query_events(query)]
        assert ids == [1, 2, 3, 4, 6, 7, 8]  # the row of event 5 was refused
        assert dumped(await store.query_events(query)) == dumped(
            await from_the_file(db_path, query)
        )
        newest = await store.query_events(EventQuery(newest=True, limit=3))
        assert [e.event_id for e in newest] == [6, 7, 8]
    finally:
        await store.close()


async def test_a_query_during_commits_sees_each_event_once(db_path: Path) -> None:
    """A query that reads the file for older events while new commits push events out of
    the tail returns each event once and none missing up to where it started."""
    store = await open_store(db_path, 4)
    try:
        await put_events(store, 0, 20, per_commit=3)

        async def keep_writing() -> None:
            for n in range(20, 60):
                store.put_event(nth_event(n))
                await asyncio.sleep(0)

        writer = asyncio.create_task(keep_writing())
        answers = []
        while not writer.done():
            answers.append(await store.query_events(EventQuery(limit=None)))
        await writer
        for answer in answers:
            ids = [e.event_id for e in answer]
            assert ids == list(range(1, len(ids) + 1))
            assert len(ids) >= 20
    finally:
        await store.close()


async def test_commits_while_the_file_is_read_change_nothing_in_the_answer(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events committed while the older part of an answer is read from the file (pushing
    the tail's oldest out) are neither lost from the answer nor in it twice."""
    store = await open_store(db_path, 4)
    try:
        await put_events(store, 0, 10, per_commit=10)
        conn = store._conn
        assert conn is not None
        real = conn.execute_fetchall
        reading, go_on = asyncio.Event(), asyncio.Event()

        async def slow_read(sql: str, params: Any = None) -> Any:
            reading.set()
            await go_on.wait()
            return await real(sql, params)

        monkeypatch.setattr(conn, "execute_fetchall", slow_read)
        for newest in (False, True):
            reading.clear()
            go_on.clear()
            answer = asyncio.create_task(store.query_events(EventQuery(limit=None, newest=newest)))
            await asyncio.wait_for(reading.wait(), 10)
            before = store._next_event_id
            await put_events(store, before, 6, per_commit=2)  # the tail holds 4
            go_on.set()
            ids = [e.event_id for e in await asyncio.wait_for(answer, 10)]
            assert ids == list(range(1, before))
    finally:
        await store.close()


async def test_the_cache_size_is_checked_and_zero_turns_it_off(db_path: Path) -> None:
    for bad in (-1, 1.5, "10", True, None):
        with pytest.raises(ConfigurationError, match="event_cache_size"):
            SQLiteStore(str(db_path), event_cache_size=bad)  # type: ignore[arg-type]
    store = await open_store(db_path, 0)
    try:
        await put_events(store, 0, 5, per_commit=2)
        assert store._tail is None
        assert len(await store.query_events(EventQuery(limit=None))) == 5
    finally:
        await store.close()


async def test_a_cache_size_past_what_memory_can_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="event_cache_size"):
        SQLiteStore(str(tmp_path / "huge.db"), event_cache_size=sys.maxsize + 1)
    config = RuntimeConfig(
        storage_path=str(tmp_path / "rt.db"),
        plugin_options={"sqlite_store": {"event_cache_size": 10**19}},
    )
    with pytest.raises(ConfigurationError, match="event_cache_size"):
        async with AgentRuntime(config=config):
            pass


async def test_an_open_that_fails_after_connecting_closes_the_connection(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure once the database is connected (here: building the tail) leaves no
    connection, thread or lock behind."""

    def refuse(*args: Any) -> None:
        raise MemoryError("no room for the tail")

    monkeypatch.setattr(sqlite_store, "EventTail", refuse)
    before = set(threading.enumerate())
    store = SQLiteStore(str(db_path))
    with pytest.raises(MemoryError):
        await store.open()

    def new_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    # (the connection's thread ends just after its close, which it is not joined by)
    await wait_until(lambda: not new_threads(), "the connection's thread ends")
    monkeypatch.undo()
    again = await open_store(db_path, 10)  # the lock was let go
    await again.close()


async def test_the_details_of_a_queried_event_are_taken_as_input_and_config(
    tmp_path: Path,
) -> None:
    """Details are a dict subclass: anything that takes a dict takes them (as a copy)."""

    async def work(task: Any, context: Any) -> int:
        return 1

    async with AgentRuntime(storage_path=str(tmp_path / "reuse.db")) as rt:
        agent = await rt.register_agent("worker", work, isolation="inline", config={"m": [1]})
        await rt.start_agent(agent)
        first = await rt.submit_task("job", input_data={"x": [1]})
        await rt.wait_for_tasks([first])
        enqueued = (await rt.query_events(event_type="task_enqueued"))[0]
        registered = (await rt.query_events(event_type="agent_registered"))[0]
        again = await rt.submit_task("again", input_data=enqueued.details)
        assert rt.get_task_status(again).input_data == dict(enqueued.details)
        batch = await rt.submit_tasks([TaskRequest(name="more", input_data=enqueued.details)])
        assert rt.get_task_status(batch[0]).input_data == dict(enqueued.details)
        await rt.register_agent("second", work, isolation="inline", config=registered.details)
        await rt.send_message(agent, "note", registered.details)


def test_plugin_options_set_the_cache_size(tmp_path: Path) -> None:
    config = RuntimeConfig(
        storage_path=str(tmp_path / "x.db"),
        plugin_options={"sqlite_store": {"event_cache_size": 3}},
    )
    assert miminions_make_store(config).event_cache_size == 3
    for bad in (-1, True, "10", 2.0):
        with pytest.raises(ConfigurationError, match="event_cache_size"):
            miminions_make_store(
                RuntimeConfig(plugin_options={"sqlite_store": {"event_cache_size": bad}})
            )


async def test_runtime_queries_come_from_memory_and_match_the_file(tmp_path: Path) -> None:
    """Through the public API: a run's events, queried every way the CLI and the docs do."""
    path = tmp_path / "run.db"

    async def work(task: Any, context: Any) -> int:
        return 1

    async with AgentRuntime(storage_path=str(path)) as rt:
        agent = await rt.register_agent("worker", work, isolation="inline")
        await rt.start_agent(agent)
        ids = await rt.submit_tasks([TaskRequest(name="job") for _ in range(20)])
        await rt.wait_for_tasks(ids)
        for filters in (
            {"limit": None},
            {"newest": True, "limit": 5},
            {"event_type": "task_completed", "limit": None},
            {"severity": "info", "limit": None},
            {"task_id": ids[3], "limit": None},
        ):
            found = await rt.query_events(**filters)
            assert found
            query = EventQuery(
                limit=filters.get("limit", 100),
                newest=filters.get("newest", False),
                event_types=[filters["event_type"]] if "event_type" in filters else None,
                min_severity=filters.get("severity"),
                task_id=filters.get("task_id"),
            )
            assert dumped(found) == dumped(await from_the_file(path, query)), filters
