"""The SQLite store's committer cancelled from outside (code that cancels every task of the
loop, as a shutdown does) at each point of its work: writers get a StoreError, nothing hangs,
and what was not stored is stored by the next commit, close() included."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from miminions.plugins import sqlite_batch
from miminions.plugins.sqlite_batch import StoreError
from miminions.plugins.sqlite_store import SQLiteStore
from tests.plugins.test_sqlite_store import (
    WAIT,
    block_commits,
    make_event,
    make_task,
    patch_statements,
    raw,
)
from tests.support.cancelling import cancel_everything


async def open_store(path: Path, **kw: Any) -> SQLiteStore:
    s = SQLiteStore(str(path), **kw)
    await s.open()
    return s


async def _await(committed: Any) -> None:
    await committed


async def test_a_committer_cancelled_mid_commit_does_not_stop_later_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while its commit is in the database thread, the committer must not leave
    the batch collected meanwhile without one: its writes, and later puts, are committed."""
    store = await open_store(tmp_path / "orphan.db")
    in_flight, carry_on = block_commits(monkeypatch)
    first = store.put_task(make_task("a"))
    assert await asyncio.to_thread(in_flight.wait, WAIT)
    second = store.put_task(make_task("b"))  # queued while the first commit runs
    committer = store._committer
    assert committer is not None
    committer.cancel()
    carry_on.set()
    with pytest.raises(StoreError, match="commit was cancelled"):
        await first
    monkeypatch.undo()
    try:
        with pytest.raises(StoreError, match="commit was cancelled"):
            await asyncio.wait_for(_await(second), WAIT)  # its batch had no committer left
        third = store.put_task(make_task("c"))
        await asyncio.wait_for(_await(third), WAIT)  # and takes b along
        assert [r[0] for r in raw(store.path, "SELECT task_id FROM tasks ORDER BY seq")] == [
            "a",
            "b",
            "c",
        ]
    finally:
        await asyncio.wait_for(store.close(), WAIT)


async def test_close_does_not_hang_when_the_committer_is_cancelled_mid_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() waits for the batch collected during a commit; with the committer cancelled
    then (a loop-wide cancel during shutdown) it still ends, having stored it."""
    db = tmp_path / "hang.db"
    store = await open_store(db)
    in_flight, carry_on = block_commits(monkeypatch)
    store.put_task(make_task("a"))
    assert await asyncio.to_thread(in_flight.wait, WAIT)
    store.put_task(make_task("b"))  # the next batch
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)  # close() waits for that batch now
    assert not closing.done()
    committer = store._committer
    assert committer is not None
    committer.cancel()
    carry_on.set()
    await asyncio.wait_for(closing, WAIT)
    assert raw(db, "SELECT task_id FROM tasks ORDER BY seq") == [("a",), ("b",)]


async def test_close_while_the_committer_is_cancelled_stores_or_reports_the_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() commits everything queued or raises StoreError naming how many writes were not
    stored, also when its committer is cancelled while close() waits (here: during the pause
    before retrying a failed commit); it is never cancelled itself."""
    db = tmp_path / "retry.db"
    store = await open_store(db, retry_delay=30.0, max_retry_delay=30.0)
    failed = threading.Event()

    def execute(database: sqlite3.Connection, sql: str, params: Any) -> None:
        failed.set()
        raise sqlite3.OperationalError("database is locked")

    patch_statements(monkeypatch, execute)
    store.put_task(make_task("a"))
    store.put_event(make_event(0))
    assert await asyncio.to_thread(failed.wait, WAIT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not (store._committing is None and store._batch is not None):  # retry pause
        assert loop.time() < deadline, "the commit did not fail"
        await asyncio.sleep(0.001)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0)  # close() waits for the retry now
    assert not closing.done()
    monkeypatch.undo()  # the database works again
    committer = store._committer
    assert committer is not None
    committer.cancel()
    done, _ = await asyncio.wait([closing], timeout=WAIT)
    assert done
    error = asyncio.CancelledError() if closing.cancelled() else closing.exception()
    stored = raw(db, "SELECT task_id FROM tasks")
    events = raw(db, "SELECT COUNT(*) FROM events")[0][0]
    assert error is None, f"close() ended with {error!r}"
    assert stored == [("a",)]
    assert events == 1


async def test_close_while_a_committer_it_started_is_cancelled_before_its_first_step(
    tmp_path: Path,
) -> None:
    """The committer close() starts for writes a cancelled commit left queued, cancelled
    before it runs: close() says it could not store them (a StoreError naming how many),
    it is not cancelled itself."""
    db = tmp_path / "first.db"
    store = await open_store(db)
    store.put_task(make_task("a"))
    committer = store._committer
    assert committer is not None
    committer.cancel()
    await asyncio.wait([committer], timeout=WAIT)
    await asyncio.sleep(0)  # _committer_ended ran: the write stays queued
    assert store._batch is None
    assert store._queued() == 1

    cancelled: list[asyncio.Task[None]] = []

    def cancel_the_new_committer() -> None:  # a loop-wide cancel, in the next iteration
        if store._committer is not None:
            store._committer.cancel()
            cancelled.append(store._committer)

    closing = asyncio.ensure_future(store.close())
    asyncio.get_running_loop().call_soon(cancel_the_new_committer)
    done, _ = await asyncio.wait([closing], timeout=WAIT)
    assert done
    assert cancelled
    assert not closing.cancelled()  # a StoreError naming the write it could not store
    error = closing.exception()
    assert isinstance(error, StoreError), error
    assert "1 queued writes could not be stored" in str(error)


async def test_a_cancelled_row_by_row_commit_that_failed_keeps_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch with a refused row is written row by row and committed on its own trip;
    cancelled there while that COMMIT fails, nothing was stored: the events stay queued
    with the rest and the next commit stores them."""
    db = tmp_path / "row-by-row.db"
    store = await open_store(db)
    await store.put_task(make_task("first", idempotency_key="k"))
    in_flight, carry_on = threading.Event(), threading.Event()

    def failing_commit(conn: Any, progress: Any) -> None:  # in the database thread
        in_flight.set()
        carry_on.wait(WAIT)
        progress.committed = False
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(sqlite_batch, "_commit", failing_commit)
    neighbour = store.put_task(make_task("neighbour"))
    store.put_task(make_task("second", idempotency_key="k"))  # a row error: row by row
    store.put_event(make_event(0, details={"n": 0}))
    assert await asyncio.to_thread(in_flight.wait, WAIT)
    committer = store._committer
    assert committer is not None
    committer.cancel()  # a loop-wide cancel, say
    carry_on.set()
    with pytest.raises(StoreError, match="the writes stay queued"):
        await asyncio.wait_for(_await(neighbour), WAIT)
    monkeypatch.undo()
    await asyncio.wait_for(store.flush(), WAIT)
    await asyncio.wait_for(store.close(), WAIT)
    assert ("neighbour",) in raw(db, "SELECT task_id FROM tasks")
    assert raw(db, "SELECT details FROM events") == [('{"n":0}',)]


def _commit_tasks() -> list[asyncio.Task[Any]]:
    return [
        t for t in asyncio.all_tasks() if t.get_name() == "miminions-sqlite-commit" and not t.done()
    ]


async def test_a_write_while_every_task_is_cancelled_starts_no_commit_task(
    tmp_path: Path,
) -> None:
    """While the program cancels every task of its loop (asyncio.run ending), a commit task
    a write started would be left pending as the loop closes ("Task was destroyed but it
    is pending!", and the database thread's answer landing on a closed loop): none is
    started. A write whose commit is awaited is committed; others by the next flush."""
    store = await open_store(tmp_path / "ending.db")
    try:
        await asyncio.wait(cancel_everything())
        first = store.put_task(make_task("a"))
        assert _commit_tasks() == []
        await asyncio.wait_for(_await(first), WAIT)
        store.put_event(make_event(1))
        await asyncio.wait_for(store.flush(), WAIT)
        assert [r[0] for r in raw(store.path, "SELECT task_id FROM tasks")] == ["a"]
        assert raw(store.path, "SELECT count(*) FROM events") == [(1,)]
    finally:
        await store.close()


def test_a_store_opened_on_one_loop_closes_on_another(tmp_path: Path) -> None:
    """The store's loop-end canary belongs to the loop that opened it: close() on another
    loop waited for it, and that loop never runs again, so close() hung."""
    store = SQLiteStore(str(tmp_path / "two-loops.db"))
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(store.open())
        store_event = make_event(1)

        async def write_and_close_elsewhere() -> None:
            store.put_event(store_event)
            await asyncio.wait_for(store.close(), WAIT)

        asyncio.run(write_and_close_elsewhere())
        assert raw(store.path, "SELECT count(*) FROM events") == [(1,)]
    finally:
        pending = asyncio.all_tasks(first)
        for task in pending:
            task.cancel()
        if pending:
            first.run_until_complete(asyncio.wait(pending))
        first.close()
