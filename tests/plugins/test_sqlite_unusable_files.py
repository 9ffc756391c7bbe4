"""The built-in SQLite store and databases it cannot use as they are, as
docs/operations.md ("The database file") promises: another application's database read
by the CLI is refused as not ours, a cleanly stopped database on a read-only volume is read,
and a damaged page found at start is a ConfigurationError, not a raw sqlite3 error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from miminions import AgentRuntime, RuntimeConfig
from miminions.kernel.errors import ConfigurationError
from miminions.kernel.models import Task
from miminions.plugins.sqlite_store import SQLiteStore

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _foreign_with_schema_migrations(
    path: Path, ddl: str, rows: Sequence[tuple[object, ...]]
) -> None:
    """Another application's SQLite database, which names a table ``schema_migrations``
    (Rails, dbmate, Sequel, Ecto do) with columns of its own."""
    conn = sqlite3.connect(path)
    conn.execute(ddl)
    for row in rows:
        conn.execute(f"INSERT INTO schema_migrations VALUES ({', '.join('?' * len(row))})", row)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.commit()
    conn.close()


# ---------------------------------------------------------------- 1. foreign databases, read-only
FOREIGN = {
    # Rails / dbmate: version is a timestamp string
    "rails": (
        "CREATE TABLE schema_migrations (version varchar PRIMARY KEY)",
        [("20230101120000",)],
    ),
    # a migration tool naming its versions by text
    "text": ("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY)", [("v1_init",)]),
    # Sequel's TimestampMigrator: no version column at all
    "sequel": ("CREATE TABLE schema_migrations (filename TEXT PRIMARY KEY)", [("001_init.rb",)]),
    # a tool that created its table but recorded nothing yet
    "empty": ("CREATE TABLE schema_migrations (version varchar PRIMARY KEY)", []),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
async def test_readonly_open_refuses_another_applications_database_as_not_ours(
    tmp_path: Path, kind: str
) -> None:
    """A writable open refuses these files with "not a miminions database" (refuse_foreign
    checks the columns of ``schema_migrations``); the read-only open used by the CLI
    (``miminions status/tasks/events/top``) only looks at MAX(version) and so says
    "upgrade miminions" (rails), crashes with a raw ValueError (text), gives SQLite's
    "no such column" with advice about file permissions (sequel), or opens the file and
    fails later with "no such table" (empty)."""
    db = tmp_path / f"{kind}.db"
    ddl, rows = FOREIGN[kind]
    _foreign_with_schema_migrations(db, ddl, rows)

    # the writer gets it right
    with pytest.raises(ConfigurationError, match="not a miminions database"):
        await SQLiteStore(str(db)).open()

    # the reader should say the same, at open
    store: SQLiteStore | None = None
    try:
        with pytest.raises(ConfigurationError, match="not a miminions database"):
            store = await SQLiteStore.open_readonly(str(db))
    finally:
        if store is not None:
            await store.close()


def test_cli_status_on_a_foreign_database_with_text_versions_has_no_traceback(
    tmp_path: Path,
) -> None:
    """``miminions status --db`` on such a file ends in a Python traceback (an uncaught
    ValueError from ``int(version)`` in sqlite_schema.recorded_version)."""
    db = tmp_path / "text.db"
    ddl, rows = FOREIGN["text"]
    _foreign_with_schema_migrations(db, ddl, rows)
    result = subprocess.run(
        [sys.executable, "-m", "miminions", "status", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "not a miminions database" in result.stderr, result.stderr


# ------------------------------------------------------------- 2. a read-only volume, as documented
@pytest.fixture
def read_only_volume() -> Iterator[Path]:
    """A real read-only file system (a tmpfs remounted ``ro``), where a database that was
    stopped cleanly lies. Needs root and ``mount``; skipped otherwise."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount to make a read-only volume")
    where = Path(tempfile.mkdtemp(prefix="miminions-rovol-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


async def test_a_cleanly_stopped_database_on_a_read_only_volume_is_read(
    read_only_volume: Path,
) -> None:
    """docs/operations.md: "In a directory the reader cannot write (a backup, a read-only
    volume, another user's data), a database whose runtime stopped cleanly (no -wal file)
    is read as the complete file it is (a snapshot ...)". On a read-only volume SQLite
    answers SQLITE_CANTOPEN ("unable to open database file"), not the SQLITE_READONLY_*
    that _connect_readonly falls back to ``immutable=1`` for; the read fails with advice to
    check that the file "may be read and written"."""
    db = read_only_volume / "run.db"
    async with SQLiteStore(str(db)) as writer:
        for i in range(3):
            writer.put_task(Task(task_id=f"t{i}", name="job", created_at=T0))
    assert not Path(f"{db}-wal").exists()  # stopped cleanly  # noqa: ASYNC240
    await asyncio.to_thread(
        subprocess.run, ["mount", "-o", "remount,ro", str(read_only_volume)], check=True
    )

    reader = await SQLiteStore.open_readonly(str(db))
    try:
        assert [t.task_id for t in await reader.load_tasks()] == ["t0", "t1", "t2"]
    finally:
        await reader.close()


def test_cli_reads_a_cleanly_stopped_database_on_a_read_only_volume(
    read_only_volume: Path,
) -> None:
    """The same through ``miminions tasks --db`` (what a user inspecting a backup runs)."""
    db = read_only_volume / "run.db"

    async def make() -> None:
        async with SQLiteStore(str(db)) as writer:
            writer.put_task(Task(task_id="backup-task", name="job", created_at=T0))

    asyncio.run(make())
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_volume)], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "miminions", "tasks", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "backup-task" in result.stdout, result.stdout


# -------------------------------------------------------------- 3. a damaged database at start()
def _damage_tasks_table(db: Path) -> None:
    """Overwrite the root page of the ``tasks`` b-tree with zeros (a damaged disk, a bad
    copy): the header and sqlite_master are intact, the table is not."""
    conn = sqlite3.connect(db)
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'tasks'").fetchone()
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\0" * page_size)


async def test_start_on_a_damaged_database_is_a_configuration_error(tmp_path: Path) -> None:
    """docs/operations.md: "A file that is not a usable database — not SQLite, truncated or
    otherwise damaged, or a directory — is refused by start() ... with a
    ConfigurationError naming the path and what to do (a new file, or a backup), never
    with a raw sqlite3 error." A database whose tasks table is damaged passes the open
    (which reads only sqlite_master, schema_migrations and events) and start() then fails
    in load_tasks with a raw ``sqlite3.DatabaseError: database disk image is malformed``."""
    db = tmp_path / "damaged.db"
    async with SQLiteStore(str(db)) as writer:
        for i in range(500):
            writer.put_task(
                Task(task_id=f"t{i}", name="job", input_data={"pad": "x" * 200}, created_at=T0)
            )
    _damage_tasks_table(db)

    config = RuntimeConfig(storage_path=str(db), default_isolation="inline")
    with pytest.raises((ConfigurationError, sqlite3.Error)) as caught:
        async with AgentRuntime(config=config):
            pass
    error = caught.value
    assert not isinstance(error, sqlite3.Error), f"raw sqlite3 error: {error!r}"
    assert isinstance(error, ConfigurationError), repr(error)
    assert str(db) in str(error)
