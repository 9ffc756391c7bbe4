"""``miminions top``: a live view of a runtime database, refreshed every few seconds.

Every refresh reads the database through the read-only store ``miminions status`` uses
(:func:`miminions.cli.open_database`), one connection kept open between refreshes. Each
query is a single ``SELECT``, hence its own short read transaction: in WAL mode a reader
never blocks the runtime's writes and takes no lock it waits on, and between refreshes the
connection holds nothing at all. Task counts and unfinished tasks come from the status
index, the latest events from the end of the event table.

On a terminal each frame is redrawn in place on the alternate screen (as ``top`` and
``less`` do), cut to the terminal's size, and the last frame is printed on the normal screen
at exit. Anywhere else (a pipe, a file, a test) frames are printed one after another,
separated by a blank line. Ctrl-C ends it with exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from miminions.cli import _QUEUE_EVENTS, _queue_line, _runtime_line, open_database, runtime_running
from miminions.demo import cut_to_columns
from miminions.kernel.errors import MiminionsError
from miminions.kernel.models import TaskStatus
from miminions.kernel.runtime import RUN_META_KEY, build_event_query
from miminions.plugins.sqlite_store import SQLiteStore
from miminions.top_view import AgentLine, RunningTask, Snapshot, render

RUNNING_TASKS_LIMIT = 1000
"""At most this many running tasks are read per refresh to name each agent's current task."""

# Terminal control sequences (ECMA-48 / xterm), written only when stdout is a terminal.
_ENTER = "\x1b[?1049h\x1b[?25l"  # switch to the alternate screen, hide the cursor
_LEAVE = "\x1b[?25h\x1b[?1049l"  # show the cursor, back to the normal screen
_HOME = "\x1b[H"  # cursor to the top-left corner
_CLEAR_LINE = "\x1b[K"  # erase to the end of the line
_CLEAR_BELOW = "\x1b[J"  # erase to the end of the screen


# --------------------------------------------------------------------------- reading
async def read_snapshot(store: SQLiteStore, path: Path, events: int) -> Snapshot:
    """Read one :class:`Snapshot` of the database ``store`` has open (read-only).

    ``events`` is how many of the most recent events it carries.
    """
    meta = await store.get_meta(RUN_META_KEY)
    stored = await store.load_agents()
    running = await store.list_tasks(TaskStatus.RUNNING.value, RUNNING_TASKS_LIMIT)
    counts = await store.count_tasks_by_status()
    unfinished = await store.count_unfinished_tasks_by_priority()
    recent = await store.query_events(build_event_query(limit=events, newest=True))
    live = runtime_running(meta, store)
    queue = None
    if live:  # a paused queue only matters while a runtime runs
        queue = _queue_line(
            await store.query_events(build_event_query(_QUEUE_EVENTS, limit=1, newest=True))
        )
    by_agent: dict[str, list[RunningTask]] = {}
    for task in reversed(running):  # list_tasks is newest first; show oldest first
        if task.assigned_agent_id is not None:
            by_agent.setdefault(task.assigned_agent_id, []).append(
                RunningTask(task.task_id, task.name)
            )
    agents = tuple(
        AgentLine(
            agent_id=agent.agent_id,
            name=agent.name,
            group=agent.spec.group,
            status=agent.status,
            restarts=agent.restart_count,
            running=tuple(by_agent.get(agent.agent_id, ())),
        )
        for agent in stored
    )
    return Snapshot(
        path=str(path),
        taken_at=datetime.now(UTC),
        monotonic=time.monotonic(),
        runtime=_runtime_line(meta, live),
        queue=queue,
        agents=agents,
        counts=counts,
        unfinished=unfinished,
        events=tuple(recent),
        events_limit=events,
    )


# --------------------------------------------------------------------------- the screen
class Screen:
    """Puts frames on ``out``: redrawn in place when ``in_place`` (a terminal), else
    printed one after another. Use it as a context manager: leaving it restores the
    terminal, even when Ctrl-C or an error ends the refresh loop."""

    def __init__(self, out: TextIO, *, in_place: bool) -> None:
        self.out = out
        self.in_place = in_place
        self.frames = 0
        self.last: str | None = None

    def __enter__(self) -> Screen:
        if self.in_place:
            self._write(_ENTER)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.in_place:
            # The alternate screen vanishes with its content: leave the last frame
            # readable on the normal screen, as the final state the user saw.
            self._write(_LEAVE + (self.last + "\n" if self.last is not None else ""))

    def show(self, frame: str) -> None:
        """Display ``frame``, replacing the previous one on a terminal."""
        if self.in_place:
            size = shutil.get_terminal_size()
            lines = fit(frame, size.columns, size.lines)
            body = "".join(line + _CLEAR_LINE + "\n" for line in lines[:-1])
            self._write(_HOME + body + lines[-1] + _CLEAR_LINE + _CLEAR_BELOW)
        else:
            self._write(("\n" if self.frames else "") + frame + "\n")
        self.frames += 1
        self.last = frame

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def fit(frame: str, columns: int, lines: int) -> list[str]:
    """The lines of ``frame`` cut to a ``columns`` x ``lines`` terminal.

    One column is kept free: writing the last column leaves some terminals about to wrap,
    and the erase that follows would then clear that character.
    """
    width = max(columns - 1, 1)
    return [cut_to_columns(line, width) for line in frame.splitlines()[: max(lines, 1)]] or [""]


# --------------------------------------------------------------------------- the loop
async def watch(
    path: Path,
    *,
    interval: float,
    frames: int | None,
    events: int,
    out: TextIO,
    in_place: bool,
) -> None:
    """Show a frame of the database at ``path`` every ``interval`` seconds; stop after
    ``frames`` frames (None: until cancelled).

    The interval runs from the start of one read to the start of the next, so the time a
    read takes does not stretch it. Throughput is measured between consecutive frames.
    """
    async with contextlib.AsyncExitStack() as opened:
        opened_file = file_identity(path)
        store: SQLiteStore | None = await opened.enter_async_context(open_database(path))
        with Screen(out, in_place=in_place) as screen:
            previous: Snapshot | None = None
            while True:
                started = time.monotonic()
                now_file = file_identity(path)
                if now_file != opened_file or (
                    store is not None and store.snapshot and previous is not None
                ):
                    # The file at the path was replaced (deleted and made anew, a backup
                    # restored): show that one, not the one that is gone. An immutable
                    # snapshot never sees later changes either: read the file anew. (Once
                    # a runtime writes it, a write-ahead log appears, which such a reader
                    # cannot read: the open says so, and top ends with that error.)
                    replaced = now_file != opened_file
                    await opened.aclose()
                    store, previous, opened_file = None, None, now_file
                    waiting = "the database file is gone; waiting for it"
                    if now_file is not None:
                        try:
                            store = await opened.enter_async_context(open_database(path))
                        except (MiminionsError, sqlite3.Error) as exc:
                            if not replaced:
                                raise
                            # A new file is made empty, then given its schema (a runtime's
                            # start, a backup being copied): not readable for a moment.
                            opened_file = None  # tried again at the next refresh
                            waiting = f"the new database file cannot be read yet ({exc})"
                if store is None:
                    screen.show(f"miminions top  {path}\n\n  {waiting}")
                else:
                    snapshot = await read_snapshot(store, path, events)
                    screen.show(render(snapshot, previous))
                    previous = snapshot
                if frames is not None and screen.frames >= frames:
                    return
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def file_identity(path: Path) -> tuple[int, int] | None:
    """The device and inode of the file at ``path`` (None: there is none): which file a
    path names, to tell when it was replaced."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def run_top(
    path: Path,
    *,
    interval: float,
    frames: int | None,
    events: int,
    out: TextIO | None = None,
) -> int:
    """Run :func:`watch` on ``out`` (default stdout) until done or Ctrl-C; return 0 (128 +
    its number when SIGTERM or SIGHUP ended it).

    Frames are redrawn in place only when ``out`` is a terminal and more than one frame is
    wanted: a single frame (``--once``) is plain text, whatever ``out`` is.
    """
    stream = out if out is not None else sys.stdout
    in_place = frames != 1 and stream.isatty()
    # Ctrl-C is the normal way out of a live view, not an interruption: exit status 0.
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(
            _until_terminated(
                watch(
                    path,
                    interval=interval,
                    frames=frames,
                    events=events,
                    out=stream,
                    in_place=in_place,
                )
            )
        )
    return 0


async def _until_terminated(view: Coroutine[Any, Any, None]) -> int:
    """Run ``view``; SIGTERM or SIGHUP (``timeout``, ``kill``, a closed terminal) end it
    as Ctrl-C does, so the terminal is given back (the alternate screen left, the cursor
    shown), with the exit status of that signal (128 + its number); else 0."""
    task = asyncio.ensure_future(view)
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def terminate(signum: int) -> None:
        received.append(signum)
        task.cancel()

    handled = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s]
    for signum in handled:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, terminate, signum)
    try:
        await task
    except asyncio.CancelledError:
        if not received:
            raise
        return 128 + received[0]
    finally:
        for signum in handled:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
    return 0


__all__ = [
    "Screen",
    "fit",
    "read_snapshot",
    "run_top",
    "watch",
]
