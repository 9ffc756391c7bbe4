"""The built-in store: SQLite through aiosqlite, with group commit.

Writes are queued in memory and committed in batches by one background coroutine. A
``put_*`` keeps a *reference* to the model in a dict keyed by its id, so a task put three
times before the next commit is written once, in its latest state; events are appended to a
list. Everything queued during one event-loop iteration shares a commit, and everything queued
while a commit runs shares the next one. Each batch costs one ``executemany`` per table and one
``COMMIT`` (a handful of hops to the aiosqlite thread, not one per row).

Stored data is JSON text, never pickle (R-06); timestamps are UTC unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Any, TypeVar

import aiosqlite

from miminions.kernel.errors import (
    AlreadyExistsError,
    ConfigurationError,
    InvalidStateError,
    RuntimeNotRunningError,
    ValidationError,
)
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.interfaces import EventQuery, StoredAgent
from miminions.kernel.models import (
    AgentStatus,
    DeadLetter,
    Event,
    EventType,
    RuntimeConfig,
    Severity,
    Task,
    TaskStatus,
)
from miminions.plugins import sqlite_schema as schema

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_Row = tuple[Any, ...]


def _make_dumps(default: Callable[[Any], Any]) -> Callable[[Any], str]:
    """Return a compact JSON encoder (no spaces, non-ASCII kept) calling ``default``.

    ``json.dumps``/``JSONEncoder.encode`` build a fresh C encoder on every call, which costs
    more than encoding a small dict; the store encodes several values per row, so it builds
    the C encoder once. That constructor is an implementation detail of the ``json``
    module, so it is checked against the public encoder here and not used if they differ.
    """
    public = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=default).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:
        return public
    try:
        # markers=None: no cycle bookkeeping (a cycle still fails, as RecursionError).
        chunks = make(None, default, basestring, None, ":", ",", False, False, True)

        def fast(value: Any) -> str:
            return "".join(chunks(value, 0))

        sample = {"s": 'é"\n', "i": [1, -2.5, 1e300, None, True, False], "d": {"1": {}}}
        if fast(sample) != public(sample) or fast("x") != public("x"):
            return public
    except Exception:  # a different json implementation: use the public API
        return public
    return fast


def _reject(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_dumps = _make_dumps(_reject)
# Event details are diagnostics: an odd value is stored as its repr instead of failing the
# batch that carries everybody's task writes.
_dumps_lenient = _make_dumps(repr)
_loads = json.loads

_SEVERITY_ORDER = list(Severity)
_BUSY_TIMEOUT_MS = 5000
# Throughput settings of the writing connection: a page cache that holds the hot index pages
# (the default 2 MiB thrashes once the event indexes outgrow it), and rarer WAL checkpoints,
# so a page changed by many commits is copied into the database file once. Both are bounds:
# memory and WAL size grow only as the data does. ``journal_size_limit`` trims the WAL back.
_WRITER_PRAGMAS = (
    "PRAGMA cache_size=-65536",
    "PRAGMA wal_autocheckpoint=4000",
    "PRAGMA journal_size_limit=67108864",
)
_MEMORY = ":memory:"


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _query_ts(value: datetime) -> float:
    # Naive datetimes are taken as UTC, like everything else the runtime stores.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# ----------------------------------------------------------------------------- row codecs
# Hot path: attributes are read directly (no model_dump). Only exact str/int/float values are
# bound: for any subclass (a str enum, a bool, an IntEnum priority) sqlite3 first looks for an
# adapter, which costs microseconds per value while the database thread holds the GIL. Enum
# members hash and compare as their values, so this table maps plain strings as well.
# Column order follows sqlite_schema.*_COLUMNS.
_TEXT: dict[str, str] = {
    member: member.value
    for enum in (TaskStatus, AgentStatus, EventType, Severity)
    for member in enum
}


def _task_row(t: Task) -> _Row:
    # The hottest function of the store (every put of every task): one read of the model's
    # field dict is measurably cheaper than twenty attribute lookups through the class.
    f = t.__dict__
    i, deps, o, k = f["input_data"], f["dependencies"], f["output_data"], f["checkpoint"]
    s, c = f["started_at"], f["completed_at"]
    return (
        f["task_id"],
        f["name"],
        int(f["priority"]),
        _TEXT[f["status"]],
        _dumps(i) if i else "{}",
        None if o is None else _dumps(o),
        f["error_message"],
        f["agent_id"],
        f["group"],
        f["assigned_agent_id"],
        _dumps(deps) if deps else "[]",
        f["retry_count"],
        f["max_retries"],
        f["timeout_seconds"],
        f["idempotency_key"],
        None if k is None else _dumps(k),
        1 if f["dead_lettered"] else 0,
        f["created_at"].timestamp(),
        None if s is None else s.timestamp(),
        None if c is None else c.timestamp(),
    )


def _task_from_row(r: sqlite3.Row | Sequence[Any]) -> Task:
    return Task.model_validate(
        {
            "task_id": r[0],
            "name": r[1],
            "priority": r[2],
            "status": r[3],
            "input_data": _loads(r[4]),
            "output_data": None if r[5] is None else _loads(r[5]),
            "error_message": r[6],
            "agent_id": r[7],
            "group": r[8],
            "assigned_agent_id": r[9],
            "dependencies": _loads(r[10]),
            "retry_count": r[11],
            "max_retries": r[12],
            "timeout_seconds": r[13],
            "idempotency_key": r[14],
            "checkpoint": None if r[15] is None else _loads(r[15]),
            "dead_lettered": bool(r[16]),
            "created_at": _dt(r[17]),
            "started_at": _dt(r[18]),
            "completed_at": _dt(r[19]),
        }
    )


def _event_row(e: Event) -> _Row:
    d = e.details
    return (
        e.timestamp.timestamp(),
        _TEXT[e.event_type],
        _TEXT[e.severity],
        e.agent_id,
        e.task_id,
        _dumps_lenient(d) if d else "{}",
    )


def _agent_row(a: StoredAgent) -> _Row:
    p = a.paused_state
    return (
        a.agent_id,
        a.name,
        a.spec.model_dump_json(),
        _TEXT[a.status],
        None if p is None else _dumps(p),
        a.restart_count,
        a.error_message,
    )


def _meta_row(item: tuple[str, Any]) -> _Row:
    return (item[0], _dumps(item[1]))


def _dead_letter_row(d: DeadLetter) -> _Row:
    return (
        d.dead_letter_id,
        d.kind,
        d.ref_id,
        d.reason,
        _dumps(d.payload),
        d.created_at.timestamp(),
        _ts(d.requeued_at),
    )


def _rows(
    kind: str,
    pending: dict[str, _T],
    to_row: Callable[[_T], _Row],
    rejected: dict[tuple[str, str], BaseException],
) -> list[_Row]:
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


def _event_rows(events: list[Event]) -> list[_Row]:
    """Serialize events; a malformed one is logged and dropped, never the whole batch."""
    try:
        return [_event_row(e) for e in events]
    except Exception:
        rows = []
        for event in events:
            try:
                rows.append(_event_row(event))
            except Exception as exc:
                logger.error("not storing malformed event %r: %s", event, exc)
        return rows


async def _write_rows(
    conn: aiosqlite.Connection, write: schema.BulkWrite, rows: list[_Row]
) -> None:
    """Write ``rows`` with as many multi-row statements as fit, then the rest one by one."""
    per, full = write.rows, len(rows) - len(rows) % write.rows
    if full:
        chunks = [list(chain.from_iterable(rows[i : i + per])) for i in range(0, full, per)]
        await conn.executemany(write.multi, chunks)
    if full < len(rows):
        await conn.executemany(write.single, rows[full:])


# ----------------------------------------------------------------------------- batching
class _Batch:
    """Writes that share one commit: a future for the commit and any per-write rejections."""

    __slots__ = ("future", "rejected")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.rejected: dict[tuple[str, str], BaseException] = {}


class _Committed:
    """What ``put_*`` returns: awaiting it waits for the commit holding that write.

    The batch's shared future is awaited through :func:`asyncio.shield`, so a caller that
    cancels its wait (``asyncio.wait_for``) cannot cancel the commit for everybody else.
    """

    __slots__ = ("_batch", "_key", "_kind")

    def __init__(self, batch: _Batch, kind: str, key: str) -> None:
        self._batch = batch
        self._kind = kind
        self._key = key

    def __await__(self) -> Generator[Any, None, None]:
        batch = self._batch
        yield from asyncio.shield(batch.future).__await__()
        if batch.rejected:
            error = batch.rejected.get((self._kind, self._key))
            if error is not None:
                raise error


class SQLiteStore:
    """A :class:`~miminions.kernel.interfaces.Store` in one SQLite file (WAL mode).

    ``readonly=True`` opens an existing database without migrating it, for tools that inspect
    a database another process is writing; every ``put_*`` then raises ``InvalidStateError``.
    """

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._conn: aiosqlite.Connection | None = None
        self._closed = False
        self._tasks: dict[str, Task] = {}
        self._agents: dict[str, StoredAgent] = {}
        self._dead_letters: dict[str, DeadLetter] = {}
        self._meta: dict[str, tuple[str, Any]] = {}
        self._events: list[Event] = []
        self._batch: _Batch | None = None  # collecting writes for the next commit
        self._committing: _Batch | None = None  # being committed now
        self._committer: asyncio.Task[None] | None = None

    @classmethod
    async def open_readonly(cls, path: str) -> SQLiteStore:
        """Open an existing database for reading only and return the opened store."""
        store = cls(path, readonly=True)
        await store.open()
        return store

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        """Create or open the database and bring its schema up to date."""
        if self._closed:
            raise RuntimeNotRunningError("this store was closed; create a new SQLiteStore")
        if self._conn is not None:
            return
        if self.readonly:
            self._conn = await self._connect_readonly()
            return
        self._create_private_file()
        conn = await aiosqlite.connect(self.path)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            for pragma in _WRITER_PRAGMAS:
                await conn.execute(pragma)
            await schema.migrate(conn, self.path)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    def _create_private_file(self) -> None:
        """Create the database file readable by its owner only (R-06), if it is new."""
        if self.path == _MEMORY or self.path.startswith("file:"):
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # an existing file keeps the permissions its owner chose
        except OSError as exc:
            raise ConfigurationError(f"cannot create database {self.path!r}: {exc}") from exc
        try:
            os.fchmod(fd, 0o600)  # the umask may only narrow the mode; make it exact anyway
        finally:
            os.close(fd)

    def _readonly_uri(self) -> str:
        """The ``mode=ro`` URI of an existing database file (SQLite would create a new one)."""
        if not os.path.exists(self.path):
            raise ConfigurationError(f"database {self.path!r} does not exist")
        return f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=ro"

    async def _connect_readonly(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self._readonly_uri(), uri=True)
        try:
            await conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            version = await schema.recorded_version(conn)
            if version is None:
                raise ConfigurationError(f"{self.path!r} is not a miminions database")
            schema.check_version(self.path, version)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Commit everything queued and release the database; a second call does nothing."""
        if self._closed:
            return
        self._closed = True  # refuse new batches; writes already queued still commit
        try:
            await self.flush()
        finally:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------------- writes
    def put_task(self, task: Task) -> _Committed:
        """Queue an insert-or-update of ``task``; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._tasks[task.task_id] = task
        return _Committed(batch, "task", task.task_id)

    def put_agent(self, agent: StoredAgent) -> _Committed:
        """Queue an insert-or-update of an agent record; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._agents[agent.agent_id] = agent
        return _Committed(batch, "agent", agent.agent_id)

    def put_event(self, event: Event) -> None:
        """Queue an event for the next commit (fire and forget; ``flush`` waits for it)."""
        if self._batch is None:
            self._new_batch()
        self._events.append(event)

    def put_dead_letter(self, dead_letter: DeadLetter) -> _Committed:
        """Queue an insert-or-update of a dead letter; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._dead_letters[dead_letter.dead_letter_id] = dead_letter
        return _Committed(batch, "dead letter", dead_letter.dead_letter_id)

    def put_meta(self, key: str, value: Any) -> _Committed:
        """Queue a write of a small JSON value under ``key``; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._meta[key] = (key, value)
        return _Committed(batch, "meta", key)

    def _new_batch(self) -> _Batch:
        """Start collecting a batch and make sure a committer will pick it up."""
        if self.readonly:
            raise InvalidStateError(f"store {self.path!r} was opened read-only; it takes no writes")
        if self._closed:
            raise RuntimeNotRunningError(f"store {self.path!r} is closed")
        if self._conn is None:
            raise RuntimeNotRunningError("the store is not open; await store.open() first")
        batch = self._batch = _Batch(asyncio.get_running_loop().create_future())
        self._ensure_committer()
        return batch

    def _ensure_committer(self) -> None:
        if self._committer is None:
            # A new task's first step runs on the next loop iteration (like call_soon), so
            # every write queued during this iteration joins the same commit.
            self._committer = asyncio.get_running_loop().create_task(
                self._commit_loop(), name="miminions-sqlite-commit"
            )

    async def _commit_loop(self) -> None:
        """Commit batches until nothing is queued; writes made meanwhile form the next batch."""
        try:
            while (batch := self._batch) is not None:
                tasks, self._tasks = self._tasks, {}
                agents, self._agents = self._agents, {}
                dead_letters, self._dead_letters = self._dead_letters, {}
                meta, self._meta = self._meta, {}
                events, self._events = self._events, []
                self._batch, self._committing = None, batch
                try:
                    await self._write(batch, tasks, agents, dead_letters, meta, events)
                except asyncio.CancelledError:
                    batch.future.cancel()
                    raise
                except Exception as exc:
                    logger.error("commit to %r failed: %s", self.path, exc)
                    batch.future.set_exception(exc)
                    batch.future.exception()  # retrieved: fire-and-forget writers need no log
                else:
                    batch.future.set_result(None)
                finally:
                    self._committing = None
        finally:
            self._committer = None

    async def _write(
        self,
        batch: _Batch,
        tasks: dict[str, Task],
        agents: dict[str, StoredAgent],
        dead_letters: dict[str, DeadLetter],
        meta: dict[str, tuple[str, Any]],
        events: list[Event],
    ) -> None:
        """Write one batch in one transaction; roll back on failure."""
        conn = self._conn
        if conn is None:  # closed underneath us; cannot happen through the public API
            raise RuntimeNotRunningError("the store was closed before the commit")
        rejected = batch.rejected
        # Keyed writes, in order; the key is the first column of each row.
        keyed = (
            (schema.UPSERT_TASK, "task", _rows("task", tasks, _task_row, rejected)),
            (schema.UPSERT_AGENT, "agent", _rows("agent", agents, _agent_row, rejected)),
            (
                schema.UPSERT_DEAD_LETTER,
                "dead letter",
                _rows("dead letter", dead_letters, _dead_letter_row, rejected),
            ),
            (schema.UPSERT_META, "meta", _rows("meta", meta, _meta_row, rejected)),
        )
        try:
            try:
                for write, _, rows in keyed:
                    if rows:
                        await _write_rows(conn, write, rows)
            except sqlite3.IntegrityError:
                # A row broke a UNIQUE rule (an idempotency key or agent name used twice).
                # Redo the keyed writes row by row so only the offending write is rejected.
                await conn.rollback()
                for write, kind, rows in keyed:
                    for row in rows:
                        try:
                            await conn.execute(write.single, row)
                        except sqlite3.IntegrityError as exc:
                            logger.error("not storing %s %r: %s", kind, row[0], exc)
                            rejected[(kind, row[0])] = AlreadyExistsError(
                                f"{kind} {row[0]!r} conflicts with a stored one: {exc}"
                            )
            if events:
                await _write_rows(conn, schema.INSERT_EVENT, _event_rows(events))
            await conn.commit()
        except BaseException:
            try:
                await conn.rollback()
            except Exception:  # the original error is the one to report
                logger.exception("rollback after a failed commit to %r failed", self.path)
            raise

    async def flush(self) -> None:
        """Return once everything queued before the call is committed.

        Raises the error of that commit if it failed.
        """
        if self._batch is not None:
            # Normally a committer is already on it; one cancelled with the loop is not.
            self._ensure_committer()
        batch = self._batch or self._committing
        if batch is not None:
            await asyncio.shield(batch.future)

    async def _reader(self) -> aiosqlite.Connection:
        """The connection, after pending writes are committed, so callers read their own."""
        # A failed commit was reported to its writers and logged; the read still goes ahead.
        with contextlib.suppress(Exception):
            await self.flush()
        if self._conn is None:
            raise RuntimeNotRunningError(f"store {self.path!r} is not open")
        return self._conn

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        conn = await self._reader()
        return list(await conn.execute_fetchall(sql, tuple(params)))

    async def get_meta(self, key: str) -> Any:
        """Return the JSON value stored under ``key``, or None."""
        rows = await self._fetch("SELECT value FROM meta WHERE key = ?", (key,))
        return _loads(rows[0][0]) if rows else None

    async def load_tasks(self) -> list[Task]:
        """Return every stored task, oldest first."""
        return [_task_from_row(r) for r in await self._fetch(schema.SELECT_TASKS + " ORDER BY seq")]

    async def list_tasks(self, status: str | None = None, limit: int = 100) -> list[Task]:
        """Return up to ``limit`` tasks, newest first, optionally only those in ``status``."""
        sql, params = schema.SELECT_TASKS, []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        rows = await self._fetch(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit])
        return [_task_from_row(r) for r in rows]

    async def count_tasks_by_status(self) -> dict[str, int]:
        """Return how many stored tasks are in each status (statuses with none are omitted)."""
        rows = await self._fetch("SELECT status, COUNT(*) FROM tasks GROUP BY status")
        return {status: count for status, count in rows}

    async def load_agents(self) -> list[StoredAgent]:
        """Return every stored agent record, in the order they were first stored."""
        return [
            StoredAgent.model_validate(
                {
                    "agent_id": r[0],
                    "name": r[1],
                    "spec": _loads(r[2]),
                    "status": r[3],
                    "paused_state": None if r[4] is None else _loads(r[4]),
                    "restart_count": r[5],
                    "error_message": r[6],
                }
            )
            for r in await self._fetch(schema.SELECT_AGENTS)
        ]

    async def load_dead_letters(self) -> list[DeadLetter]:
        """Return every stored dead letter, oldest first."""
        return [
            DeadLetter.model_validate(
                {
                    "dead_letter_id": r[0],
                    "kind": r[1],
                    "ref_id": r[2],
                    "reason": r[3],
                    "payload": _loads(r[4]),
                    "created_at": _dt(r[5]),
                    "requeued_at": _dt(r[6]),
                }
            )
            for r in await self._fetch(schema.SELECT_DEAD_LETTERS)
        ]

    async def query_events(self, query: EventQuery) -> list[Event]:
        """Return the committed events matching ``query``, oldest first.

        ``since`` and ``until`` are inclusive; with ``newest`` the last ``limit`` matches are
        returned (still oldest first).
        """
        where, params = _event_filters(query)
        if where is None:
            return []
        sql = schema.SELECT_EVENTS + where
        sql += " ORDER BY event_id DESC" if query.newest else " ORDER BY event_id"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        rows = await self._fetch(sql, params)
        if query.newest:
            rows.reverse()
        return [
            Event.model_validate(
                {
                    "event_id": r[0],
                    "timestamp": _dt(r[1]),
                    "event_type": r[2],
                    "severity": r[3],
                    "agent_id": r[4],
                    "task_id": r[5],
                    "details": _loads(r[6]),
                }
            )
            for r in rows
        ]


def _event_filters(query: EventQuery) -> tuple[str | None, list[Any]]:
    """Translate a query into a WHERE clause; None means nothing can match."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.event_types is not None:
        if not query.event_types:
            return None, params
        clauses.append(f"event_type IN ({', '.join('?' * len(query.event_types))})")
        params.extend(t.value for t in query.event_types)
    if query.min_severity is not None:
        allowed = _SEVERITY_ORDER[_SEVERITY_ORDER.index(query.min_severity) :]
        clauses.append(f"severity IN ({', '.join('?' * len(allowed))})")
        params.extend(s.value for s in allowed)
    for column, value in (("agent_id", query.agent_id), ("task_id", query.task_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("ts >= ?")
        params.append(_query_ts(query.since))
    if query.until is not None:
        clauses.append("ts <= ?")
        params.append(_query_ts(query.until))
    if query.after_id is not None:
        clauses.append("event_id > ?")
        params.append(query.after_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# ----------------------------------------------------------------------------- plugin hook
@hookimpl(trylast=True)  # built-in: any other store plugin wins
def miminions_make_store(config: RuntimeConfig) -> SQLiteStore:
    """Provide the default store: SQLite at ``config.storage_path``."""
    return SQLiteStore(config.storage_path)
