"""The built-in store: SQLite through aiosqlite, with group commit.

Writes are queued in memory and committed in batches by one background coroutine. A
``put_*`` keeps a *reference* to the model in a dict keyed by its id, so a task put three
times before the next commit is written once, in its latest state; events are appended to a
list. Everything queued during one event-loop iteration shares a commit, and everything queued
while a commit runs shares the next one. A batch is written with multi-row statements (up to
1024 rows each, see :class:`~miminions.plugins.sqlite_schema.BulkWrite`) handed to the
aiosqlite thread together with their ``COMMIT``: one trip to that thread per batch, not one
per row or per table. Tables, SQL and row codecs are in
:mod:`miminions.plugins.sqlite_schema`.

A failed commit never loses the writes of a whole batch:

* a row whose *data* cannot be stored (a UNIQUE conflict, an int too large for SQLite, a value
  of a type SQLite cannot bind, a value that is not JSON) rejects only its own write: the batch
  is redone statement by statement, a failing statement row by row, and the others commit;
* an operational failure (disk I/O, ``database is locked``, ...) rolls the batch back and puts
  its writes back in the queue, in front of newer ones, and the commit is retried with
  exponential backoff while its waiters keep waiting. After ``commit_attempts`` attempts the
  waiters get a :class:`StoreError`, but the writes stay queued: the next ``put_*``,
  :meth:`SQLiteStore.flush` or :meth:`SQLiteStore.close` tries again, and ``close`` raises if
  it still cannot store them;
* a commit cancelled from outside (the loop cancelling every task at its end, say) gives its
  waiters a :class:`StoreError` and keeps what it did not store queued for the next commit,
  as one that gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, TypeVar

import aiosqlite
import pydantic

from miminions.extras import requested_options
from miminions.kernel.errors import (
    ConfigurationError,
    InvalidStateError,
    RuntimeNotRunningError,
    shown,
)
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.interfaces import EventQuery, StoredAgent
from miminions.kernel.loop_end import LoopEndWatch
from miminions.kernel.models import DeadLetter, Event, EventRecord, RuntimeConfig, Task
from miminions.kernel.ownership import process_exists
from miminions.plugins import sqlite_schema as schema
from miminions.plugins.interpreter_settings import (
    WRITER_SWITCH_INTERVAL,
    hold_none_adapter,
    hold_switch_interval,
)
from miminions.plugins.sqlite_batch import (
    ROW_ERRORS,
    Batch,
    CommitProgress,
    Committed,
    StoreError,
    commit,
    encode_rows,
    execute_and_commit,
    plan_statements,
    read_only,
    rejection,
    retryable,
)
from miminions.plugins.sqlite_event_tail import EventTail

_DELETED = object()  # a queued meta write that removes its key
logger = logging.getLogger(__name__)
_V = TypeVar("_V")

_BUSY_TIMEOUT_MS = 5000
#: SQLite's largest integer (a bound parameter beyond it is an OverflowError).
_MAX_SQL_INTEGER = 2**63 - 1
#: How long a start waits for the database's lock to be let go before it refuses (see _take_lock).
_LOCK_WAIT_SECONDS = 0.05
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
#: How many of its newest events a writable store keeps in memory for queries, by default:
#: a few megabytes (see :mod:`miminions.plugins.sqlite_event_tail`).
EVENT_CACHE_SIZE = 10_000

# Commit retries after an operational failure: 0.05 s, doubling, at most 2 s between attempts.
_COMMIT_ATTEMPTS = 8
_RETRY_DELAY = 0.05
_MAX_RETRY_DELAY = 2.0


class SQLiteStore:
    """A :class:`~miminions.kernel.interfaces.Store` in one SQLite file (WAL mode).

    A writable store holds an exclusive OS lock on ``<path>-lock`` while it is open, so one
    database has one writer (one runtime) at a time, across processes.
    ``readonly=True`` opens an existing database without migrating it or taking the lock, for
    tools that inspect a database another process is writing; every ``put_*`` then raises
    ``InvalidStateError``.
    A commit that fails for an operational reason is tried ``commit_attempts`` times, waiting
    ``retry_delay`` seconds after the first failure, doubling up to ``max_retry_delay``.
    A writable store keeps its last ``event_cache_size`` committed events in memory (see
    :mod:`miminions.plugins.sqlite_event_tail`); 0 reads every event query from the file.
    """

    def __init__(
        self,
        path: str,
        *,
        readonly: bool = False,
        commit_attempts: int = _COMMIT_ATTEMPTS,
        retry_delay: float = _RETRY_DELAY,
        max_retry_delay: float = _MAX_RETRY_DELAY,
        switch_interval: float | None = WRITER_SWITCH_INTERVAL,
        event_cache_size: int = EVENT_CACHE_SIZE,
    ) -> None:
        if commit_attempts < 1:
            raise ConfigurationError(f"commit_attempts must be at least 1, not {commit_attempts}")
        if not 0 <= retry_delay <= max_retry_delay:
            raise ConfigurationError(
                "need 0 <= retry_delay <= max_retry_delay, "
                f"not retry_delay={retry_delay}, max_retry_delay={max_retry_delay}"
            )
        if type(event_cache_size) is not int or not 0 <= event_cache_size <= sys.maxsize:
            raise ConfigurationError(
                f"event_cache_size must be a whole number from 0 to {sys.maxsize}, "
                f"not {shown(event_cache_size)}"
            )
        if switch_interval is not None and not switch_interval > 0:
            raise ConfigurationError(
                f"switch_interval must be positive or None, not {switch_interval!r}"
            )
        self.path = os.fspath(path)
        self.readonly = readonly
        #: Read as an immutable snapshot (see :meth:`_connect_readonly`): later changes to
        #: the database are not seen; open it again to see them.
        self.snapshot = False
        self.switch_interval = switch_interval
        self._release_switch_interval: Callable[[], None] | None = None
        self._release_none_adapter: Callable[[], None] | None = None
        self._loop_end = LoopEndWatch("miminions-sqlite-canary")
        self.commit_attempts = commit_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._conn: aiosqlite.Connection | None = None
        self._closed = False
        self._select_tasks = schema.SELECT_TASKS  # a reader of an older schema: its own
        self._tasks: dict[str, Task] = {}
        # The task object whose whole row each task id last committed. The runtime keeps
        # one live object per task and, once it is stored, changes only its state (see
        # schema.TASK_STATE_COLUMNS): put again, that same object gets a state update. Any
        # other object for the id (a copy, one read back) gets a full upsert.
        self._task_rows: dict[str, Task] = {}
        self._agents: dict[str, StoredAgent] = {}
        self._dead_letters: dict[str, DeadLetter] = {}
        self._meta: dict[str, tuple[str, Any]] = {}
        # Events are turned into rows as they arrive, so their records die at once instead
        # of surviving (and being traversed by the garbage collector) until commit.
        self._events: list[schema.Row] = []
        self.event_cache_size = event_cache_size
        # The store numbers events itself (from the largest id the file ever held): it knows
        # the ids of what it commits, so the newest events can answer queries from memory.
        self._next_event_id = 1
        self._tail: EventTail | None = None
        # Whether committed events older than the tail's may exist (then queries read them).
        self._events_before_tail = False
        self._batch: Batch | None = None  # collecting writes for the next commit
        self._committing: Batch | None = None  # being committed now
        self._committer: asyncio.Task[None] | None = None
        # A failed commit may have left its transaction open (its rollback failed too).
        self._dirty = False
        self._lock_fd: int | None = None  # holds the database's OS lock while open
        self._opened_file: str | None = None  # see database_file()

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
        """Create or open the database and bring its schema up to date.

        A writable store takes the database's lock first (see :meth:`_lock`) and holds it
        until :meth:`close`: a second writable store on the file, in any process, is refused
        with a :class:`ConfigurationError`. A file SQLite cannot use (not a database,
        damaged, a directory) is a ``ConfigurationError`` too, naming the path.
        """
        if self._closed:
            raise RuntimeNotRunningError("this store was closed; create a new SQLiteStore")
        if self._conn is not None:
            return
        # Resolved now: a relative path names a file of the current directory, which the
        # application may change while the store is open.
        self._opened_file = self._file_path()
        if self.readonly:
            self._conn = await self._connect_readonly()
            return
        self._create_private_file()
        self._lock()
        try:
            self._conn = await self._connect_writer()
        except BaseException:
            self._unlock()
            raise
        if self.switch_interval is not None:
            # the writer thread must get the GIL promptly beside a busy loop (see
            # miminions.plugins.interpreter_settings)
            self._release_switch_interval = hold_switch_interval(self.switch_interval)
        # and hold it less long: Nones are bound without a search for their adapter (ditto)
        self._release_none_adapter = hold_none_adapter()
        self._loop_end.start()

    async def _connect_writer(self) -> aiosqlite.Connection:
        conn = await _daemon(aiosqlite.connect(self.path))
        try:
            await schema.refuse_foreign(conn, self.path)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            for pragma in _WRITER_PRAGMAS:
                await conn.execute(pragma)
            await schema.migrate(conn, self.path)
            last_event_id = await self._last_event_id(conn)
            tail = (
                EventTail(self.event_cache_size, last_event_id + 1)
                if self.event_cache_size
                else None
            )
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise _unusable(self.path, exc) from exc
        except BaseException:
            await conn.close()
            raise
        self._next_event_id = last_event_id + 1
        self._events_before_tail = last_event_id > 0
        self._tail = tail
        return conn

    @staticmethod
    async def _last_event_id(conn: aiosqlite.Connection) -> int:
        """The largest event id the database ever held (AUTOINCREMENT's record of it covers
        events since deleted: an id is never given twice)."""
        rows = list(
            await conn.execute_fetchall(
                "SELECT MAX(COALESCE((SELECT MAX(event_id) FROM events), 0),"
                " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))"
            )
        )
        return int(rows[0][0])

    def database_file(self) -> str | None:
        """The file this store opened (absolute, symlinks resolved; of a ``file:`` URI, its
        path part), or None for a database in memory or a store not opened yet. SQLite keeps
        ``-wal`` and ``-shm`` files beside it; this store its ``-lock`` file."""
        return self._opened_file

    def _file_path(self) -> str | None:
        """The database's file, with symlinks resolved (of a ``file:`` URI, its path part),
        or None for a database in memory."""
        path = self.path
        if path.startswith("file:"):  # a URI: the file is its path part
            parts = urllib.parse.urlsplit(path)
            if "mode=memory" in parts.query:
                return None
            path = urllib.parse.unquote(parts.path)
        if path in ("", _MEMORY):
            return None
        return os.path.realpath(path)

    def _lock_path(self) -> str | None:
        """The file whose OS lock marks the database as taken: ``<database>-lock`` beside it,
        or None for a database in memory (private to its connection: nobody to exclude)."""
        path = self._file_path()
        # beside the real file, so every name of it (a symlink, a relative path) shares a lock
        return None if path is None else f"{path}-lock"

    def _lock(self) -> None:
        """Take the database's exclusive lock, or refuse: one writer per database (R-02).

        ``flock`` on a sidecar file, held for as long as the store is open, makes "is anyone
        using this database?" and "it is mine now" one step, which reading and writing a row
        cannot be across processes. The operating system releases it when the holder dies
        however it dies (SIGKILL included), so a crashed runtime never leaves it taken. It is
        not the database file itself: closing any other descriptor of that file in this
        process would drop SQLite's own POSIX locks on it. The holder's pid is written into
        the file, so a refused opener can name it. Read-only stores never take the lock.
        """
        lock_path = self._lock_path()
        if lock_path is None:
            return
        writable = True
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except PermissionError:
            # created by another user who shares the database: locking needs no write access
            writable = False
            try:
                fd = os.open(lock_path, os.O_RDONLY)
            except OSError as exc:
                raise _cannot_lock(self.path, lock_path, exc) from exc
        except OSError as exc:
            raise _cannot_lock(self.path, lock_path, exc) from exc
        try:
            taken = _take_lock(fd)
        except OSError as exc:
            os.close(fd)
            # a file system without flock: SQLite may still work there, and the run
            # record's check still refuses a runtime whose owner is alive
            logger.warning(
                "cannot lock %r (%s); opening %r without its lock", lock_path, exc, self.path
            )
            return
        if not taken:
            try:
                holder = _live_pid(fd)
            finally:
                os.close(fd)
            if holder == os.getpid():
                who = "another store in this process"
            elif holder is not None:
                who = f"a runtime in process {holder}"
            else:
                who = "a runtime in another process"
            raise ConfigurationError(
                f"database {self.path!r} is in use by {who}; one runtime per database (stop "
                "that one, or use another storage_path)"
            ) from None
        self._lock_fd = fd
        if writable:
            with contextlib.suppress(OSError):  # only the refusal message would miss it
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    @property
    def exclusive(self) -> bool:
        """True while this store holds its database's OS lock: no other runtime can have
        the database open, whatever an old run record says (see the store contract)."""
        return self._lock_fd is not None

    def lock_held(self) -> bool | None:
        """Whether a store (a runtime) holds this database's lock right now: for read-only
        tools, which take no lock. None where that cannot be told (a database in memory, a
        file system without locks, an unreadable lock file).

        It asks by taking a shared lock for an instant; a runtime starting at that moment
        waits for it (see :func:`_take_lock`)."""
        lock_path = self._lock_path()
        if lock_path is None:
            return None
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False  # no runtime ever opened it for writing
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return True if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
        finally:
            os.close(fd)  # releases the shared lock, if it was taken
        return False

    def _unlock(self) -> None:
        """Release the lock taken by :meth:`_lock` (closing the descriptor releases it)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _create_private_file(self) -> None:
        """Create the database file readable by its owner only (R-06), if it is new; refuse a
        directory (SQLite would only say it is "unable to open database file").

        The real file: of a ``file:`` URI its path, of a symlink its target (``O_EXCL`` does
        not follow a dangling one, and SQLite would then create the target with the umask).
        """
        path = self._file_path()
        if path is None:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if os.path.isdir(path):
                raise ConfigurationError(
                    f"storage_path {self.path!r} is a directory; give the path of a database "
                    f"file (for example {os.path.join(self.path, 'miminions.db')!r})"
                ) from None
            # An existing file keeps the permissions its owner chose; one this user may not
            # write is refused now (SQLite opens it read-only, and every commit would fail).
            for file in (path, path + "-wal"):
                if os.path.exists(file) and not os.access(file, os.W_OK):
                    raise ConfigurationError(
                        f"cannot open database {self.path!r} for writing: {file!r} is "
                        "read-only for this user; make it writable, or read it with the "
                        "read commands (miminions status / tasks / events)"
                    ) from None
            return
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
        # Quoted as the file system's bytes: a path that is not UTF-8 must still open.
        return f"file:{urllib.parse.quote(os.fsencode(os.path.abspath(self.path)))}?mode=ro"

    async def _connect_readonly(self) -> aiosqlite.Connection:
        uri = self._readonly_uri()
        try:
            return await self._open_readonly(uri)
        except sqlite3.DatabaseError as exc:
            refusal = _log_unreadable_here(self.path)
            if refusal is not None:
                raise refusal from exc
            if not (_needs_writable_directory(exc) or self._on_read_only_volume(exc)):
                raise _unusable(self.path, exc) from exc
        # Reading a WAL database makes SQLite create "<db>-shm" beside it, which a reader
        # who may not write the directory cannot (a backup, another user's data). With no
        # WAL (its runtime stopped cleanly) the file is the whole database: read it as is.
        try:
            conn = await self._open_readonly(uri + "&immutable=1")
        except sqlite3.DatabaseError as exc:
            raise _unusable(self.path, exc) from exc
        self.snapshot = True
        return conn

    def _on_read_only_volume(self, exc: sqlite3.DatabaseError) -> bool:
        """Whether SQLite could not open a database without a write-ahead log in a
        directory nobody may write (a read-only volume: it says SQLITE_CANTOPEN there,
        where a directory this user may not write gets SQLITE_READONLY_*)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        return (
            getattr(exc, "sqlite_errorname", None) == "SQLITE_CANTOPEN"
            and not _has_wal(self.path)
            and not os.access(directory, os.W_OK)
        )

    async def _open_readonly(self, uri: str) -> aiosqlite.Connection:
        """A read-only connection to the miminions database at ``uri`` (SQLite's errors
        pass through)."""
        conn = await _daemon(aiosqlite.connect(uri, uri=True))
        try:
            await conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            # (As a writer checks it: another application's schema_migrations table is
            # not read as a version of ours. It only reads.)
            await schema.refuse_foreign(conn, self.path)
            version = await schema.recorded_version(conn)
            if not version:  # no schema table, or one no migration was recorded in
                raise ConfigurationError(f"{self.path!r} is not a miminions database")
            schema.check_version(self.path, version)
            self._select_tasks = schema.select_tasks(version)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Commit everything queued and release the database; a second call does nothing.

        Waits for a commit in progress (with its retries); writes a failed commit left queued
        get one final round of attempts. Raises :class:`StoreError`, naming how many writes
        were not stored, if that fails too; the database is released either way.
        """
        if self._closed:
            return
        self._closed = True  # refuse new batches; writes already queued still commit
        try:
            if self._batch is not None or self._committing is not None:
                with contextlib.suppress(Exception):  # a failure leaves its writes queued
                    await self.flush()
            if self._queued():  # left behind by a commit that gave up: a final attempt
                try:
                    await self.flush()
                except Exception as exc:
                    raise StoreError(
                        f"closing {self.path!r}: {self._queued()} queued writes could not be "
                        f"stored: {exc}"
                    ) from exc
        finally:
            # Forget the connection before closing it, so a commit still running sees it gone.
            conn, self._conn = self._conn, None
            release, self._release_switch_interval = self._release_switch_interval, None
            release_none, self._release_none_adapter = self._release_none_adapter, None
            try:
                if conn is not None:
                    await conn.close()
            finally:
                self._unlock()  # after the connection: the next owner finds our last commit
                if release is not None:
                    release()
                if release_none is not None:
                    release_none()
                await self._loop_end.close()

    def abandon(self) -> None:
        """Release the database without the event loop the store worked on, which ended
        without closing it (a runtime started in one ``asyncio.run`` and left running): the
        lock goes, the connection is closed in its own thread, and writes still queued are
        lost, as in a crash (the next runtime on the database recovers its work)."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            # Asked from a thread with no event loop, aiosqlite's stop() waits for no future
            # (one of the caller's loop, which may close next, would make the connection's
            # thread fail as it answers).
            stopper = threading.Thread(target=conn.stop, name="miminions-abandon", daemon=True)
            stopper.start()
            stopper.join()
        self._unlock()
        for release in (self._release_switch_interval, self._release_none_adapter):
            if release is not None:
                release()
        self._release_switch_interval = self._release_none_adapter = None

    # ------------------------------------------------------------------------- writes
    def put_task(self, task: Task) -> Committed:
        """Queue an insert-or-update of ``task``; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._tasks[task.task_id] = task
        return Committed(batch, "task", task.task_id)

    def put_agent(self, agent: StoredAgent) -> Committed:
        """Queue an insert-or-update of an agent record; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._agents[agent.agent_id] = agent
        return Committed(batch, "agent", agent.agent_id)

    def put_event(self, event: EventRecord) -> None:
        """Queue an event for the next commit (fire and forget; ``flush`` waits for it)."""
        if self._batch is None:
            self._new_batch()
        event_id = self._next_event_id
        try:
            self._events.append(schema.event_row(event, event_id))
        except Exception as exc:  # a malformed event must not take the batch down
            logger.error("not storing malformed event %r: %s", event, exc)
            return
        self._next_event_id = event_id + 1

    def put_dead_letter(self, dead_letter: DeadLetter) -> Committed:
        """Queue an insert-or-update of a dead letter; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._dead_letters[dead_letter.dead_letter_id] = dead_letter
        return Committed(batch, "dead letter", dead_letter.dead_letter_id)

    def delete_meta(self, key: str) -> Committed:
        """Queue the removal of ``key``; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._meta[key] = (key, _DELETED)
        return Committed(batch, "meta", key)

    def put_meta(self, key: str, value: Any) -> Committed:
        """Queue a write of a small JSON value under ``key``; the result resolves when committed."""
        batch = self._batch or self._new_batch()
        self._meta[key] = (key, value)
        return Committed(batch, "meta", key)

    def _new_batch(self) -> Batch:
        """Start collecting a batch and make sure a committer will pick it up."""
        if self.readonly:
            raise InvalidStateError(f"store {self.path!r} was opened read-only; it takes no writes")
        if self._closed:
            raise RuntimeNotRunningError(f"store {self.path!r} is closed")
        return self._start_batch()

    def _start_batch(self) -> Batch:
        if self._conn is None:
            raise RuntimeNotRunningError("the store is not open; await store.open() first")
        batch = self._batch = Batch(asyncio.get_running_loop(), self._ensure_committer)
        if not self._loop_end.ending():
            # (While the program cancels every task of the loop, a committer started now
            # would be left pending as the loop closes: the writes wait for a commit someone
            # awaits (a flush, close, a write's own commit), or are lost with the loop.)
            self._ensure_committer()
        return batch

    def _queued(self) -> int:
        """How many writes are queued and not committed (including those of a failed commit)."""
        return (
            len(self._tasks)
            + len(self._agents)
            + len(self._dead_letters)
            + len(self._meta)
            + len(self._events)
        )

    def _ensure_committer(self) -> None:
        # (A committer that is done but still set was cancelled before its first step: see
        # _committer_ended, which may not have run yet.)
        if self._committer is None or self._committer.done():
            # A new task's first step runs on the next loop iteration (like call_soon), so
            # every write queued during this iteration joins the same commit.
            committer = asyncio.get_running_loop().create_task(
                self._commit_loop(), name="miminions-sqlite-commit"
            )
            committer.add_done_callback(self._committer_ended)
            self._committer = committer

    def _committer_ended(self, committer: asyncio.Task[None]) -> None:
        """Clean up after a committer cancelled before its first step (cancelling every task
        of a loop can do that), which never ran its own ``finally``: its batch's waiters get
        the cancellation, and the writes stay queued for the next commit (a put or a flush),
        as after a commit that gave up."""
        if self._committer is not committer:
            return  # it ended normally
        self._committer = None
        self._drop_batch()

    def _drop_batch(self) -> None:
        """Settle the collecting batch, which no committer will write, as cancelled: its
        waiters get a StoreError (see Batch.settle); its writes stay queued for the next
        commit (a put, a flush or close)."""
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.settle(asyncio.CancelledError("the store's commit task was cancelled"))

    async def _commit_loop(self) -> None:
        """Commit batches until nothing is queued; writes made meanwhile form the next batch.

        A batch whose commit failed for an operational reason has its writes put back in the
        queue and is retried after a pause; writes queued meanwhile join the retry, and the
        batches involved are settled together once it succeeds or gives up.
        """
        carried: list[Batch] = []  # batches of a failed attempt, waiting for the retry
        failures = 0  # consecutive failed attempts of this round
        try:
            while (batch := self._batch) is not None:
                group = [*carried, batch] if carried else [batch]
                tasks, self._tasks = self._tasks, {}
                agents, self._agents = self._agents, {}
                dead_letters, self._dead_letters = self._dead_letters, {}
                meta, self._meta = self._meta, {}
                events, self._events = self._events, []
                self._batch, self._committing = None, batch
                rejected: dict[tuple[str, str], BaseException] = {}
                progress = CommitProgress()
                try:
                    if self._dirty:
                        await self._roll_back_leftover()
                    await self._write(rejected, tasks, agents, dead_letters, meta, events, progress)
                except BaseException as exc:
                    self._committing = None
                    if progress.handed_over:
                        # Stopped while the database thread commits (cancelled, most
                        # likely). Keyed rows are upserts, so queueing them again is
                        # harmless; events stored already must not be queued again.
                        if progress.committed:
                            self._remember(events, progress)
                            events = []
                        elif progress.committed is None and isinstance(
                            exc, asyncio.CancelledError
                        ):  # not told: most likely stored
                            logger.warning(
                                "commit to %r cancelled while committing; %d events may be "
                                "lost if that commit failed",
                                self.path,
                                len(events),
                            )
                            events = []
                            self._forget_tail()  # it cannot tell whether they are stored
                    self._requeue(tasks, agents, dead_letters, meta, events)
                    failures += 1
                    if failures < self.commit_attempts and retryable(exc):
                        carried = await self._retry_later(batch, group, exc, failures)
                        continue
                    failures, carried = 0, []
                    self._give_up(group, exc)
                    if not isinstance(exc, Exception):  # cancelled, interrupted
                        raise
                else:
                    failures, carried = 0, []
                    for done in group:
                        done.settle(None, rejected)
                finally:
                    self._committing = None
        finally:
            self._committer = None
            # Left by an exit through cancellation: writes queued while it committed
            # would wait for a committer nobody starts (a put starts one only for a batch of
            # its own). Their waiters get the news; the writes stay queued.
            self._drop_batch()

    def _requeue(
        self,
        tasks: dict[str, Task],
        agents: dict[str, StoredAgent],
        dead_letters: dict[str, DeadLetter],
        meta: dict[str, tuple[str, Any]],
        events: list[schema.Row],
    ) -> None:
        """Put the writes of a failed commit back in front of those queued since.

        A key written again meanwhile keeps its newer value; events keep their order.
        """
        self._tasks = _in_front(tasks, self._tasks)
        self._agents = _in_front(agents, self._agents)
        self._dead_letters = _in_front(dead_letters, self._dead_letters)
        self._meta = _in_front(meta, self._meta)
        if events:
            events.extend(self._events)
            self._events = events

    async def _retry_later(
        self, batch: Batch, group: list[Batch], exc: BaseException, failures: int
    ) -> list[Batch]:
        """Wait before the next attempt; return the batches to settle with it.

        Writes queued meanwhile join the retried batch (or the newer batch already collecting
        them), so their waiters and those of ``group`` are answered by the same commit.
        """
        delay = min(self.retry_delay * 2 ** (failures - 1), self.max_retry_delay)
        logger.warning(
            "commit to %r failed (%s: %s); retrying in %.3g s (attempt %d of %d)",
            self.path,
            type(exc).__name__,
            exc,
            delay,
            failures + 1,
            self.commit_attempts,
        )
        if self._batch is None:
            self._batch, carried = batch, group[:-1]
        else:
            carried = group
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError as cancelled:
            if self._batch is batch:
                self._batch = None
            for waiting in group:  # the writes stay queued for a later flush
                waiting.settle(cancelled)
            raise
        return carried

    def _give_up(self, group: list[Batch], exc: BaseException) -> None:
        """Fail the waiters of a commit that could not be made; its writes stay queued."""
        if isinstance(exc, asyncio.CancelledError):
            error: BaseException = exc
        else:
            logger.error(
                "commit to %r failed: %s: %s; %d writes stay queued for the next commit",
                self.path,
                type(exc).__name__,
                exc,
                self._queued(),
            )
            if isinstance(exc, Exception) and not retryable(exc) and not read_only(exc):
                error = exc
            else:
                how = (
                    "(it is read-only for this process)"
                    if read_only(exc)
                    else f"in {self.commit_attempts} attempts"
                    if retryable(exc)
                    else "(interrupted)"
                )
                error = StoreError(
                    f"could not commit to {self.path!r} {how}: {type(exc).__name__}: {exc}; "
                    "the writes stay queued and the next commit (a put, flush() or close()) "
                    "tries again"
                )
                error.__cause__ = exc
        for done in group:
            done.settle(error)

    async def _roll_back_leftover(self) -> None:
        """End a transaction a failed commit could not roll back, before writing anew."""
        conn = self._conn
        if conn is not None and conn.in_transaction:
            await conn.rollback()
        self._dirty = False

    async def _write(
        self,
        rejected: dict[tuple[str, str], BaseException],
        tasks: dict[str, Task],
        agents: dict[str, StoredAgent],
        dead_letters: dict[str, DeadLetter],
        meta: dict[str, tuple[str, Any]],
        events: list[schema.Row],
        progress: CommitProgress,
    ) -> None:
        """Write one batch in one transaction; roll back on failure.

        Writes whose rows cannot be stored are left out and recorded in ``rejected``;
        ``progress`` tells how far the COMMIT got (see :class:`CommitProgress`).
        """
        conn = self._conn
        if conn is None:  # closed underneath us; cannot happen through the public API
            raise RuntimeNotRunningError("the store was closed before the commit")
        # Keyed writes in table order, then events. A keyed row's key is its first column.
        new_tasks, stored_tasks = self._split_stored(tasks)
        writes = (
            (
                schema.UPSERT_TASK,
                "task",
                encode_rows("task", new_tasks, schema.task_row, rejected),
            ),
            (
                schema.UPDATE_TASK_STATE or schema.UPSERT_TASK,
                "task",
                encode_rows("task", stored_tasks, schema.task_state_row, rejected),
            ),
            (
                schema.UPSERT_AGENT,
                "agent",
                encode_rows("agent", agents, schema.agent_row, rejected),
            ),
            (
                schema.UPSERT_DEAD_LETTER,
                "dead letter",
                encode_rows("dead letter", dead_letters, schema.dead_letter_row, rejected),
            ),
            (
                schema.UPSERT_META,
                "meta",
                encode_rows(
                    "meta",
                    {k: item for k, item in meta.items() if item[1] is not _DELETED},
                    schema.meta_row,
                    rejected,
                ),
            ),
            (schema.DELETE_META, "meta", [(k,) for k, item in meta.items() if item[1] is _DELETED]),
            (schema.INSERT_EVENT, "event", events),
        )
        statements = [s for write, _, rows in writes if rows for s in plan_statements(write, rows)]
        try:
            error = await execute_and_commit(conn, statements, progress)
            if error is not None:
                if not isinstance(error, ROW_ERRORS):
                    raise error
                # A row could not be stored (a UNIQUE rule broken, a value SQLite cannot
                # hold). Redo the batch statement by statement, rejecting only the culprits.
                await conn.rollback()
                progress.row_by_row = True
                await self._write_one_by_one(conn, writes, rejected)
                await commit(conn, progress)
            self._remember(events, progress)
            rows = self._task_rows
            for task_id, task in new_tasks.items():
                if ("task", task_id) not in rejected:
                    rows[task_id] = task
        except BaseException:
            try:
                await conn.rollback()
            except Exception:  # the original error is the one to report
                self._dirty = True
                logger.exception("rollback after a failed commit to %r failed", self.path)
            raise

    def _remember(self, events: list[schema.Row], progress: CommitProgress) -> None:
        """Keep the rows of committed events in the tail (see :meth:`query_events`); after
        a commit written row by row, which may have left some out, start the tail again."""
        if progress.row_by_row:
            self._forget_tail()
        elif self._tail is not None and self._tail.add(events):
            self._events_before_tail = True

    def _forget_tail(self) -> None:
        """Empty the tail when the store cannot tell which events a commit stored: they are
        read from the file, and the tail starts again with events not put yet."""
        if self._tail is not None:
            self._tail.reset(self._next_event_id)
            self._events_before_tail = True

    def _split_stored(self, tasks: dict[str, Task]) -> tuple[dict[str, Task], dict[str, Task]]:
        """Split pending task writes into full upserts and state updates (the object whose
        whole row is committed, put again); all are upserts without the state update."""
        known = self._task_rows
        if schema.UPDATE_TASK_STATE is None or not known:
            return tasks, {}
        new: dict[str, Task] = {}
        stored: dict[str, Task] = {}
        for task_id, task in tasks.items():
            (stored if known.get(task_id) is task else new)[task_id] = task
        return new, stored

    async def _write_one_by_one(
        self,
        conn: aiosqlite.Connection,
        writes: Iterable[tuple[schema.BulkWrite, str, list[schema.Row]]],
        rejected: dict[tuple[str, str], BaseException],
    ) -> None:
        """Write rows one statement at a time, in order; a failing statement row by row.

        A row that fails on its own because of its data is left out: a keyed one rejects its
        write (recorded in ``rejected``), an event is logged and dropped. A failed statement
        changes nothing, so the rows before and after it are kept. Any other error is raised.
        """
        for write, kind, rows in writes:
            for start, size in write.plan(len(rows)):
                chunk = rows[start : start + size]
                if size > 1:
                    try:
                        await conn.execute(write.statements[size], list(chain.from_iterable(chunk)))
                        continue
                    except ROW_ERRORS:
                        pass  # find the culprits below
                for row in chunk:
                    try:
                        await conn.execute(write.statements[1], row)
                    except ROW_ERRORS as exc:
                        if self._conn is not conn:  # closed: not the row's fault
                            raise RuntimeNotRunningError(
                                f"store {self.path!r} was closed during a commit"
                            ) from exc
                        if kind == "event":
                            logger.error("not storing event row %r: %s", row, exc)
                            continue
                        logger.error("not storing %s %r: %s", kind, row[0], exc)
                        rejected[(kind, row[0])] = rejection(kind, row[0], exc)

    async def flush(self) -> None:
        """Return once everything queued before the call is committed.

        Writes a failed commit left queued are tried again. Raises the error of that commit
        (a :class:`StoreError` if it gave up retrying) if it failed.
        """
        await self._wait_for_commit(retry_failed=True)

    async def _wait_for_commit(self, *, retry_failed: bool) -> None:
        if self._batch is not None:
            # Normally a committer is already on it; one cancelled with the loop is not.
            self._ensure_committer()
        elif retry_failed and self._committing is None and self._queued():
            self._start_batch()  # writes left queued by a commit that gave up
        batch = self._batch or self._committing
        if batch is not None:
            await batch

    async def _reader(self) -> aiosqlite.Connection:
        """The connection, after pending writes are committed, so callers read their own."""
        # A failed commit was reported to its writers and logged; the read still goes ahead.
        # Writes it left queued are not retried for a read: they wait for the next commit.
        with contextlib.suppress(Exception):
            await self._wait_for_commit(retry_failed=False)
        if self._conn is None:
            raise RuntimeNotRunningError(f"store {self.path!r} is not open")
        return self._conn

    async def _fetch(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        conn = await self._reader()
        try:
            return list(await conn.execute_fetchall(sql, tuple(params)))
        except sqlite3.DatabaseError as exc:
            # Damage found past the pages the open read (a start's loads read them all).
            if getattr(exc, "sqlite_errorname", None) in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
                raise _unusable(self.path, exc) from exc
            raise

    async def get_meta(self, key: str) -> Any:
        """Return the JSON value stored under ``key``, or None."""
        rows = await self._fetch("SELECT value FROM meta WHERE key = ?", (key,))
        return schema.meta_value(key, rows[0][0]) if rows else None

    async def load_meta_prefix(self, prefix: str) -> dict[str, Any]:
        """Return every meta value whose key starts with ``prefix``, by key."""
        # A range on the primary key: the index answers it (LIKE would need escaping).
        rows = await self._fetch(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, prefix + "\U0010ffff"),
        )
        return {row[0]: schema.meta_value(row[0], row[1]) for row in rows}

    async def load_tasks(self) -> list[Task]:
        """Return every stored task, oldest first."""
        return [
            schema.task_from_row(r) for r in await self._fetch(self._select_tasks + " ORDER BY seq")
        ]

    async def list_tasks(self, status: str | None = None, limit: int = 100) -> list[Task]:
        """Return up to ``limit`` tasks, newest first, optionally only those in ``status``."""
        sql, params = self._select_tasks, []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        rows = await self._fetch(sql + " ORDER BY seq DESC LIMIT ?", [*params, _sql_limit(limit)])
        return [schema.task_from_row(r) for r in rows]

    async def count_tasks_by_status(self) -> dict[str, int]:
        """Return how many stored tasks are in each status (statuses with none are omitted)."""
        rows = await self._fetch("SELECT status, COUNT(*) FROM tasks GROUP BY status")
        return {status: count for status, count in rows}

    async def count_unfinished_tasks_by_priority(self) -> dict[tuple[str, int], int]:
        """Return how many pending, blocked and running tasks there are per
        ``(status, priority)`` (pairs with none are omitted)."""
        # The status index narrows the scan to unfinished tasks, however long the history.
        rows = await self._fetch(
            "SELECT status, priority, COUNT(*) FROM tasks"
            " WHERE status IN ('pending', 'blocked', 'running') GROUP BY status, priority"
        )
        return {(status, priority): count for status, priority, count in rows}

    async def load_agents(self) -> list[StoredAgent]:
        """Return every stored agent record, in the order they were first stored."""
        return [schema.agent_from_row(r) for r in await self._fetch(schema.SELECT_AGENTS)]

    async def load_dead_letters(self) -> list[DeadLetter]:
        """Return every stored dead letter, oldest first."""
        rows = await self._fetch(schema.SELECT_DEAD_LETTERS)
        return [schema.dead_letter_from_row(r) for r in rows]

    async def query_events(self, query: EventQuery) -> list[Event]:
        """Return the committed events matching ``query``, oldest first.

        ``since`` and ``until`` are inclusive; with ``newest`` the last ``limit`` matches are
        returned (still oldest first). The events are frozen and may be shared with other
        callers (their details are read-only). The newest events of a writable store come
        from memory (see :mod:`~miminions.plugins.sqlite_event_tail`), older ones and those
        of a task or an agent from the file.
        """
        where, params = schema.event_filters(query)
        if where is None:
            return []
        tail = self._tail
        conn = await self._reader()
        limit = query.limit
        if tail is None or not tail.answers(query):
            return await self._select_events(conn, where, params, query.newest, limit)
        # The tail is read before the next await: a commit meanwhile may push rows out of it
        # that the file's part of the answer (ids below ``start``) would not cover.
        start = tail.start
        recent = tail.select(query)
        if not self._events_before_tail or (
            query.after_id is not None and query.after_id >= start - 1
        ):
            return recent
        if query.newest:
            if limit is not None and len(recent) >= limit:
                return recent
            rest = None if limit is None else limit - len(recent)
            older = await self._select_events(conn, where, params, True, rest, before=start)
            return older + recent
        older = await self._select_events(conn, where, params, False, limit, before=start)
        if limit is not None and len(older) + len(recent) > limit:
            return older + recent[: limit - len(older)]
        return older + recent

    async def _select_events(
        self,
        conn: aiosqlite.Connection,
        where: str,
        params: list[Any],
        newest: bool,
        limit: int | None,
        *,
        before: int | None = None,
    ) -> list[Event]:
        """The stored events matching ``where`` (and below id ``before`` if given), at most
        ``limit``, oldest first: the oldest matches, or with ``newest`` the newest."""
        if before is not None:
            where = f"{where} AND event_id < ?" if where else " WHERE event_id < ?"
            params = [*params, before]
        sql = schema.SELECT_EVENTS + where
        sql += " ORDER BY event_id DESC" if newest else " ORDER BY event_id"
        if limit is not None:
            sql += " LIMIT ?"
            params = [*params, _sql_limit(limit)]
        rows = list(await conn.execute_fetchall(sql, tuple(params)))
        if newest:
            rows.reverse()
        return schema.events_from_rows(rows)


def _sql_limit(limit: int) -> int:
    """``limit`` as SQLite can bind it: a count beyond its largest integer (2**63 - 1)
    means every row anyway."""
    return min(limit, _MAX_SQL_INTEGER)


def _daemon(connection: aiosqlite.Connection) -> aiosqlite.Connection:
    """Make the connection's thread a daemon before it starts: a program that ends without
    stopping its runtime (an exception escaped its loop) must not hang at exit waiting
    for it. Nothing committed is lost; uncommitted writes are, as in any crash."""
    thread = getattr(connection, "_thread", None)  # aiosqlite >= 0.20 keeps it here
    if not isinstance(thread, threading.Thread):
        thread = connection if isinstance(connection, threading.Thread) else None
    if thread is not None and not thread.is_alive():
        thread.daemon = True
        target = getattr(thread, "_target", None)
        if callable(target):
            thread._target = _outliving_closed_loops(target, connection)  # type: ignore[attr-defined]
    return connection


def _outliving_closed_loops(
    serve: Callable[..., None], connection: aiosqlite.Connection
) -> Callable[..., None]:
    """aiosqlite's thread loop ``serve``, kept serving when it fails to answer a call of a
    loop that has closed meanwhile (a program ending without stopping its runtime, a call
    still in the thread): it died of that ("Event loop is closed" on stderr), and the
    connection was then never closed, not even by :meth:`SQLiteStore.abandon`. Nothing
    waits for that answer any more: it is dropped. Once the connection was asked to stop
    and nothing is left to serve (its stop was the call answered), the thread ends."""

    def serve_on(*args: Any, **kwargs: Any) -> None:
        while True:
            try:
                serve(*args, **kwargs)
            except RuntimeError:  # call_soon_threadsafe on a closed loop
                queue = getattr(connection, "_tx", None)
                stopped = not getattr(connection, "_running", True)
                if stopped and (queue is None or queue.empty()):
                    return
                continue
            return

    return serve_on


def _unusable(path: str, exc: sqlite3.DatabaseError) -> ConfigurationError:
    """The error for a file SQLite cannot use as a database, saying what to do about it."""
    name = getattr(exc, "sqlite_errorname", None)
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        advice = (
            "it is not a SQLite database or it is damaged; point storage_path at a new file, "
            "or restore this one from a backup"
        )
    elif name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        advice = "another program holds a write lock on it; try again once it is done"
    else:
        advice = "check that the file and its directory exist and may be read and written"
    return ConfigurationError(f"cannot open database {path!r}: {exc}; {advice}")


def _needs_writable_directory(exc: sqlite3.DatabaseError) -> bool:
    """True for SQLite's refusal to read a WAL database because it cannot create or write
    the ``-shm`` file beside it."""
    return str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_READONLY_")


def _log_unreadable_here(path: str) -> ConfigurationError | None:
    """The error for a database with a write-ahead log in a directory this user cannot
    write (SQLite must create its ``-shm`` file there to read the log); None otherwise."""
    directory = os.path.dirname(os.path.abspath(path))
    if not _has_wal(path) or os.access(directory, os.W_OK):
        return None
    return ConfigurationError(
        f"cannot read database {path!r}: it has a write-ahead log (its '-wal' file: work of "
        "a runtime that is running or did not stop cleanly), and SQLite must create its "
        f"'-shm' file beside it to read that, but the directory {directory!r} is not "
        "writable for you; read it as a user who may write there, or copy the database "
        "with its -wal file to a writable directory"
    )


def _has_wal(path: str) -> bool:
    """True when the database has a non-empty write-ahead log (work not in the file yet)."""
    try:
        return os.path.getsize(f"{path}-wal") > 0
    except OSError:
        return False


def _cannot_lock(path: str, lock_path: str, exc: OSError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot open the lock file {lock_path!r} of database {path!r}: {exc}; the database's "
        "directory must be writable"
    )


def _take_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd``; False if it stays taken by someone else.

    A holder that lets go within a moment (:data:`_LOCK_WAIT_SECONDS`) does not make the
    start fail: a read-only tool asking whether a runtime holds the database
    (:meth:`SQLiteStore.lock_held`) holds the lock for an instant. The same moment lets a
    runtime that just won a start race write its pid, so a refusal can name it (see
    :func:`_live_pid`). Raises OSError where the file system has no such locks.
    """
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def _live_pid(fd: int) -> int | None:
    """The pid the lock's holder wrote into the lock file, if that process is alive.

    A holder writes its pid just after taking the lock; until then the file is empty or
    still names the holder before it, which is gone (None then)."""
    pid = _read_pid(fd)
    return pid if pid is not None and process_exists(pid) else None


def _read_pid(fd: int) -> int | None:
    """The pid a lock holder wrote into the lock file, or None (not written yet, unreadable)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if 0 < pid < 2**31 else None  # a pid_t; anything else is a damaged file


def _in_front(older: dict[str, _V], newer: dict[str, _V]) -> dict[str, _V]:
    """``older`` writes followed by ``newer`` ones: a key written again keeps its new value."""
    if not older:
        return newer
    older.update(newer)
    return older


# ----------------------------------------------------------------------------- plugin hook
@hookimpl(trylast=True)  # built-in: any other store plugin wins
def miminions_make_store(config: RuntimeConfig) -> SQLiteStore:
    """Provide the default store: SQLite at ``config.storage_path``, with the options of
    ``config.plugin_options["sqlite_store"]`` (:class:`SQLiteOptions`)."""
    options = requested_options(config, "sqlite_store", SQLiteOptions) or SQLiteOptions()
    return SQLiteStore(
        config.storage_path,
        switch_interval=options.switch_interval_seconds,
        event_cache_size=options.event_cache_size,
    )


class SQLiteOptions(pydantic.BaseModel):
    """``plugin_options["sqlite_store"]``: ``switch_interval_seconds`` is the longest GIL
    switch interval while the store is open (see :mod:`miminions.plugins.interpreter_settings`);
    None leaves the interpreter's setting alone. ``event_cache_size`` is how many of its
    newest events the store keeps in memory to answer event queries (0: none; see
    :mod:`miminions.plugins.sqlite_event_tail`)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    switch_interval_seconds: pydantic.PositiveFloat | None = WRITER_SWITCH_INTERVAL
    event_cache_size: int = pydantic.Field(
        default=EVENT_CACHE_SIZE, ge=0, le=sys.maxsize, strict=True
    )
