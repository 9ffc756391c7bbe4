"""``miminions top``: a live view of a runtime database while another runtime works on it.

Frames are read through the CLI entry function (``main``, in a thread, as the other CLI
tests do) or a ``python`` subprocess, next to a runtime that keeps writing the database:
one in a child process (``tests.support.crash_child``: two agents hang in their tasks, more
tasks wait) or one in this test's event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, Priority, RuntimeConfig, TaskRequest
from miminions import top as top_module
from miminions.cli import main, short_id
from miminions.demo import display_width, format_table
from miminions.plugins.sqlite_store import SQLiteStore
from miminions.top import fit, run_top
from tests.support import agents
from tests.support.runtime import ROOT, run_child_runtime
from tests.support.waiting import wait_until

HEADER = "miminions top  "
THROUGHPUT = re.compile(
    r"^Throughput  (?P<rate>[\d.]+) tasks/s \((?P<completed>\d+) completed, "
    r"(?P<failed>\d+) failed in (?P<seconds>[\d.]+) s\)$",
    re.MULTILINE,
)
# Ten distinct priorities wait in the paused queue below: more than the queue table lists
# one per row (8), so the least urgent ones share its last row.
WAITING_PRIORITIES = [0, 10, 20, 30, 40, 50, 60, 70, 80, 100]


# --------------------------------------------------------------------------- helpers
async def top(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``miminions top ARGV`` in a thread (the runtime's loop keeps running) and return
    (exit code, stdout, stderr)."""
    code = await asyncio.to_thread(main, ["top", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def frames(output: str) -> list[str]:
    """The frames of a plain (not in-place) ``top`` output, in order."""
    parts = re.split(rf"^(?={HEADER})", output, flags=re.MULTILINE)
    return [part.strip("\n") for part in parts if part.startswith(HEADER)]


def section(frame: str, title: str) -> list[str]:
    """The lines of the frame's section whose title line starts with ``title``."""
    lines = frame.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def table(frame: str, title: str) -> dict[str, list[str]]:
    """The rows (not the header) of a section's table by first cell; cells are split on
    runs of two or more spaces."""
    rows = [re.split(r" {2,}", line.strip()) for line in section(frame, title)[1:]]
    return {row[0]: row[1:] for row in rows}


def status_counts(frame: str) -> dict[str, int]:
    """The frame's "Tasks by status" table as ``{status: count}``."""
    header, counts = section(frame, "Tasks by status")
    return dict(zip(header.split(), map(int, counts.split()), strict=True))


def one_frame(output: str) -> str:
    found = frames(output)
    assert len(found) == 1, output
    return found[0]


# --------------------------------------------------------------------------- runtimes
@pytest.fixture
async def paused_queue(
    make_config: Callable[..., RuntimeConfig], db_path: Path
) -> AsyncIterator[AgentRuntime]:
    """A running runtime (in this process) whose queue is paused: one idle agent, one
    task waiting at each of :data:`WAITING_PRIORITIES` and one blocked behind a waiting
    task."""
    async with AgentRuntime(config=make_config()) as rt:
        await rt.start_agent(await rt.register_agent("idler", agents.EchoAgent, group="crew"))
        await rt.pause_queue()
        requests = [
            TaskRequest(task_id=f"task-{p}", name=f"job-{p}", priority=p)
            for p in WAITING_PRIORITIES
        ]
        requests.append(
            TaskRequest(name="after-first", priority=Priority.MEDIUM, dependencies=["task-0"])
        )
        await rt.submit_tasks(requests)
        yield rt


@pytest.fixture
async def busy(make_config: Callable[..., RuntimeConfig]) -> AsyncIterator[AgentRuntime]:
    """A running runtime (in this process) that completes tasks without a break until the
    test ends: a producer submits a batch, waits for it, submits the next."""
    async with AgentRuntime(config=make_config()) as rt:
        for name in ("echo-1", "echo-2"):
            await rt.start_agent(await rt.register_agent(name, agents.EchoAgent))

        async def produce() -> None:
            while True:
                ids = await rt.submit_tasks([TaskRequest(name="tick") for _ in range(20)])
                await rt.wait_for_task(ids[-1], 10)
                agents.CALLS.clear()  # EchoAgent records every call; keep memory flat

        producer = asyncio.create_task(produce())
        try:
            yield rt
        finally:
            producer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await producer


# --------------------------------------------------------------------------- a live child runtime
@pytest.mark.slow
async def test_once_shows_agents_tasks_queue_and_events_of_a_live_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One frame read while a runtime in another process works: the runtime's pid, each
    agent with its state and current task, unfinished tasks by priority and status, task
    counts and the recent events."""
    db = tmp_path / "child.db"
    child = await run_child_runtime("crash_child", db)
    assert child.stdout is not None
    try:
        async with asyncio.timeout(30):
            ids = json.loads(await child.stdout.readline())

        async def both_agents_busy() -> str | None:
            code, out, err = await top(capsys, "--db", str(db), "--once", "--events", "30")
            assert code == 0, err
            frame = one_frame(out)
            agents_table = table(frame, "Agents")
            busy = [row[3] for row in agents_table.values() if row[2] == "running"]
            return frame if len(busy) == 2 and "-" not in busy else None

        frame = await wait_until(both_agents_busy, "both child agents running a task")
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()

    assert frame.startswith(f"{HEADER}{db}  ")
    assert f"Runtime     running (pid {child.pid}, started" in frame
    assert "Queue       handing out tasks" in frame
    assert "Throughput  - (measured between two refreshes)" in frame  # needs two frames
    assert "Agents (2)" in frame
    agents_table = table(frame, "Agents")
    assert set(agents_table) == {"hang1", "hang2"}
    running = {row[3] for row in agents_table.values()}
    assert running == {
        f"no_retries ({short_id(ids['no_retries'])})",
        f"with_retries ({short_id(ids['with_retries'])})",
    }
    for row in agents_table.values():  # id, group, status, task, restarts
        assert (row[1], row[2], row[4]) == ("-", "running", "0")
    # pending, blocked, running per priority: both hanging tasks are HIGH, the two
    # waiting ones priority 90, the blocked one MEDIUM.
    assert section(frame, "Unfinished tasks by priority")[0].split() == [
        "priority",
        "pending",
        "blocked",
        "running",
    ]
    assert table(frame, "Unfinished tasks by priority") == {
        "HIGH (0)": ["0", "0", "2"],
        "MEDIUM (50)": ["0", "1", "0"],
        "90": ["2", "0", "0"],
        "total": ["2", "1", "2"],
    }
    assert status_counts(frame) == {
        "pending": 2,
        "blocked": 1,
        "running": 2,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "total": 5,
    }
    events = "\n".join(section(frame, "Recent events (last 30)"))
    for kind in ("runtime_started", "queue_paused", "task_enqueued", "queue_resumed"):
        assert f"  {kind}  " in events
    started = [line for line in events.splitlines() if "  task_started  " in line]
    assert {line.split()[5] for line in started} == {"hang1", "hang2"}  # agents by name


# --------------------------------------------------------------------------- task ids
async def test_tasks_created_together_show_different_ids(
    make_config: Callable[..., RuntimeConfig], db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two agents running two tasks of one batch show two different ids, in the agents table
    and in the events: generated ids begin with their creation time, so ids created
    together share their first characters and only the random tail tells them apart."""
    async with AgentRuntime(config=make_config()) as rt:
        pairs: dict[str, str] = {}
        for name in ("gate-a", "gate-b"):
            agent_id = await rt.register_agent(f"runs-{name}", agents.GatedAgent)
            await rt.start_agent(agent_id)
            pairs[name] = agent_id
        ids = await rt.submit_tasks(
            [TaskRequest(name=name, agent_id=agent_id) for name, agent_id in pairs.items()]
        )
        try:

            async def both_running() -> str | None:
                code, out, err = await top(capsys, "--db", str(db_path), "--once", "--events", "50")
                assert code == 0, err
                frame = one_frame(out)
                tasks = [row[3] for row in table(frame, "Agents").values()]
                started = frame.count("  task_started  ")
                return frame if "-" not in tasks and started == 2 else None

            frame = await wait_until(both_running, "both agents running their task, logged")
        finally:
            for name in pairs:
                agents.GATES.setdefault(name, asyncio.Event()).set()
            for task_id in ids:
                await rt.wait_for_task(task_id, 10)

    agents_table = table(frame, "Agents")
    shown: dict[str, str] = {}
    for name, task_id in zip(pairs, ids, strict=True):
        running = re.fullmatch(rf"{name} \((\S+)\)", agents_table[f"runs-{name}"][3])
        assert running is not None, agents_table
        shown[name] = running[1]
        assert shown[name] == ".." + task_id[-10:]  # the random tail, marked as a tail
    assert shown["gate-a"] != shown["gate-b"]
    assert len({row[0] for row in agents_table.values()}) == 2  # agent ids differ too
    events = section(frame, "Recent events (last 50)")[1:]
    started = {line.split()[5]: line.split()[6] for line in events if "  task_started  " in line}
    assert started == {f"runs-{name}": shown[name] for name in pairs}  # agent -> its task


# --------------------------------------------------------------------------- throughput
async def test_two_frames_show_throughput_between_them(
    busy: AgentRuntime, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--frames 2: the first frame has no rate yet; the second gives the tasks completed
    since the first (exactly the difference of the two frames' counts) per second."""

    async def two_frames_with_progress() -> list[str] | None:
        code, out, err = await top(
            capsys, "--db", str(db_path), "--frames", "2", "--interval", "0.2"
        )
        assert code == 0, err
        pair = frames(out)
        assert len(pair) == 2, out
        rate = THROUGHPUT.search(pair[1])
        assert rate is not None, pair[1]
        return pair if int(rate["completed"]) > 0 else None

    first, second = await wait_until(two_frames_with_progress, "tasks completed between frames")
    assert "Throughput  - (measured between two refreshes)" in first
    rate = THROUGHPUT.search(second)
    assert rate is not None
    before, after = status_counts(first), status_counts(second)
    assert int(rate["completed"]) == after["completed"] - before["completed"]
    assert int(rate["failed"]) == after["failed"] - before["failed"] == 0
    assert math.isclose(
        float(rate["rate"]) * float(rate["seconds"]), int(rate["completed"]), rel_tol=0.05
    )
    agents_table = table(second, "Agents")
    assert {name: row[2] for name, row in agents_table.items()} == {
        "echo-1": "running",
        "echo-2": "running",
    }


# --------------------------------------------------------------------------- the queue
async def test_paused_queue_and_many_priorities(
    paused_queue: AgentRuntime, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A paused queue is named; an idle agent has no task; the queue table lists the most
    urgent priorities one per row and sums the least urgent ones in a range row."""
    code, out, err = await top(capsys, "--db", str(db_path), "--once", "--events", "3")
    assert code == 0, err
    frame = one_frame(out)
    assert "Queue       paused since" in frame
    idler = table(frame, "Agents")["idler"]
    assert (idler[1], idler[2], idler[3], idler[4]) == ("crew", "running", "-", "0")
    queue = table(frame, "Unfinished tasks by priority")
    assert list(queue) == [
        "HIGH (0)",
        "10",
        "20",
        "30",
        "40",
        "MEDIUM (50)",
        "60",
        "70-100",
        "total",
    ]
    assert queue["MEDIUM (50)"] == ["1", "1", "0"]  # job-50 pending, after-first blocked
    assert queue["70-100"] == ["3", "0", "0"]
    assert queue["total"] == ["10", "1", "0"]
    assert len(section(frame, "Recent events (last 3)")) == 1 + 3  # header and 3 events


# --------------------------------------------------------------------------- the screen
class FakeTerminal(io.StringIO):
    """Captured output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


async def test_frames_are_redrawn_in_place_on_a_terminal(
    paused_queue: AgentRuntime,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminal: the alternate screen, each frame drawn from the top-left corner and
    cut to the terminal's size; at exit the normal screen, with the last frame on it."""
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("LINES", "12")
    screen = FakeTerminal()
    code = await asyncio.to_thread(run_top, db_path, interval=0.01, frames=2, events=5, out=screen)
    assert code == 0
    output = screen.getvalue()
    assert output.startswith("\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden
    drawn, _, after = output.partition("\x1b[?25h\x1b[?1049l")  # cursor shown, normal screen
    draws = drawn.split("\x1b[H")[1:]
    assert len(draws) == 2
    for draw in draws:
        lines = draw.split("\x1b[K\n")
        assert len(lines) == 12
        assert all(len(line.removesuffix("\x1b[K\x1b[J")) <= 39 for line in lines)
        assert lines[0].startswith(HEADER)
    last = one_frame(after)  # printed in full (not cut) once the view is closed
    assert "Recent events (last 5)" in last
    assert after.endswith("\n")


def test_a_single_frame_on_a_terminal_is_plain_text(
    tmp_path: Path, make_config: Callable[..., RuntimeConfig], db_path: Path
) -> None:
    """--once prints a plain frame even on a terminal (scripts may run it anywhere)."""

    async def fill() -> None:
        async with AgentRuntime(config=make_config()) as rt:
            await rt.register_agent("resting", agents.EchoAgent)

    asyncio.run(fill())
    screen = FakeTerminal()
    assert run_top(db_path, interval=1.0, frames=1, events=10, out=screen) == 0
    frame = one_frame(screen.getvalue())
    assert "\x1b" not in screen.getvalue()
    assert "Runtime     stopped cleanly at" in frame
    assert "Queue " not in frame  # only while a runtime owns the database
    assert table(frame, "Agents")["resting"][2:4] == ["registered", "-"]
    assert section(frame, "Unfinished tasks by priority") == ["  (no unfinished tasks)"]


# --------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
async def test_ctrl_c_exits_0_without_a_traceback(
    paused_queue: AgentRuntime, db_path: Path
) -> None:
    """Ctrl-C (SIGINT) is the way out of the live view: exit status 0, nothing on stderr."""
    # The child installs Python's own SIGINT handler, even if this process ignores SIGINT
    # (a child inherits an ignored signal, and Python would then leave it ignored).
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from miminions.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "top",
        "--db",
        str(db_path),
        "--interval",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None
    try:
        async with asyncio.timeout(30):
            while not (line := (await child.stdout.readline()).decode()).startswith(
                "Recent events"
            ):
                assert line, "top ended before showing a frame"
        child.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, err = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, err.decode()
    assert err.decode() == ""


# --------------------------------------------------------------------------- errors
async def test_missing_database_is_a_one_line_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing database: exit 2, one clear line, and no file created."""
    missing = tmp_path / "nope.db"
    code, out, err = await top(capsys, "--db", str(missing), "--once")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "does not exist" in err
    assert not missing.exists()


async def test_a_file_that_is_not_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not a miminions database: exit 2 with one line naming it."""
    bogus = tmp_path / "notes.db"
    bogus.write_text("not a database\n" * 100)
    code, out, err = await top(capsys, "--db", str(bogus), "--once")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "notes.db" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--interval", "0"],
        ["--interval", "-1"],
        ["--interval", "soon"],
        ["--interval", "nan"],
        ["--frames", "0"],
        ["--events", "0"],
        ["--once", "--frames", "2"],
    ],
)
async def test_bad_options_exit_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed option values are argparse usage errors (exit 2), not tracebacks."""
    code, out, err = await top(capsys, "--db", str(tmp_path / "any.db"), *argv)
    assert (code, out) == (2, "")
    assert "error: argument" in err
    assert "Traceback" not in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``top --help`` describes the command and its options."""
    assert main(["top", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: miminions top")
    for option in ("--db", "--interval", "--once", "--frames", "--events"):
        assert option in out


WIDE = "名前"  # two CJK characters: two terminal columns each


def test_frames_are_cut_to_the_terminal_in_columns_not_characters() -> None:
    """Wide characters (CJK, most emoji) take two columns: a frame cut to a 60-column
    terminal keeps every line within 59 columns, so none wraps and scrolls the view."""
    frame = "\n".join([WIDE * 40, "a" + WIDE * 40, "ascii " * 20, "e\u0301" * 80])
    lines = fit(frame, 60, 10)
    assert [display_width(line) for line in lines] == [59 - 59 % 2, 59, 59, 59]
    assert lines[0] == WIDE * 14 + "名"
    assert lines[3] == "e\u0301" * 59  # a combining accent takes no column of its own


@pytest.mark.parametrize(
    ("text", "columns"),
    [("กิน", 2), ("किंतु", 3), ("e\u0301", 1), ("名前", 4), ("a\u200bb", 2), ("abc", 3)],
    ids=["thai", "devanagari", "combining-accent", "cjk", "zero-width-space", "ascii"],
)
def test_display_width_counts_terminal_columns(text: str, columns: int) -> None:
    """Marks drawn on the character before take no column, whatever their combining
    class (Thai vowel marks have class 0); wide characters take two."""
    assert display_width(text) == columns


def test_tables_align_wide_characters_by_columns() -> None:
    """Table columns line up on a terminal when cells hold wide characters."""
    table = format_table(["name", "status"], [[WIDE * 3, "running"], ["worker", "paused"]])
    header, wide_row, ascii_row = table.splitlines()
    start = display_width(header[: header.index("status")])
    assert display_width(wide_row[: wide_row.index("running")]) == start
    assert display_width(ascii_row[: ascii_row.index("paused")]) == start


async def test_a_snapshot_read_database_is_read_anew_at_each_refresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database in a directory the reader cannot write is read as an immutable snapshot
    (SQLite cannot make its -shm file there), which never sees later changes: top reads it
    anew at each refresh, so the second frame shows what changed after the first."""
    db = tmp_path / "backup.db"
    async with AgentRuntime(config=RuntimeConfig(storage_path=str(db))) as rt:
        await rt.start_agent(await rt.register_agent("echo", agents.EchoAgent, isolation="inline"))
        await rt.wait_for_tasks(await rt.submit_tasks([TaskRequest(name="t")] * 3), 10)

    real_open = SQLiteStore._open_readonly

    async def as_in_a_read_only_directory(store: SQLiteStore, uri: str) -> Any:
        if "immutable=1" not in uri:  # what SQLite answers there
            error = sqlite3.OperationalError("attempt to write a readonly database")
            error.sqlite_errorname = "SQLITE_READONLY_DIRECTORY"
            raise error
        return await real_open(store, uri)

    real_read = top_module.read_snapshot
    reads = 0

    async def read_then_change(store: SQLiteStore, path: Path, events: int) -> Any:
        nonlocal reads
        snapshot = await real_read(store, path, events)
        reads += 1
        if reads == 1:  # between the frames, the database's owner changes it
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE tasks SET status = 'failed' WHERE name = 't'")
            conn.close()  # the last connection: its write-ahead log goes into the file
        return snapshot

    monkeypatch.setattr(SQLiteStore, "_open_readonly", as_in_a_read_only_directory)
    monkeypatch.setattr(top_module, "read_snapshot", read_then_change)
    code, out, err = await top(capsys, "--db", str(db), "--frames", "2", "--interval", "0.01")
    assert code == 0, err
    first, second = frames(out)
    assert (status_counts(first)["completed"], status_counts(first)["failed"]) == (3, 0)
    assert (status_counts(second)["completed"], status_counts(second)["failed"]) == (0, 3)
