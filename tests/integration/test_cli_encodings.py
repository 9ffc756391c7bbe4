"""The ``miminions`` read commands and the event log with what is not UTF-8: a database
path whose bytes are not UTF-8 (a Latin-1 directory name), filter arguments that are not,
and a terminal whose encoding cannot hold a name. Run as a real command (``python -m
miminions``), since only a process's own argv and stdout carry those bytes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from miminions import AgentRuntime, BaseAgent, RuntimeConfig, Task, TaskStatus


class Quick(BaseAgent):
    """Completes every task at once."""

    async def execute_task(self, task: Task) -> dict[str, bool]:
        return {"ok": True}


async def _fill(db: Path, agent_name: str = "worker") -> None:
    """A cleanly stopped database with one agent that completed one task."""
    config = RuntimeConfig(storage_path=str(db), default_isolation="inline")
    async with AgentRuntime(config=config) as rt:
        await rt.start_agent(await rt.register_agent(agent_name, Quick))
        task = await rt.wait_for_task(await rt.submit_task("job"), 10)
        assert task.status is TaskStatus.COMPLETED


def _miminions(
    *argv: str | bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m miminions ARGV`` (argv may hold bytes that are not UTF-8)."""
    return subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"miminions", *(os.fsencode(a) for a in argv)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "command",
    [["status"], ["tasks"], ["events", "--format", "jsonl"], ["top", "--once"]],
    ids=lambda command: command[0],
)
def test_read_commands_read_a_database_at_a_path_that_is_not_utf8(
    tmp_path: Path, command: list[str]
) -> None:
    """A database the runtime made at a path whose bytes are not UTF-8 ('café' in
    Latin-1) is read by every read command (its read-only URI failed to encode)."""
    db = tmp_path / os.fsdecode(b"caf\xe9-run.db")
    asyncio.run(_fill(db))
    result = _miminions(command[0], "--db", os.fsencode(db), *command[1:])
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr


def test_an_agent_filter_that_is_not_utf8_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """``events --agent`` with bytes that are not UTF-8 is refused like ``--task``: one
    line, exit 2 (it reached sqlite3 and ended in a traceback)."""
    db = tmp_path / "run.db"
    asyncio.run(_fill(db))
    for option in ("--task", "--agent"):
        result = _miminions("events", "--db", str(db), option, b"\xff")
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "UTF-8" in result.stderr


@pytest.mark.parametrize(
    "command", [["status"], ["events"], ["top", "--once"]], ids=lambda c: "-".join(c)
)
def test_a_name_the_terminal_cannot_encode_is_written_escaped(
    tmp_path: Path, command: list[str]
) -> None:
    """On a terminal whose encoding cannot hold a name (Latin-1 and an agent named in
    CJK), the name is written with backslash escapes instead of a traceback."""
    db = tmp_path / "run.db"
    asyncio.run(_fill(db, agent_name="writer-日本"))
    result = _miminions(
        command[0], "--db", str(db), *command[1:], env={"PYTHONIOENCODING": "latin-1"}
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert "writer-\\u65e5\\u672c" in result.stdout


async def test_the_start_of_a_run_at_a_path_that_is_not_utf8_is_in_the_event_log(
    tmp_path: Path,
) -> None:
    """The runtime_started event of a runtime whose database path is not UTF-8 is stored
    (the raw path made it unstorable: it was logged and dropped), its bytes escaped."""
    db = tmp_path / os.fsdecode(b"caf\xe9.db")
    async with AgentRuntime(config=RuntimeConfig(storage_path=str(db))) as rt:
        [started] = await rt.query_events(event_type="runtime_started")
        assert started.details["storage_path"].endswith("caf\\udce9.db")
