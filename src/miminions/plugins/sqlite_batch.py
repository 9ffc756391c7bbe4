"""Group-commit building blocks of the SQLite store: batches, their waiters, row errors.

A :class:`Batch` is the set of writes that share one commit; :class:`Committed` is what a
``put_*`` returns. Errors are sorted here into row errors (the data of one row cannot be
stored: only that write fails) and operational errors (the database failed: retry).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Generator
from itertools import chain
from typing import Any, TypeVar

import aiosqlite

from miminions.kernel.errors import AlreadyExistsError, MiminionsError, ValidationError
from miminions.plugins import sqlite_schema as schema

logger = logging.getLogger("miminions.plugins.sqlite_store")

_T = TypeVar("_T")

# Errors caused by the data of a row, not by the database: they reject that row's write only.
# (sqlite3 raises ProgrammingError, InterfaceError on older versions, for a value of a type it
# cannot bind, OverflowError for an int beyond 64 bits, DataError for a value too big.)
ROW_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    OverflowError,
    ValueError,
    TypeError,
)
NO_REJECTIONS: dict[tuple[str, str], BaseException] = {}  # shared, never written to


class StoreError(MiminionsError):
    """Queued writes could not be committed; they stay queued and a later commit retries them."""


def read_only(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's refusal to write a database this process may only read."""
    return str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_READONLY")


def retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is an operational failure of the database, worth retrying the commit
    (a database that became read-only for this process is not: no retry can write it)."""
    if read_only(exc):
        return False
    return isinstance(exc, (sqlite3.DatabaseError, OSError)) and not isinstance(exc, ROW_ERRORS)


def rejection(kind: str, key: Any, exc: BaseException) -> MiminionsError:
    """The error a write gets when its row could not be stored because of its data."""
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc):
        return AlreadyExistsError(f"{kind} {key!r} conflicts with a stored one: {exc}")
    return ValidationError(f"{kind} {key!r} cannot be stored: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- statements
def encode_rows(
    kind: str,
    pending: dict[str, _T],
    to_row: Callable[[_T], schema.Row],
    rejected: dict[tuple[str, str], BaseException],
) -> list[schema.Row]:
    """Serialize a pending dict; a value that cannot be encoded rejects only its own write."""
    try:
        return [to_row(item) for item in pending.values()]
    except Exception:  # find the culprits one by one; the fast path has no per-row try
        rows = []
        for key, item in pending.items():
            try:
                rows.append(to_row(item))
            except Exception as exc:
                logger.error("not storing %s %r: %s", kind, key, exc)
                error = ValidationError(f"{kind} {key!r} cannot be stored as JSON: {exc}")
                rejected[(kind, key)] = error
        return rows


def plan_statements(write: schema.BulkWrite, rows: list[schema.Row]) -> list[tuple[str, list[Any]]]:
    """The ``(sql, parameters)`` statements that write ``rows``, many rows per statement."""
    return [
        (write.statements[size], list(chain.from_iterable(rows[start : start + size])))
        for start, size in write.plan(len(rows))
    ]


class CommitProgress:
    """How far a commit got: what its caller needs to know when it was cancelled on the way.

    ``handed_over``: the COMMIT was given to the database thread (or will be: it goes with
    the statements), so it may have been made. ``committed``: whether it was made, once the
    database thread knows (set there); None while that is not known, or never known (with
    an aiosqlite that cannot run our function in its thread). The database thread runs its
    work in order, so once anything queued after the commit's trip (the caller's rollback)
    is done, a ``committed`` still None means the trip never said. ``row_by_row``: the
    batch was written row by row (some rows may have been left out).
    """

    __slots__ = ("committed", "handed_over", "row_by_row")

    def __init__(self) -> None:
        self.handed_over = False
        self.committed: bool | None = None
        self.row_by_row = False


async def execute_and_commit(
    conn: aiosqlite.Connection,
    statements: list[tuple[str, list[Any]]],
    progress: CommitProgress,
) -> BaseException | None:
    """Run ``statements`` in order and commit them; return the error of the first that
    fails (then nothing is committed, and the caller rolls the transaction back), or None
    once committed. ``progress`` says how far it got (see :class:`CommitProgress`).

    Everything goes to the database thread in one trip. Each trip's answer wakes the event
    loop, and for the few rows a quiet runtime commits at a time that wake-up (the loop's
    turn, the future, a task per statement) cost the loop more than SQLite's own work: one
    trip instead of one per statement and another for the COMMIT took about a fifth off the
    loop's time per task when ten agents ran 10 ms tasks (docs/benchmarks.md, P-05). It uses
    aiosqlite's ``_execute`` (how each of its methods reaches its thread); with an aiosqlite
    that has none, the statements and the COMMIT take a trip each.
    """
    if not runs_functions(conn):
        error = await _execute_each(conn, statements)
        if error is None:
            await commit(conn, progress)
        return error
    progress.handed_over = True
    run_in_thread: Callable[..., Awaitable[BaseException | None]] = conn._execute
    return await run_in_thread(_execute_and_commit, conn, statements, progress)


async def commit(conn: aiosqlite.Connection, progress: CommitProgress) -> None:
    """COMMIT the open transaction, telling ``progress`` whether it was made (see
    :func:`execute_and_commit`)."""
    progress.handed_over, progress.committed = True, None
    if not runs_functions(conn):
        await conn.commit()
        progress.committed = True
        return
    run_in_thread: Callable[..., Awaitable[None]] = conn._execute
    await run_in_thread(_commit, conn, progress)


def _commit(conn: aiosqlite.Connection, progress: CommitProgress) -> None:
    """:func:`commit` in the database thread."""
    try:
        conn._conn.commit()
    except BaseException:
        progress.committed = False
        raise
    progress.committed = True


def runs_functions(conn: aiosqlite.Connection) -> bool:
    """Whether ``conn`` can run a function of ours in its thread (``_execute``) on the
    ``sqlite3`` connection it keeps there (``_conn``), as aiosqlite 0.17 to 0.22 can."""
    return callable(getattr(conn, "_execute", None)) and isinstance(
        getattr(type(conn), "_conn", None), property
    )


def _execute_and_commit(
    conn: aiosqlite.Connection, statements: list[tuple[str, list[Any]]], progress: CommitProgress
) -> BaseException | None:
    """:func:`execute_and_commit` in the database thread."""
    database: sqlite3.Connection = conn._conn
    for sql, params in statements:
        try:
            database.execute(sql, params)
        except BaseException as exc:
            progress.committed = False
            if isinstance(exc, Exception):  # the caller sorts row errors from failures
                return exc
            raise
    _commit(conn, progress)
    return None


async def _execute_each(
    conn: aiosqlite.Connection, statements: list[tuple[str, list[Any]]]
) -> BaseException | None:
    """Run ``statements`` in order, a trip each, and return the first error, or None.

    All are handed to the aiosqlite thread at once, so it runs them back to back instead of
    waiting for the event loop between them; aiosqlite queues a statement in its task's
    first step, onto a FIFO its thread drains, so they run in list order. A statement after
    a failed one still runs; the caller rolls the transaction back, so that is harmless.
    """
    if not statements:
        return None
    results = await asyncio.gather(
        *(conn.execute(sql, params) for sql, params in statements), return_exceptions=True
    )
    return next((r for r in results if isinstance(r, BaseException)), None)


# ----------------------------------------------------------------------------- batching
class Batch:
    """Writes that share one commit: who waits for it, how it ended, per-write rejections.

    Every waiter gets its own future, resolved by :meth:`settle`, so a caller that cancels
    its wait (``asyncio.wait_for``) cancels only that future, never the commit everybody
    else waits for. Awaiting a batch waits for its commit and raises the commit's error;
    it first calls ``on_wait`` (the store makes sure a committer is on it).
    """

    __slots__ = ("done", "error", "loop", "on_wait", "rejected", "waiters")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_wait: Callable[[], None] | None = None
    ) -> None:
        self.loop = loop
        self.on_wait = on_wait
        self.done = False
        self.error: BaseException | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.rejected = NO_REJECTIONS

    def settle(
        self,
        error: BaseException | None = None,
        rejected: dict[tuple[str, str], BaseException] | None = None,
    ) -> None:
        """Record the outcome of the commit and wake every waiter with it.

        A commit cancelled from outside (``error`` a CancelledError) gives its waiters a
        :class:`StoreError`: they were not cancelled themselves, and code that stops on an
        error (``close`` making its final attempt) must see one rather than a cancellation.
        """
        if isinstance(error, asyncio.CancelledError):
            cancelled = error
            error = StoreError(
                "the commit was cancelled (the store's commit task was cancelled, as a loop "
                "does to every task when it ends); the writes stay queued and the next commit "
                "(a put, flush() or close()) stores them"
            )
            error.__cause__ = cancelled
        self.done, self.error = True, error
        if rejected:
            self.rejected = rejected
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if waiter.done():  # its caller gave up waiting
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def __await__(self) -> Generator[Any, None, None]:
        if not self.done:
            if self.on_wait is not None:
                self.on_wait()
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            yield from waiter.__await__()
        elif self.error is not None:
            raise self.error


class Committed:
    """What ``put_*`` returns: awaiting it waits for the commit holding that write.

    Raises the error that kept this one write out of its commit (``ValidationError``,
    ``AlreadyExistsError``), or the commit's own error (a :class:`StoreError` once the commit
    gave up retrying; the write then stays queued for the next commit).
    """

    __slots__ = ("_batch", "_key", "_kind")

    def __init__(self, batch: Batch, kind: str, key: str) -> None:
        self._batch = batch
        self._kind = kind
        self._key = key

    def __await__(self) -> Generator[Any, None, None]:
        batch = self._batch
        yield from batch.__await__()
        if batch.rejected:
            error = batch.rejected.get((self._kind, self._key))
            if error is not None:
                raise error


__all__ = [
    "NO_REJECTIONS",
    "ROW_ERRORS",
    "Batch",
    "CommitProgress",
    "Committed",
    "StoreError",
    "commit",
    "encode_rows",
    "execute_and_commit",
    "plan_statements",
    "rejection",
    "retryable",
]
