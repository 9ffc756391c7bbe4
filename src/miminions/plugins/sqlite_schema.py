"""The database side of the built-in SQLite store: schema, SQL and row codecs.

The schema is an ordered list of migrations; each is applied once, in order, inside its own
transaction together with the ``schema_migrations`` row that records it. A database whose
recorded version is newer than :data:`SCHEMA_VERSION` was written by a newer miminions and is
refused rather than misread.

The row codecs turn models into row tuples and back. Column order in the ``*_COLUMNS``
tuples is the order of those tuples, so tables, SQL and codecs live here, together. Stored
data is JSON text, never pickle (R-06); timestamps are UTC unix seconds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import pydantic

from miminions.kernel.errors import ConfigurationError, ValidationError
from miminions.kernel.interfaces import EventQuery, StoredAgent
from miminions.kernel.jsonutil import make_encoder, reject
from miminions.kernel.models import (
    AgentStatus,
    DeadLetter,
    Event,
    EventRecord,
    EventType,
    Severity,
    Task,
    TaskStatus,
    fast_construct,
    frozen_json,
)


# ----------------------------------------------------------------------------- tables
@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: a version number, what it does, and its SQL statements."""

    version: int
    description: str
    statements: tuple[str, ...]


_INITIAL = (
    # ``seq`` aliases the rowid, so it is assigned on first insert, kept by upserts and
    # survives VACUUM (a bare rowid may be renumbered): it gives "oldest first" for free.
    """CREATE TABLE tasks (
        seq INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL,
        input_data TEXT NOT NULL,
        output_data TEXT,
        error_message TEXT,
        agent_id TEXT,
        grp TEXT,
        assigned_agent_id TEXT,
        dependencies TEXT NOT NULL,
        retry_count INTEGER NOT NULL,
        max_retries INTEGER NOT NULL,
        timeout_seconds REAL,
        idempotency_key TEXT,
        checkpoint TEXT,
        dead_lettered INTEGER NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL
    )""",
    "CREATE INDEX tasks_status ON tasks (status)",
    """CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
        WHERE idempotency_key IS NOT NULL""",
    """CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        paused_state TEXT,
        restart_count INTEGER NOT NULL,
        error_message TEXT
    )""",
    """CREATE TABLE events (
        event_id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        event_type TEXT NOT NULL,
        severity TEXT NOT NULL,
        agent_id TEXT,
        task_id TEXT,
        details TEXT NOT NULL
    )""",
    # Every index entry implicitly ends with the rowid (event_id), so "WHERE task_id = ?
    # ORDER BY event_id" is answered from the index alone. Partial indexes skip the many
    # events that have no task or agent, which keeps appends cheap.
    "CREATE INDEX events_task_id ON events (task_id) WHERE task_id IS NOT NULL",
    "CREATE INDEX events_agent_id ON events (agent_id) WHERE agent_id IS NOT NULL",
    "CREATE INDEX events_event_type ON events (event_type)",
    "CREATE INDEX events_ts ON events (ts)",
    """CREATE TABLE dead_letters (
        dead_letter_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        ref_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        requeued_at REAL
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

#: Every migration, oldest first. Append new ones; never edit an applied one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _INITIAL),
    Migration(
        2,
        "trace context of tasks",
        ("ALTER TABLE tasks ADD COLUMN trace_context TEXT",),
    ),
)

#: The schema version this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version

_CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
)


# ----------------------------------------------------------------------------- SQL
# Parameters one statement may bind: 32766 since SQLite 3.32, 999 before.
_MAX_PARAMETERS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
_MAX_ROWS = 1024


@dataclass(frozen=True, slots=True)
class BulkWrite:
    """An insert (or upsert) prepared for 1, 2, 4, ... ``max_rows`` rows per statement.

    Python's sqlite3 binds parameters and takes the GIL back for every statement it steps;
    while the event loop keeps the GIL busy, each of those waits is a stall of the database
    thread (with a busy loop, one row per statement ran at about a third of the speed of
    128 rows per statement). Sizes are powers of two so that a handful of statements, each
    prepared once and then cached by sqlite3, can write any number of rows.
    """

    columns: int
    max_rows: int
    statements: dict[int, str]

    def plan(self, count: int) -> list[tuple[int, int]]:
        """Split ``count`` rows into ``(start, size)`` chunks, largest statements first."""
        chunks, start, size = [], 0, self.max_rows
        while start < count:
            while size > count - start:
                size //= 2
            chunks.append((start, size))
            start += size
        return chunks


def _bulk(table: str, columns: tuple[str, ...], key: str | None = None) -> BulkWrite:
    """Build the statements writing ``columns``; with a ``key``, overwrite the row holding it."""
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    tail = ""
    if key is not None:
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
        tail = f" ON CONFLICT({key}) DO UPDATE SET {updates}"
    return _sized(len(columns), lambda values: head + values + tail)


def _sized(columns: int, statement: Callable[[str], str]) -> BulkWrite:
    """The statements ``statement(values)`` for 1, 2, 4, ... rows of ``columns`` parameters,
    ``values`` being that many ``(?, ?, ...)`` tuples, as many rows as the parameter limit
    allows."""
    max_rows = _MAX_ROWS
    while max_rows * columns > _MAX_PARAMETERS:
        max_rows //= 2
    tuple_marks = f"({', '.join('?' * columns)})"
    statements, size = {}, 1
    while size <= max_rows:
        statements[size] = statement(", ".join([tuple_marks] * size))
        size *= 2
    return BulkWrite(columns=columns, max_rows=max_rows, statements=statements)


TASK_COLUMNS = (
    "task_id",
    "name",
    "priority",
    "status",
    "input_data",
    "output_data",
    "error_message",
    "agent_id",
    "grp",
    "assigned_agent_id",
    "dependencies",
    "retry_count",
    "max_retries",
    "timeout_seconds",
    "idempotency_key",
    "checkpoint",
    "dead_lettered",
    "created_at",
    "started_at",
    "completed_at",
    "trace_context",
)
#: Columns of ``tasks`` a later migration added, with its version: a read-only reader of a
#: database not migrated yet (a runtime of an older miminions writes it) reads NULL there.
_TASK_COLUMNS_SINCE = {"trace_context": 2}
AGENT_COLUMNS = (
    "agent_id",
    "name",
    "spec",
    "status",
    "paused_state",
    "restart_count",
    "error_message",
)
EVENT_COLUMNS = ("ts", "event_type", "severity", "agent_id", "task_id", "details")
DEAD_LETTER_COLUMNS = (
    "dead_letter_id",
    "kind",
    "ref_id",
    "reason",
    "payload",
    "created_at",
    "requeued_at",
)

UPSERT_TASK = _bulk("tasks", TASK_COLUMNS, "task_id")
UPSERT_AGENT = _bulk("agents", AGENT_COLUMNS, "agent_id")
UPSERT_DEAD_LETTER = _bulk("dead_letters", DEAD_LETTER_COLUMNS, "dead_letter_id")
UPSERT_META = _bulk("meta", ("key", "value"), "key")
#: Deletes of meta keys, in the same bulk shape (one key per "row").
DELETE_META = BulkWrite(
    columns=1,
    max_rows=_MAX_ROWS,
    statements={
        size: "DELETE FROM meta WHERE key IN (" + ", ".join(["?"] * size) + ")"
        for size in (2**n for n in range(_MAX_ROWS.bit_length()))
    },
)
# The store numbers events itself (see SQLiteStore.put_event): it knows each id without
# asking the database, which lets it answer queries over recent events from memory.
INSERT_EVENT = _bulk("events", ("event_id", *EVENT_COLUMNS))

#: The columns of ``tasks`` that change after a task is first stored (its state); the
#: others are fixed at submit. The kernel changes no other field of a stored task.
TASK_STATE_COLUMNS = (
    "task_id",
    "status",
    "output_data",
    "error_message",
    "assigned_agent_id",
    "retry_count",
    "checkpoint",
    "dead_lettered",
    "started_at",
    "completed_at",
)


def _bulk_state_update() -> BulkWrite | None:
    """Statements that write the state columns of tasks stored already, many per statement.

    A task is written at submit and then at each change of state (started, completed,
    ...). Writing only what changes binds half the parameters of a full upsert, and SQLite
    binds parameters holding the GIL, which the runtime's loop then waits for; the
    ``UPDATE ... FROM (VALUES ...)`` form it needs came with SQLite 3.33 (None before: every
    write is a full upsert then).
    """
    if sqlite3.sqlite_version_info < (3, 33, 0):
        return None
    # The VALUES columns are named column1, column2, ... in order; column1 is the key.
    updates = ", ".join(f"{c} = v.column{n}" for n, c in enumerate(TASK_STATE_COLUMNS[1:], start=2))
    return _sized(
        len(TASK_STATE_COLUMNS),
        lambda values: (
            f"UPDATE tasks SET {updates} FROM (VALUES {values}) AS v"
            " WHERE tasks.task_id = v.column1"
        ),
    )


UPDATE_TASK_STATE = _bulk_state_update()


def select_tasks(version: int) -> str:
    """The SELECT of every ``tasks`` column from a database at schema ``version``."""
    columns = (
        column if _TASK_COLUMNS_SINCE.get(column, 1) <= version else f"NULL AS {column}"
        for column in TASK_COLUMNS
    )
    return f"SELECT {', '.join(columns)} FROM tasks"


SELECT_TASKS = select_tasks(SCHEMA_VERSION)
SELECT_AGENTS = f"SELECT {', '.join(AGENT_COLUMNS)} FROM agents ORDER BY rowid"
SELECT_DEAD_LETTERS = (
    f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters ORDER BY created_at, rowid"
)
SELECT_EVENTS = f"SELECT event_id, {', '.join(EVENT_COLUMNS)} FROM events"


# ----------------------------------------------------------------------------- row codecs
#: One table row, in the column order of the matching ``*_COLUMNS``.
Row = tuple[Any, ...]


_dumps = make_encoder(reject)
# Event details are diagnostics: an odd value is stored as its repr instead of failing the
# batch that carries everybody's task writes.
_dumps_lenient = make_encoder(repr)
_loads = json.loads


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def query_ts(value: datetime) -> float:
    """A query's ``since``/``until`` as the ``ts`` column holds times: Unix seconds."""
    # Naive datetimes are taken as UTC, like everything else the runtime stores.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


# Writers are on the hot path: they read attributes directly (no model_dump) and bind only
# exact str/int/float values. For any subclass (a str enum, a bool, an IntEnum priority)
# sqlite3 first searches for an adapter, which costs about a microsecond per value while the
# database thread holds the GIL. Enum members hash and compare as their values, so this table
# maps plain strings as well.
_TEXT: dict[str, str] = {
    member: member.value
    for enum in (TaskStatus, AgentStatus, EventType, Severity)
    for member in enum
}


def task_row(t: Task) -> Row:
    """The ``tasks`` row of ``t`` (computed fields such as queue position are not stored)."""
    # The hottest function of the store (every put of every task): one read of the model's
    # field dict is measurably cheaper than twenty attribute lookups through the class.
    f = t.__dict__
    i, deps, o, k = f["input_data"], f["dependencies"], f["output_data"], f["checkpoint"]
    s, c, tc = f["started_at"], f["completed_at"], f["trace_context"]
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
        None if tc is None else _dumps(tc),
    )


def task_state_row(t: Task) -> Row:
    """The :data:`TASK_STATE_COLUMNS` of ``t``'s row (see :func:`task_row`)."""
    f = t.__dict__
    o, k, s, c = f["output_data"], f["checkpoint"], f["started_at"], f["completed_at"]
    return (
        f["task_id"],
        _TEXT[f["status"]],
        None if o is None else _dumps(o),
        f["error_message"],
        f["assigned_agent_id"],
        f["retry_count"],
        None if k is None else _dumps(k),
        1 if f["dead_lettered"] else 0,
        None if s is None else s.timestamp(),
        None if c is None else c.timestamp(),
    )


def task_from_row(r: Sequence[Any]) -> Task:
    """Rebuild (and validate) a task from its row; a damaged row raises ValidationError."""
    with _malformed("task", r):
        return _task_from_row(r)


def _task_from_row(r: Sequence[Any]) -> Task:
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
            "trace_context": None if r[20] is None else _loads(r[20]),
        }
    )


def event_row(e: EventRecord, event_id: int) -> Row:
    """The ``events`` row of ``e`` as event ``event_id``: the columns of
    :data:`SELECT_EVENTS`, in its order."""
    timestamp, event_type, severity, agent_id, task_id, details = e
    return (
        event_id,
        timestamp,
        _TEXT[event_type],
        _TEXT[severity],
        agent_id,
        task_id,
        _dumps_lenient(details) if details else "{}",
    )


def agent_row(a: StoredAgent) -> Row:
    """The ``agents`` row of ``a``."""
    p = a.paused_state
    spec = a.spec.model_dump(mode="json", exclude={"config"})
    # The config is JSON already (checked at registration), and may nest deeper than
    # pydantic's encoder goes (about 250 levels): written by the json module.
    spec["config"] = a.spec.config
    return (
        a.agent_id,
        a.name,
        _dumps(spec),
        _TEXT[a.status],
        None if p is None else _dumps(p),
        a.restart_count,
        a.error_message,
    )


def meta_row(item: tuple[str, Any]) -> Row:
    """The ``meta`` row of a ``(key, value)`` pair."""
    return (item[0], _dumps(item[1]))


def dead_letter_row(d: DeadLetter) -> Row:
    """The ``dead_letters`` row of ``d``."""
    return (
        d.dead_letter_id,
        d.kind,
        d.ref_id,
        d.reason,
        _dumps(d.payload),
        d.created_at.timestamp(),
        _ts(d.requeued_at),
    )


#: Validation context of records read back: rules added since they were written (a soft
#: limit above its hard one) do not lock a database out.
STORED = {"stored": True}


def agent_from_row(r: Sequence[Any]) -> StoredAgent:
    """Rebuild (and validate) an agent record from its row; a damaged row raises
    ValidationError."""
    with _malformed("agent", r):
        return _agent_from_row(r)


def _agent_from_row(r: Sequence[Any]) -> StoredAgent:
    return StoredAgent.model_validate(
        {
            "agent_id": r[0],
            "name": r[1],
            "spec": _loads(r[2]),
            "status": r[3],
            "paused_state": None if r[4] is None else _loads(r[4]),
            "restart_count": r[5],
            "error_message": r[6],
        },
        context=STORED,
    )


def dead_letter_from_row(r: Sequence[Any]) -> DeadLetter:
    """Rebuild (and validate) a dead letter from its row; a damaged row raises
    ValidationError."""
    with _malformed("dead letter", r):
        return _dead_letter_from_row(r)


def _dead_letter_from_row(r: Sequence[Any]) -> DeadLetter:
    return DeadLetter.model_validate(
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


def meta_value(key: str, text: Any) -> Any:
    """The JSON value of a ``meta`` row; a damaged one raises ValidationError."""
    with _malformed("meta value", (key,)):
        return _loads(text)


@contextlib.contextmanager
def _malformed(kind: str, row: Sequence[Any]) -> Iterator[None]:
    """Turn what a damaged row makes a decoder raise into one ValidationError naming the
    row (its key is its first column), instead of a JSON or pydantic error from deep
    inside: a reader (the CLI, a start) reports it in one line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        # (RecursionError: JSON nested deeper than the decoder goes, stored before values
        # had a nesting limit)
        if isinstance(exc, pydantic.ValidationError):
            what = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors()
            )
        else:
            what = f"{type(exc).__name__}: {exc}"
        raise ValidationError(f"stored {kind} {row[0]!r} is malformed: {what}") from None


_EVENT_TYPES: dict[str, EventType] = {member.value: member for member in EventType}
_SEVERITIES: dict[str, Severity] = {member.value: member for member in Severity}


def event_from_row(r: Sequence[Any], details: Any = None) -> Event:
    """Rebuild and check an event from its row (``event_id`` first); ``details``, when
    given, is the row's details column already decoded.

    Event queries return thousands of rows, so each column is checked by hand (known enum
    value, float timestamp, JSON object details) instead of a full pydantic validation; a
    row that fails a check raises :class:`ValidationError` naming the event. The details
    are read-only (:func:`~miminions.kernel.models.frozen_json`).
    """
    with _malformed("event", r):
        if details is None:
            details = _loads(r[6]) if r[6] != "{}" else {}
        if type(details) is not dict:
            raise TypeError("details is not a JSON object")
        details = frozen_json(details)
        return fast_construct(
            Event,
            {
                "event_id": int(r[0]),
                "timestamp": datetime.fromtimestamp(r[1], UTC),
                "event_type": _EVENT_TYPES[r[2]],
                "severity": _SEVERITIES[r[3]],
                "agent_id": None if r[4] is None else str(r[4]),
                "task_id": None if r[5] is None else str(r[5]),
                "details": details,
            },
        )


def events_from_rows(rows: Sequence[Sequence[Any]]) -> list[Event]:
    """:func:`event_from_row` for many rows, with the same checks: the details columns are
    parsed as one JSON array (one call into the parser instead of one per event) and the
    loop is inlined, several times faster for the thousands of rows a query may return. If
    anything fails, row by row names the culprit."""
    try:
        parsed = _loads("[" + ",".join(r[6] for r in rows) + "]")
        if len(parsed) != len(rows):  # a column that is several values
            raise ValueError("details column holds several values")
        from_ts, types, severities, build, read_only = (
            datetime.fromtimestamp,
            _EVENT_TYPES,
            _SEVERITIES,
            fast_construct,
            frozen_json,
        )
        events = []
        for r, details in zip(rows, parsed, strict=True):
            if type(details) is not dict:
                raise TypeError("details is not a JSON object")
            details = read_only(details)
            agent_id, task_id = r[4], r[5]
            events.append(
                build(
                    Event,
                    {
                        "event_id": int(r[0]),
                        "timestamp": from_ts(r[1], UTC),
                        "event_type": types[r[2]],
                        "severity": severities[r[3]],
                        "agent_id": None if agent_id is None else str(agent_id),
                        "task_id": None if task_id is None else str(task_id),
                        "details": details,
                    },
                )
            )
        return events
    except (KeyError, TypeError, ValueError, OverflowError):
        return [event_from_row(r) for r in rows]


# ----------------------------------------------------------------------------- queries
_SEVERITY_ORDER = list(Severity)


def severities_from(minimum: Severity) -> list[Severity]:
    """The severities at least as grave as ``minimum``."""
    return _SEVERITY_ORDER[_SEVERITY_ORDER.index(minimum) :]


def event_filters(query: EventQuery) -> tuple[str | None, list[Any]]:
    """Translate a query into a WHERE clause; None means nothing can match."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.event_types is not None:
        if not query.event_types:
            return None, params
        clauses.append(f"event_type IN ({', '.join('?' * len(query.event_types))})")
        params.extend(t.value for t in query.event_types)
    if query.min_severity is not None:
        allowed = severities_from(query.min_severity)
        clauses.append(f"severity IN ({', '.join('?' * len(allowed))})")
        params.extend(s.value for s in allowed)
    for column, value in (("agent_id", query.agent_id), ("task_id", query.task_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append("ts >= ?")
        params.append(query_ts(query.since))
    if query.until is not None:
        clauses.append("ts <= ?")
        params.append(query_ts(query.until))
    if query.after_id is not None:
        clauses.append("event_id > ?")
        params.append(query.after_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# ----------------------------------------------------------------------------- migrating
async def recorded_version(conn: aiosqlite.Connection) -> int | None:
    """Return the highest applied migration, or None when the database has no schema table."""
    try:
        rows = list(await conn.execute_fetchall("SELECT MAX(version) FROM schema_migrations"))
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise  # not "no schema" but "cannot read": a locked or unreadable database
    version = rows[0][0] if rows else None
    return int(version) if version is not None else 0


def check_version(path: str, version: int | None) -> None:
    """Refuse a database written by a newer schema than this code knows."""
    if version is not None and version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"database {path!r} has schema version {version}, but this miminions only knows "
            f"versions up to {SCHEMA_VERSION}; upgrade miminions or use another storage_path"
        )


async def refuse_foreign(conn: aiosqlite.Connection, path: str) -> None:
    """Raise ConfigurationError if the database is not one miminions can use: tables of
    its own but no miminions schema (another application's; Rails, dbmate and
    golang-migrate name their tables ``schema_migrations`` too, with other columns), or a
    schema newer than this code knows. Call it before changing anything, the journal
    mode included: a refused file is left as it was."""
    rows = await conn.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    )
    tables = [str(row[0]) for row in rows]
    if not tables:
        return  # new (or empty): miminions makes its schema
    if "schema_migrations" in tables:
        columns = await conn.execute_fetchall("PRAGMA table_info(schema_migrations)")
        if [str(column[1]) for column in columns] == ["version", "applied_at"]:
            check_version(path, await recorded_version(conn))
            return
    shown = ", ".join(tables[:3]) + (", ..." if len(tables) > 3 else "")
    raise ConfigurationError(
        f"database {path!r} is not a miminions database (it holds other tables: "
        f"{shown}); give the runtime a file of its own (storage_path)"
    )


async def migrate(conn: aiosqlite.Connection, path: str) -> None:
    """Bring the schema up to :data:`SCHEMA_VERSION`, applying each missing migration once."""
    await conn.execute(_CREATE_MIGRATIONS_TABLE)
    await conn.commit()
    current = await recorded_version(conn) or 0
    check_version(path, current)
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        # executescript runs outside the sqlite3 module's implicit transactions, so the
        # script brackets itself: the schema change and its record commit together or not at
        # all. IMMEDIATE takes the write lock up front so two openers cannot interleave.
        script = ";\n".join(
            (
                "BEGIN IMMEDIATE",
                *migration.statements,
                f"INSERT INTO schema_migrations (version, applied_at) "
                f"VALUES ({migration.version}, {time.time()!r})",
                "COMMIT",
            )
        )
        try:
            await conn.executescript(script)
        except sqlite3.Error as exc:
            await conn.rollback()
            raise ConfigurationError(
                f"could not apply schema migration {migration.version} "
                f"({migration.description}) to {path!r}: {exc}"
            ) from exc
