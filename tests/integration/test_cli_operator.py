"""The ``miminions`` command and ``miminions top`` from an operator's side: the demo next
to an application's database, a database replaced under ``top``, ``top`` terminated, and
non-ASCII event details."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import select
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from miminions import AgentRuntime, BaseAgent, RuntimeConfig, Task, TaskStatus
from miminions import demo as demo_module
from miminions.cli import main
from miminions.kernel.models import JSONObject
from miminions.top import run_top

ROOT = Path(__file__).resolve().parents[2]


class Idle(BaseAgent):
    """An agent that does nothing (only its registration matters here)."""

    async def execute_task(self, task: Task) -> JSONObject:
        return {}


class Failing(BaseAgent):
    """Fails every task with a non-ASCII error message."""

    async def execute_task(self, task: Task) -> JSONObject:
        raise RuntimeError("Zahlung für Kunde Müller abgelehnt")


def inline(db: Path) -> RuntimeConfig:
    return RuntimeConfig(storage_path=str(db), default_isolation="inline")


@pytest.fixture
def fast_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_module, "STEP_SECONDS", 0.02)
    monkeypatch.setattr(demo_module, "PAUSE_SECONDS", 0.1)
    monkeypatch.setattr(demo_module, "TICK_SECONDS", 0.05)


# ------------------------------------------------------------------------------ demo
def test_demo_refuses_an_applications_database(
    fast_demo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``miminions demo`` defaults to ./miminions.db, ``AgentRuntime()``'s default file
    too. Run in an application's directory, it ran the application's held-back task with
    a demo agent (made-up output) and resumed its deliberately paused queue. It refuses
    the database, naming what it found, and leaves it as it was."""
    db = tmp_path / "miminions.db"

    async def application() -> str:
        async with AgentRuntime(config=inline(db)) as rt:
            task_id = await rt.submit_task("charge-customer", {"amount": 100})
            await rt.pause_queue()  # held back on purpose (e.g. the payment API is down)
            return task_id

    task_id = asyncio.run(application())
    assert main(["demo", "--db", str(db), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "task 'charge-customer'" in err
    assert "a database of its own" in err

    async def after() -> tuple[Task, bool]:
        async with AgentRuntime(config=inline(db)) as rt:
            return rt.get_task_status(task_id), rt.queue_paused

    task, queue_paused = asyncio.run(after())
    assert task.status is TaskStatus.PENDING
    assert queue_paused


def test_demo_runs_again_on_its_own_database(
    fast_demo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the demo made does not count as an application's: a second run goes on."""
    db = tmp_path / "demo.db"
    assert main(["demo", "--db", str(db), "--quiet"]) == 0
    assert main(["demo", "--db", str(db), "--quiet"]) == 0
    capsys.readouterr()


# ------------------------------------------------------------------------------ top
class ReplaceAfterFirstFrame(io.StringIO):
    """stdout of ``top`` that, once the first frame is shown, replaces the watched
    database file by another one (as an operator who deletes the database and starts
    over, or restores a backup over it, does while ``top`` runs in another terminal)."""

    def __init__(self, watched: Path, replacement: Path) -> None:
        super().__init__()
        self.watched, self.replacement, self.done = watched, replacement, False

    def flush(self) -> None:
        super().flush()
        if not self.done and "Recent events" in self.getvalue():
            self.done = True
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.watched}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(self.replacement, self.watched)

    def isatty(self) -> bool:
        return False


def test_top_shows_the_database_now_at_its_path_not_a_deleted_one(tmp_path: Path) -> None:
    """Once the file at ``--db`` is replaced, the next frame shows the new file (``top``
    kept its connection to the deleted one, and showed it for good)."""
    watched, replacement = tmp_path / "app.db", tmp_path / "other.db"

    async def fill(db: Path, agent: str) -> None:
        async with AgentRuntime(config=inline(db)) as rt:
            await rt.register_agent(agent, Idle)

    asyncio.run(fill(watched, "old-agent"))
    asyncio.run(fill(replacement, "new-agent"))
    out = ReplaceAfterFirstFrame(watched, replacement)
    assert run_top(watched, interval=0.01, frames=2, events=5, out=out) == 0
    first, second = out.getvalue().split("\n\nmiminions top ")
    assert "old-agent" in first
    assert "new-agent" in second, "the second frame still shows the deleted database:\n" + second


def _read_available(fd: int, until: float, done: bytes, buf: bytearray) -> None:
    while time.monotonic() < until and buf.count(done) < 2:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_top_on_a_terminal_gives_the_terminal_back_when_terminated(tmp_path: Path) -> None:
    """``timeout 60 miminions top ...`` or ``kill <pid>``: SIGTERM ends top as Ctrl-C does,
    giving the terminal back (it left it on the alternate screen with the cursor hidden),
    with the exit status 128 + 15."""
    db = tmp_path / "app.db"

    async def fill() -> None:
        async with AgentRuntime(config=inline(db)) as rt:
            await rt.register_agent("resting", Idle)

    asyncio.run(fill())
    pid, fd = pty.fork()
    if pid == 0:  # the child: top on the pseudo-terminal
        os.chdir(ROOT)
        os.execv(
            sys.executable,
            [sys.executable, "-m", "miminions", "top", "--db", str(db), "--interval", "0.05"],
        )
    buf = bytearray()
    try:
        _read_available(fd, time.monotonic() + 30, b"miminions top", buf)
        assert buf.count(b"miminions top") >= 2, bytes(buf)
        assert b"\x1b[?1049h\x1b[?25l" in buf  # alternate screen, cursor hidden
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                break
            _read_available(fd, time.monotonic() + 0.2, b"\x00never", buf)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("top did not end on SIGTERM")
        _read_available(fd, time.monotonic() + 1, b"\x00never", buf)
    finally:
        os.close(fd)
    assert b"\x1b[?25h\x1b[?1049l" in buf, (
        "SIGTERM left the terminal on the alternate screen with a hidden cursor; "
        f"last output: {bytes(buf[-120:])!r}"
    )
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM


# ------------------------------------------------------------------------------ events
def test_events_table_shows_non_ascii_details_as_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The details column of ``miminions events`` / ``status`` / ``top`` shows printable
    non-ASCII text as it is, as every table cell does (it read ``Zahlung f\\u00fcr``:
    grep found nothing, and each such character took six of the column's 70)."""
    db = tmp_path / "app.db"

    async def fill() -> None:
        async with AgentRuntime(config=inline(db)) as rt:
            agent = await rt.register_agent("payer", Failing)
            await rt.start_agent(agent)
            await rt.wait_for_task(await rt.submit_task("charge"))

    asyncio.run(fill())
    assert main(["tasks", "--db", str(db)]) == 0
    assert "Zahlung für Kunde Müller" in capsys.readouterr().out
    assert main(["events", "--db", str(db), "--type", "task_failed"]) == 0
    out = capsys.readouterr().out
    assert "Zahlung für Kunde Müller" in out, out


# ------------------------------------------------------------------------------ demo, again
def test_demo_says_so_when_it_resumes_an_agent_an_earlier_run_left_paused(
    fast_demo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/quickstart.md: the demo "resumes a queue or agents an interrupted run left
    paused, and says so": for an agent too, in its summary's notes (also with --quiet)."""
    db = tmp_path / "demo.db"

    async def leave_drafter_paused() -> None:
        async with AgentRuntime(config=inline(db)) as rt:
            agent = await rt.register_agent("drafter", demo_module.WriterAgent, group="writers")
            await rt.start_agent(agent)
            await rt.pause_agent(agent)

    asyncio.run(leave_drafter_paused())
    assert main(["demo", "--db", str(db), "--quiet"]) == 0
    out = capsys.readouterr().out
    notes = out.split("Notes", 1)[1].split("Tasks", 1)[0] if "Notes" in out else ""
    assert "drafter" in notes, "the summary does not say the paused agent was resumed:\n" + out


def test_top_says_so_while_the_database_file_is_gone(tmp_path: Path) -> None:
    """Between the deletion of the file and a new one, a frame says the file is gone (and
    ``top`` waits for it) rather than showing the deleted file."""
    db = tmp_path / "app.db"

    async def fill() -> None:
        async with AgentRuntime(config=inline(db)) as rt:
            await rt.register_agent("old-agent", Idle)

    asyncio.run(fill())

    class DeleteAfterFirstFrame(io.StringIO):
        def flush(self) -> None:
            super().flush()
            if "Recent events" in self.getvalue():
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)

        def isatty(self) -> bool:
            return False

    out = DeleteAfterFirstFrame()
    assert run_top(db, interval=0.01, frames=2, events=5, out=out) == 0
    second = out.getvalue().split("\n\nmiminions top ")[1]
    assert "the database file is gone; waiting for it" in second
    assert "old-agent" not in second


def _fill_in_a_thread(db: Path, agent: str) -> None:
    async def fill() -> None:
        config = RuntimeConfig(storage_path=str(db), default_isolation="inline")
        async with AgentRuntime(config=config) as rt:
            await rt.register_agent(agent, Idle)

    # (in a thread of its own: top's loop runs in this one)
    thread = threading.Thread(target=asyncio.run, args=(fill(),))
    thread.start()
    thread.join(30)


def test_top_survives_the_new_file_before_its_schema_is_written(tmp_path: Path) -> None:
    """The database is deleted (top says it is gone and waits), then made anew by a
    runtime, whose start first creates the file empty, then writes the schema (a backup
    copied to the path grows the same way). A frame that met the file in between ended
    top with "not a miminions database" instead of waiting. Here the empty-file step is
    held for one frame, to make the timing deterministic."""
    db = tmp_path / "app.db"
    _fill_in_a_thread(db, "old-agent")

    class Operator(io.StringIO):
        """After frame 1 deletes the database; after frame 2 (gone) a runtime begins
        making it anew (the empty file); after frame 3 the runtime has made it."""

        step = 0

        def flush(self) -> None:
            super().flush()
            frames = self.getvalue().count("miminions top ")
            if frames == 1 and self.step == 0:
                self.step = 1
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            elif frames == 2 and self.step == 1:
                self.step = 2
                os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            elif frames == 3 and self.step == 2:
                self.step = 3
                _fill_in_a_thread(db, "new-agent")

        def isatty(self) -> bool:
            return False

    out = Operator()
    assert run_top(db, interval=0.01, frames=4, events=5, out=out) == 0
    last = out.getvalue().split("\n\nmiminions top ")[-1]
    assert "new-agent" in last, last
