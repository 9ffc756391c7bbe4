"""Schema, migrations and SQL text of the built-in SQLite store.

The schema is an ordered list of migrations; each is applied once, in order, inside its own
transaction together with the ``schema_migrations`` row that records it. A database whose
recorded version is newer than :data:`SCHEMA_VERSION` was written by a newer miminions and is
refused rather than misread.

Column order in the ``*_COLUMNS`` tuples is the order of the row tuples the store builds, so
the SQL below and the row builders in :mod:`miminions.plugins.sqlite_store` change together.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import aiosqlite

from miminions.kernel.errors import ConfigurationError


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
MIGRATIONS: tuple[Migration, ...] = (Migration(1, "initial schema", _INITIAL),)

#: The schema version this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version

_CREATE_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"
)


@dataclass(frozen=True, slots=True)
class BulkWrite:
    """An insert (or upsert) as two statements: one row, and ``rows`` rows at once.

    Python's sqlite3 takes the GIL back after every executed statement; with one row per
    statement a busy event loop throttles the database thread to about one row per loop
    iteration. Many rows per statement make that one GIL round trip per ``rows`` rows.
    """

    columns: int
    rows: int
    single: str
    multi: str


def _bulk(table: str, columns: tuple[str, ...], key: str | None = None) -> BulkWrite:
    """Build the statements writing ``columns``; with a ``key``, overwrite the row holding it."""
    # At most 999 parameters per statement: the limit of SQLite builds older than 3.32.
    rows = min(128, 999 // len(columns))
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    tuple_marks = f"({', '.join('?' * len(columns))})"
    tail = ""
    if key is not None:
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
        tail = f" ON CONFLICT({key}) DO UPDATE SET {updates}"
    return BulkWrite(
        columns=len(columns),
        rows=rows,
        single=head + tuple_marks + tail,
        multi=head + ", ".join([tuple_marks] * rows) + tail,
    )


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
)
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
INSERT_EVENT = _bulk("events", EVENT_COLUMNS)

SELECT_TASKS = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks"
SELECT_AGENTS = f"SELECT {', '.join(AGENT_COLUMNS)} FROM agents ORDER BY rowid"
SELECT_DEAD_LETTERS = (
    f"SELECT {', '.join(DEAD_LETTER_COLUMNS)} FROM dead_letters ORDER BY created_at, rowid"
)
SELECT_EVENTS = f"SELECT event_id, {', '.join(EVENT_COLUMNS)} FROM events"


async def recorded_version(conn: aiosqlite.Connection) -> int | None:
    """Return the highest applied migration, or None when the database has no schema table."""
    try:
        rows = list(await conn.execute_fetchall("SELECT MAX(version) FROM schema_migrations"))
    except sqlite3.OperationalError:
        return None
    version = rows[0][0] if rows else None
    return int(version) if version is not None else 0


def check_version(path: str, version: int | None) -> None:
    """Refuse a database written by a newer schema than this code knows."""
    if version is not None and version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"database {path!r} has schema version {version}, but this miminions only knows "
            f"versions up to {SCHEMA_VERSION}; upgrade miminions or use another storage_path"
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
