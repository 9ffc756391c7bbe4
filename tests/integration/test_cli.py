"""The ``miminions`` command (F-23): demo, status, tasks, events, plugins, and its errors.

Most tests call ``main([...])`` in-process against one database the demo filled (run twice,
with shortened step times so it takes well under a second). The demo's own pauses and
retries are driven by task events, not by timing, so its outcome is deterministic.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from miminions import (
    AgentRuntime,
    RuntimeConfig,
    Task,
    TaskRequest,
    TaskStatus,
    ValidationError,
    __version__,
)
from miminions import demo as demo_module
from miminions.cli import format_tasks, main
from miminions.kernel.errors import PluginError
from miminions.kernel.export import FIELDS
from tests.support.waiting import wait_until

BUILTINS = {
    "priority_scheduling": ["miminions_order_key", "miminions_pick_agent"],
    "asyncio_executor": ["miminions_make_executor"],
    "inline_host": ["miminions_make_host"],
    "sqlite_store": ["miminions_make_store"],
    "logging_monitor": ["miminions_event"],
}
DEMO_TASKS = [plan.name for plan in demo_module.TASKS]
DEMO_AGENTS = {plan.name: plan.group for plan in demo_module.AGENTS}


@dataclass
class DemoRuns:
    """A database the demo ran on twice, and what each run printed."""

    db: Path
    first: str
    second: str
    first_code: int
    second_code: int


def run_main(argv: list[str]) -> tuple[int, str]:
    """Run the command outside pytest's capture (for module-scoped fixtures)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> DemoRuns:
    """Run the demo twice on one database (the second time ``--quiet``), quickly."""
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo_module, "STEP_SECONDS", 0.02)
        mp.setattr(demo_module, "PAUSE_SECONDS", 0.1)
        mp.setattr(demo_module, "TICK_SECONDS", 0.05)
        first_code, first = run_main(["demo", "--db", str(db)])
        second_code, second = run_main(["demo", "--db", str(db), "--quiet"])
    return DemoRuns(db, first, second, first_code, second_code)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``main(argv)`` and return (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first or second cell is ``first_cell``."""
    for line in output.splitlines():
        cells = line.split()
        if cells and first_cell in cells[:2]:
            return cells
    raise AssertionError(f"no row for {first_cell!r} in:\n{output}")


def events_json(
    capsys: pytest.CaptureFixture[str], db: Path, *filters: str
) -> list[dict[str, object]]:
    """Events matching ``filters``, through ``events --format json``."""
    code, out, err = cli(capsys, "events", "--db", str(db), "--format", "json", *filters)
    assert code == 0, err
    records = json.loads(out)
    assert isinstance(records, list)
    return records


# --------------------------------------------------------------------------- demo
def test_demo_completes_every_task_and_summarises_this_run(demo_runs: DemoRuns) -> None:
    """F-23: the demo exits 0; its summary lists the run's tasks, agents, metrics, next steps."""
    assert demo_runs.first_code == 0
    out = demo_runs.first
    assert "Summary of this run: all tasks completed" in out
    for name in DEMO_TASKS:
        row = table_row(out, name)
        assert row[2] == "completed"
    assert table_row(out, "fetch-statistics")[3] == "2"  # failed once, then retried
    assert table_row(out, "collect-sources")[1] == "HIGH"
    assert table_row(out, "scan-archives")[1] == "LOW"
    for name, group in DEMO_AGENTS.items():
        assert table_row(out, name)[1] == group
    assert "tasks submitted 10, completed 10, failed 0, retried 1" in out
    assert "task duration mean" in out
    assert "p95" in out
    assert f"miminions status --db {demo_runs.db}" in out
    assert f"miminions events --db {demo_runs.db}" in out


def test_demo_prints_progress_retry_pause_resume_and_explain(demo_runs: DemoRuns) -> None:
    """F-23/F-24: live progress lines, notable events and one explain() of a blocked task."""
    out = demo_runs.first
    assert "progress  done 0/10" in out
    assert "progress  done 10/10" in out
    assert "RETRY     fetch-statistics" in out
    assert "PAUSED    agent" in out
    assert "PAUSED    the task queue" in out
    assert "RESUMED   the task queue" in out
    assert "RESUMED   agent" in out
    assert out.count("why isn't 'publish' running?") == 1
    assert "- dependency: waiting for prerequisite task(s) 'edit-report'" in out
    assert "- queue_paused:" in out


def test_demo_runs_again_on_the_same_database(
    demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run re-registers the same agents and summarises only its own ten tasks."""
    assert demo_runs.second_code == 0
    out = demo_runs.second
    assert "progress" not in out
    assert "RETRY" not in out
    assert "tasks submitted 10, completed 10, failed 0, retried 1" in out
    task_rows = [
        line for line in out.splitlines() if line.split()[:1] and line.split()[0] in DEMO_TASKS
    ]
    assert len(task_rows) == len(DEMO_TASKS)
    code, status, _ = cli(capsys, "status", "--db", str(demo_runs.db))
    assert code == 0
    assert "Agents (5)" in status  # the same five agents, not ten


@pytest.fixture
def fast_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo with shortened step, pause and tick times."""
    monkeypatch.setattr(demo_module, "STEP_SECONDS", 0.02)
    monkeypatch.setattr(demo_module, "PAUSE_SECONDS", 0.1)
    monkeypatch.setattr(demo_module, "TICK_SECONDS", 0.05)


async def stored_state(db: Path) -> tuple[bool, list[str]]:
    """Whether a runtime started on ``db`` starts with its queue paused, and the agents it
    restores paused."""
    config = demo_module.DEMO_CONFIG.model_copy(update={"storage_path": str(db)})
    async with AgentRuntime(config=config) as rt:
        paused = [agent.name for agent in rt.list_agents(status="paused")]
        return rt.queue_paused, paused


def test_demo_resumes_a_queue_an_earlier_run_left_paused(
    fast_demo: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The queue pause is stored: a run killed during the demo's pause left it paused, and
    the next run on that database resumes it (saying so) instead of waiting for nothing."""
    db = tmp_path / "paused.db"

    async def leave_queue_paused() -> None:
        async with AgentRuntime(storage_path=db) as rt:
            await rt.pause_queue()

    asyncio.run(leave_queue_paused())
    assert asyncio.run(stored_state(db))[0]
    code, out, err = cli(capsys, "demo", "--db", str(db), "--quiet")
    assert code == 0, err
    assert "Summary of this run: all tasks completed" in out
    assert "resumed the task queue, which an earlier run had left paused" in out
    assert asyncio.run(stored_state(db)) == (False, [])


async def test_demo_cancelled_during_its_pause_leaves_nothing_paused(
    fast_demo: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl-C while the demo holds the queue and a writer paused: both are resumed before
    the runtime stops, so nothing stays paused in the database."""
    monkeypatch.setattr(demo_module, "PAUSE_SECONDS", 3600.0)  # ended by the cancel below
    db = tmp_path / "cancelled.db"
    out = io.StringIO()
    run = asyncio.create_task(demo_module.run_demo(db, out=out))
    await wait_until(lambda: "PAUSED    the task queue" in out.getvalue(), "the demo's pause")
    assert "PAUSED    agent" in out.getvalue()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert "RESUMED   the task queue" in out.getvalue()
    assert await stored_state(db) == (False, [])


def test_demo_that_runs_out_of_time_says_so_in_the_summary(
    fast_demo: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """When the demo gives up waiting, it still prints its summary, with a note saying so,
    and exits 1 (no TimeoutError traceback). A zero deadline expires at the first wait."""
    monkeypatch.setattr(demo_module, "RUN_TIMEOUT_SECONDS", 0)
    code, out = run_main(["demo", "--db", str(tmp_path / "late.db"), "--quiet"])
    assert code == 1
    assert "Summary of this run: SOME TASKS DID NOT COMPLETE" in out
    assert "  - gave up waiting after 0 s; not completed: " in out
    assert table_row(out, "publish")[2] != "completed"


# --------------------------------------------------------------------------- status / tasks
def test_status_shows_agents_counts_and_recent_events(
    demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]
) -> None:
    """F-23: status lists agents (name, group, status, isolation), counts and recent events."""
    code, out, err = cli(capsys, "status", "--db", str(demo_runs.db))
    assert code == 0, err
    assert "stopped cleanly" in out
    for name, group in DEMO_AGENTS.items():
        assert table_row(out, name)[1:4] == [group, "stopped", "inline"]
    header = table_row(out, "pending")
    counts = dict(zip(header, table_row(out, "0"), strict=True))  # the counts row
    assert counts["completed"] == "20"
    assert counts["total"] == "20"
    assert counts["failed"] == "0"
    assert "Recent events (last 10)" in out
    assert "runtime_stopped" in out  # the most recent event of the second run


def test_tasks_table_and_filters(demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]) -> None:
    """tasks shows id, name, priority, status, attempts, agent, error; --status and --limit."""
    code, out, err = cli(capsys, "tasks", "--db", str(demo_runs.db), "--status", "completed")
    assert code == 0, err
    assert out.splitlines()[1].split() == [
        "id",
        "name",
        "priority",
        "status",
        "attempts",
        "agent",
        "error",
    ]
    row = table_row(out, "fetch-statistics")
    assert row[2:5] == ["HIGH", "completed", "2"]
    assert row[5] in DEMO_AGENTS
    assert "DemoError" not in out  # a completed task carries no error; the log keeps it
    code, out, _ = cli(capsys, "tasks", "--db", str(demo_runs.db), "--limit", "3")
    assert code == 0
    assert len(out.splitlines()) == 2 + 3
    assert table_row(out, "publish")  # newest first: the last task of the second run
    for huge in ("tasks", "events"):  # beyond SQLite's largest integer: no limit at all
        code, out, err = cli(capsys, huge, "--db", str(demo_runs.db), "--limit", str(2**64))
        assert code == 0, err
        assert "publish" in out
    code, out, _ = cli(capsys, "tasks", "--db", str(demo_runs.db), "--status", "FAILED")
    assert code == 0
    assert "(no tasks)" in out


@pytest.mark.parametrize(
    ("status", "retry_count", "started", "attempts"),
    [
        (TaskStatus.BLOCKED, 0, False, "0"),
        (TaskStatus.PENDING, 0, False, "0"),
        (TaskStatus.RUNNING, 0, True, "1"),
        (TaskStatus.PENDING, 1, True, "1"),  # waiting out the backoff of its first retry
        (TaskStatus.RUNNING, 1, True, "2"),
        (TaskStatus.FAILED, 2, True, "3"),
    ],
)
def test_tasks_table_counts_the_attempts_made(
    status: TaskStatus, retry_count: int, started: bool, attempts: str
) -> None:
    """The attempts column counts attempts begun: a retry still in its backoff is not."""
    now = datetime.now(UTC)
    task = Task(
        task_id="t1",
        name="job",
        status=status,
        retry_count=retry_count,
        max_retries=3,
        created_at=now,
        started_at=now if started else None,
    )
    row = format_tasks([task], {}).splitlines()[1].split()
    assert row[3:5] == [status.value, attempts]


AWKWARD_AGENT = "night\nshift\x1b[31m"
AWKWARD_TASK = "two\nlines\tand\rmore"


@pytest.fixture(scope="module")
def awkward_names_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with an agent and a task whose names hold control characters."""
    db = tmp_path_factory.mktemp("awkward") / "awkward.db"

    async def fill() -> None:
        config = RuntimeConfig(storage_path=str(db), default_isolation="inline")
        async with AgentRuntime(config=config) as rt:
            agent_id = await rt.register_agent(AWKWARD_AGENT, demo_module.ResearchAgent)
            await rt.start_agent(agent_id)
            task_id = await rt.submit_task(AWKWARD_TASK, {"steps": 1}, agent_id=agent_id)
            assert (await rt.wait_for_task(task_id, 10)).status is TaskStatus.COMPLETED

    asyncio.run(fill())
    return db


@pytest.mark.parametrize("command", ["status", "tasks", "top"])
def test_text_tables_show_control_characters_escaped(
    command: str, awkward_names_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newline or terminal escape in a name would break a table row (or the terminal):
    text tables show them escaped, each row on one line."""
    argv = [command, "--db", str(awkward_names_db), *(["--once"] if command == "top" else [])]
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    for raw in ("\x1b", "\t", "\r"):
        assert raw not in out
    agent = "night\\nshift\\x1b[31m"
    if command == "tasks":
        assert table_row(out, "two\\nlines\\tand\\rmore")[-1] == agent
    else:
        assert table_row(out, agent)[0] == agent


def test_event_exports_keep_control_characters_exact(
    awkward_names_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only text tables escape: the exported events carry the names as they are."""
    records = events_json(capsys, awkward_names_db, "--type", "agent_registered", "task_enqueued")
    names = []
    for record in records:  # oldest first
        details = record["details"]
        assert isinstance(details, dict)
        names.append(details["name"])
    assert names == [AWKWARD_AGENT, AWKWARD_TASK]


# --------------------------------------------------------------------------- events
def test_events_text_table(demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]) -> None:
    """The default format is a readable table with agents by name."""
    code, out, err = cli(capsys, "events", "--db", str(demo_runs.db), "--type", "agent_paused")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["id", "time", "(UTC)", "type"]
    assert len(lines) == 1 + 2  # one pause per run
    assert all(
        line.split()[3] == "agent_paused" and line.split()[5] in DEMO_AGENTS for line in lines[1:]
    )


def test_event_tables_tell_tasks_created_together_apart(
    make_config: Callable[..., RuntimeConfig], db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Generated task ids begin with their creation time, so the ids of one batch share
    their first characters: the events tables of ``events`` and ``status`` show each id's
    random tail instead, and every task of the batch keeps its own id."""

    async def submit() -> list[str]:
        async with AgentRuntime(config=make_config()) as rt:
            return await rt.submit_tasks([TaskRequest(name=f"batch-{n}") for n in range(3)])

    ids = asyncio.run(submit())
    tails = {".." + task_id[-10:] for task_id in ids}
    assert len(tails) == 3
    for command in (["events", "--type", "task_enqueued"], ["status"]):
        code, out, err = cli(capsys, command[0], "--db", str(db_path), *command[1:])
        assert code == 0, err
        # id, date, time, type, severity, agent, task, details
        enqueued = [line.split() for line in out.splitlines() if "  task_enqueued  " in line]
        assert {row[6] for row in enqueued} == tails, out
        assert len(enqueued) == 3


@pytest.mark.parametrize("to_file", [False, True])
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_events_export_formats_parse(
    demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str], tmp_path: Path, fmt: str, to_file: bool
) -> None:
    """F-12/F-23: jsonl lines are JSON objects, csv has the header, json is a list."""
    argv = ["events", "--db", str(demo_runs.db), "--format", fmt]
    if to_file:
        argv += ["--output", str(tmp_path / f"events.{fmt}")]
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    if to_file:
        assert out == ""
        assert "wrote" in err
        out = (tmp_path / f"events.{fmt}").read_text(encoding="utf-8")
    if fmt == "jsonl":
        records = [json.loads(line) for line in out.splitlines()]
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(out))
        assert tuple(reader.fieldnames or ()) == FIELDS
        records = list(reader)
    else:
        records = json.loads(out)
        assert isinstance(records, list)
    types = {record["event_type"] for record in records}
    assert {
        "runtime_started",
        "task_retry_scheduled",
        "agent_paused",
        "agent_resumed",
        "queue_paused",
    } <= types
    assert len(records) > 50  # exports are not cut to the text table's default


def test_demo_database_records_retry_and_pause_events(
    demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's retry, pauses and resumes are in the event log, twice (two runs)."""
    db = demo_runs.db
    kinds = [
        "task_retry_scheduled",
        "agent_paused",
        "agent_resumed",
        "queue_paused",
        "queue_resumed",
    ]
    records = events_json(capsys, db, "--type", *kinds)
    counts = {kind: sum(1 for r in records if r["event_type"] == kind) for kind in kinds}
    assert counts == dict.fromkeys(kinds, 2)
    completed = events_json(capsys, db, "--type", "task_completed")
    assert len(completed) == 20


def test_events_filters(demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]) -> None:
    """--type (repeatable), --agent (id or name), --task, --severity, --since, --until,
    --limit."""
    db = demo_runs.db
    both = events_json(capsys, db, "--type", "agent_paused", "--type", "queue_paused")
    assert {r["event_type"] for r in both} == {"agent_paused", "queue_paused"}
    retry = events_json(capsys, db, "--type", "task_retry_scheduled")[0]
    by_name = events_json(capsys, db, "--agent", "scout")
    by_id = events_json(capsys, db, "--agent", str(by_name[0]["agent_id"]))
    assert by_name == by_id
    assert {r["agent_id"] for r in by_name} == {by_name[0]["agent_id"]}
    for_task = events_json(capsys, db, "--task", str(retry["task_id"]))
    assert {r["task_id"] for r in for_task} == {retry["task_id"]}
    assert {"task_enqueued", "task_retry_scheduled", "task_completed"} <= {
        r["event_type"] for r in for_task
    }
    warnings = events_json(capsys, db, "--severity", "warning")
    assert warnings
    assert {r["severity"] for r in warnings} <= {"warning", "error", "critical"}
    everything = events_json(capsys, db)
    last = everything[-1]
    assert events_json(capsys, db, "--since", str(last["timestamp"]))[-1] == last
    assert events_json(capsys, db, "--since", "2999-01-01") == []
    first = everything[0]
    assert events_json(capsys, db, "--until", str(first["timestamp"]))[0] == first
    assert events_json(capsys, db, "--until", "2000-01-01") == []
    window = events_json(
        capsys, db, "--since", str(first["timestamp"]), "--until", str(last["timestamp"])
    )
    assert window == everything
    # Names in any case, as tasks --status takes them.
    assert events_json(capsys, db, "--severity", "WARNING") == warnings
    assert events_json(capsys, db, "--type", "TASK_RETRY_SCHEDULED")[0] == retry
    newest = events_json(capsys, db, "--limit", "5")
    assert newest == everything[-5:]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("command", ["status", "tasks", "events"])
def test_missing_database_is_a_one_line_usage_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing database: exit 2, one clear line, and no file created by the read."""
    missing = tmp_path / "nope.db"
    code, out, err = cli(capsys, command, "--db", str(missing))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "does not exist" in err
    assert "Traceback" not in err
    assert not missing.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["events", "--type", "bogus"], "event_type 'bogus' is not one of"),
        (["events", "--severity", "loud"], "severity 'loud' is not one of"),
        (["tasks", "--status", "sleeping"], "status 'sleeping' is not one of"),
    ],
)
def test_bad_filter_values_are_one_line_usage_errors(
    demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Unknown event type, severity or status: exit 2 with one line naming the choices."""
    code, out, err = cli(capsys, *argv, "--db", str(demo_runs.db))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "--since", "yesterday"],
        ["events", "--limit", "0"],
        ["events", "--format", "xml"],
        ["tasks", "--limit", "many"],
    ],
)
def test_bad_argument_values_exit_2(
    demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Malformed option values are argparse usage errors (exit 2), not tracebacks."""
    code, _, err = cli(capsys, *argv, "--db", str(demo_runs.db))
    assert code == 2
    assert "error: argument" in err
    assert "Traceback" not in err


def test_a_file_that_is_not_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not a miminions database: exit 2 with a clear line."""
    bogus = tmp_path / "notes.db"
    bogus.write_text("not a database\n" * 100)
    code, _, err = cli(capsys, "status", "--db", str(bogus))
    assert code == 2
    assert err.count("\n") == 1
    assert "notes.db" in err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command the help goes to stderr."""
    code, _, err = cli(capsys)
    assert code == 2
    assert "demo" in err
    assert "status" in err
    assert "events" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version."""
    code, out, _ = cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"miminions {__version__}"


@pytest.mark.parametrize("command", [[], ["demo"], ["status"], ["tasks"], ["events"], ["plugins"]])
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every command has --help and exits 0."""
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0
    assert out.startswith("usage: miminions")


@pytest.mark.slow
def test_module_entry_point_help() -> None:
    """``python -m miminions.cli --help`` works in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "miminions.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: miminions" in result.stdout
    for command in ("demo", "status", "tasks", "events", "plugins"):
        assert command in result.stdout


# --------------------------------------------------------------------------- plugins
def test_plugins_lists_builtins_and_their_hooks(capsys: pytest.CaptureFixture[str]) -> None:
    """F-21/F-23: every built-in is listed with the hooks it implements."""
    code, out, err = cli(capsys, "plugins")
    assert code == 0, err
    for name, hooks in BUILTINS.items():
        row = " ".join(table_row(out, name))
        assert "built-in" in row
        for hook in hooks:
            assert hook in row


def test_plugins_disable(capsys: pytest.CaptureFixture[str]) -> None:
    """--disable leaves a plugin out; an unknown name is a usage error."""
    code, out, _ = cli(capsys, "plugins", "--disable", "logging_monitor")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()[2:] if line.startswith("  ")]
    assert "logging_monitor" not in listed
    assert "sqlite_store" in listed
    assert "Disabled: logging_monitor" in out
    code, _, err = cli(capsys, "plugins", "--disable", "no_such_plugin")
    assert code == 2
    assert "no_such_plugin" in err
    assert err.count("\n") == 1


def test_plugins_refuses_to_disable_a_required_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    """What AgentRuntime(disable=["sqlite_store"]) refuses (nothing else provides a store)
    ``plugins --disable sqlite_store`` refuses too, in one line, exit 2."""
    with pytest.raises(PluginError) as refused:
        AgentRuntime(disable=["sqlite_store"])
    code, out, err = cli(capsys, "plugins", "--disable", "sqlite_store")
    assert code == 2
    assert out == ""
    assert err == f"miminions: error: {refused.value}\n"


# --------------------------------------------------------------------------- live database
@pytest.fixture
async def live_runtime(tmp_path: Path) -> AsyncIterator[tuple[AgentRuntime, Path]]:
    """A running runtime with one agent that ran one task and one pending task waiting
    for that agent, which is paused."""
    db = tmp_path / "live.db"
    config = RuntimeConfig(storage_path=str(db), retry_backoff_base_seconds=0.01)
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent("worker", demo_module.ResearchAgent, group="crew")
        await rt.start_agent(agent_id)
        done = await rt.submit_task("first-job", {"steps": 1})
        assert (await rt.wait_for_task(done, 10)).status is TaskStatus.COMPLETED
        await rt.pause_agent(agent_id)
        await rt.submit_task("waiting-job", {"steps": 1}, agent_id=agent_id)
        yield rt, db


async def test_reading_a_database_a_live_runtime_holds_open(
    live_runtime: tuple[AgentRuntime, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """F-23: status, tasks and events read a database while its runtime runs (read-only)."""
    rt, db = live_runtime
    code = await asyncio.to_thread(main, ["status", "--db", str(db)])
    out = capsys.readouterr().out
    assert code == 0
    assert "Runtime   running (pid" in out
    assert "Queue     handing out tasks" in out
    assert table_row(out, "worker")[1:4] == ["crew", "paused", "process"]
    code = await asyncio.to_thread(main, ["tasks", "--db", str(db), "--status", "pending"])
    out = capsys.readouterr().out
    assert code == 0
    assert table_row(out, "waiting-job")[2:4] == ["MEDIUM", "pending"]
    code = await asyncio.to_thread(
        main, ["events", "--db", str(db), "--format", "jsonl", "--agent", "worker"]
    )
    out = capsys.readouterr().out
    assert code == 0
    types = [json.loads(line)["event_type"] for line in out.splitlines()]
    assert types[-1] == "agent_paused"
    assert "task_completed" in types
    await rt.pause_queue()
    assert await asyncio.to_thread(main, ["status", "--db", str(db)]) == 0
    assert "Queue     paused since" in capsys.readouterr().out
    await rt.resume_queue()
    # The runtime keeps working after being read.
    assert rt.is_running
    assert rt.list_tasks(status="pending")[0].name == "waiting-job"


async def test_status_after_a_crash_whose_pid_now_belongs_to_another_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run record of a runtime that crashed names its pid, which may be another
    process's by now (here: our parent). Nobody holds the database's lock, so status says
    the runtime is not running, and the next start recovers its work."""
    db = tmp_path / "crashed.db"
    async with AgentRuntime(config=RuntimeConfig(storage_path=str(db))):
        pass
    with sqlite3.connect(db) as conn:
        record = json.dumps({"pid": os.getppid(), "clean": False, "started_at": 0})
        conn.execute("UPDATE meta SET value = ? WHERE key = 'runtime.run'", (record,))
    conn.close()
    assert await asyncio.to_thread(main, ["status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"Runtime   not running: pid {os.getppid()} did not stop cleanly" in out
    assert "Queue" not in out


async def test_status_and_top_of_a_runtime_whose_pid_is_not_visible_from_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A live runtime in another pid namespace (a container sharing the database through
    a volume) records a pid this process cannot see; it holds the database's lock, so
    status and top say it is running (not "did not stop cleanly")."""
    db = tmp_path / "elsewhere.db"
    async with AgentRuntime(config=RuntimeConfig(storage_path=str(db))) as rt:
        invisible = await asyncio.to_thread(_a_pid_that_is_gone)
        record = {"pid": invisible, "clean": False, "started_at": 0}
        rt.store.put_meta("runtime.run", record)
        await rt.store.flush()
        for argv in (["status"], ["top", "--once"]):
            assert await asyncio.to_thread(main, [*argv, "--db", str(db)]) == 0
            out = capsys.readouterr().out
            assert f"running (pid {invisible}, a process not visible from here" in out, out
            assert "not running" not in out
            assert "Queue" in out or "handing out tasks" in out


def _a_pid_that_is_gone() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(child.stdout)


@pytest.fixture(scope="module")
def damaged_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database whose agent row, task row and a meta value were damaged by hand."""
    db = tmp_path_factory.mktemp("damaged") / "damaged.db"

    async def fill() -> None:
        async with AgentRuntime(config=RuntimeConfig(storage_path=str(db))) as rt:
            await rt.register_agent("worker", demo_module.ResearchAgent)
            await rt.submit_task("job")

    asyncio.run(fill())
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE agents SET spec = '{bad'")
        conn.execute("UPDATE tasks SET status = 'no-such-status'")
        conn.execute("UPDATE meta SET value = '{bad' WHERE key = 'runtime.run'")
    conn.close()
    return db


@pytest.mark.parametrize("command", [["status"], ["tasks"], ["top", "--once"]])
def test_a_damaged_row_is_a_one_line_error(
    damaged_db: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row the reader cannot decode is reported in one line naming it (exit 2), not
    with a traceback."""
    code, _out, err = cli(capsys, command[0], "--db", str(damaged_db), *command[1:])
    assert code == 2
    assert err.startswith("miminions: error: stored ")
    assert "is malformed" in err
    assert len(err.splitlines()) == 1


async def test_a_runtime_refuses_a_damaged_database_with_a_typed_error(damaged_db: Path) -> None:
    """Starting on a database with a damaged row raises ValidationError naming the row."""
    with pytest.raises(ValidationError, match="is malformed"):
        await AgentRuntime(config=RuntimeConfig(storage_path=str(damaged_db))).start()


# --------------------------------------------------------------------------- console script
@pytest.mark.slow
def test_console_script_runs_the_real_demo(tmp_path: Path) -> None:
    """The installed ``miminions`` script runs the demo at its normal pace and exits 0."""
    script = Path(sys.executable).with_name("miminions")
    if not script.exists():
        pytest.skip("the miminions console script is not installed in this environment")
    db = tmp_path / "real.db"
    result = subprocess.run(
        [str(script), "demo", "--db", str(db), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "all tasks completed" in result.stdout
    assert result.stderr == ""
    assert db.exists()
    # what to try next names the script as it was run: a venv need not be activated
    assert f"  {script} status --db {db}" in result.stdout


# --------------------------------------------------------------------------- output errors
FULL = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk


@pytest.mark.skipif(not FULL.is_char_device(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "argv",
    [["status"], ["tasks"], ["events", "--format", "csv"], ["top", "--once"]],
    ids=lambda argv: "-".join(argv),
)
def test_stdout_on_a_full_disk_is_a_one_line_error(demo_runs: DemoRuns, argv: list[str]) -> None:
    """``miminions status --db x > file`` on a full disk: one line and exit 1, no
    traceback (from the write or from the flush at exit)."""
    with FULL.open("w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "miminions", argv[0], "--db", str(demo_runs.db), *argv[1:]],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr == "miminions: error: cannot write the output: No space left on device\n"


@pytest.mark.skipif(not FULL.is_char_device(), reason="needs /dev/full")
def test_export_to_a_full_disk_is_a_one_line_error(
    demo_runs: DemoRuns, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        capsys, "events", "--db", str(demo_runs.db), "--format", "jsonl", "--output", str(FULL)
    )
    assert code == 2
    assert err == f"miminions: error: cannot write {str(FULL)!r}: No space left on device\n"
    assert FULL.is_char_device()  # reported, never removed


def test_export_onto_the_database_itself_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read command never overwrites the database it reads (or its -wal, -shm, -lock
    files), whatever name the output is given."""
    db = tmp_path / "run.db"
    asyncio.run(_stopped_database(db))
    (tmp_path / "alias.db").symlink_to(db)
    before = db.read_bytes()
    for target in (db, tmp_path / "alias.db", Path(f"{db}-wal"), Path(f"{db}-lock")):
        code, _, err = cli(
            capsys, "events", "--db", str(db), "--format", "json", "--output", str(target)
        )
        assert code == 2
        assert "is the database" in err
    assert db.read_bytes() == before
    assert cli(capsys, "status", "--db", str(db))[0] == 0


# ------------------------------------------------------- a directory the reader cannot write
NOBODY = 65534


def _as_reader(*argv: str) -> subprocess.CompletedProcess[str]:
    """``miminions ARGV`` as a user who may read the database but not write its directory:
    this user when not root (the directory's mode stops it); as root (whom modes do not
    stop), the user ``nobody`` through ``setpriv``."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root, reading as another user needs setpriv")
        as_user = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

    def run(*python_args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_user, sys.executable, *python_args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )

    if as_user and run("-c", "import miminions").returncode != 0:
        # e.g. a checkout in a private directory: nobody cannot run this interpreter there
        pytest.skip("the user nobody cannot import miminions from this interpreter")
    return run("-m", "miminions", *argv)


@pytest.fixture
def unwritable_directory() -> Iterator[Path]:
    """A directory others may read but nobody but root may write (outside pytest's private
    temporary directory, which ``nobody`` could not enter)."""
    base = Path(tempfile.mkdtemp(prefix="miminions-ro-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        base.chmod(0o755)
        shutil.rmtree(base)


async def _stopped_database(path: Path, *, leave_wal: bool = False, task_name: str = "job") -> None:
    """A database with one completed task (``task_name``) of an agent named ``scout`` (as
    the demo's); with ``leave_wal``, as a runtime that was killed leaves it: work still in
    its ``-wal`` file."""
    config = RuntimeConfig(storage_path=str(path), default_isolation="inline")
    async with AgentRuntime(config=config) as rt:
        await rt.start_agent(await rt.register_agent("scout", demo_module.ResearchAgent))
        task = await rt.wait_for_task(await rt.submit_task(task_name, {"steps": 1}), 10)
        assert task.status is TaskStatus.COMPLETED
    if leave_wal:
        # what a killed runtime leaves: a write that is only in the log
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("INSERT INTO meta (key, value) VALUES ('review', '1')")
            conn.commit()
            os.link(f"{path}-wal", f"{path}-wal.kept")
        os.replace(f"{path}-wal.kept", f"{path}-wal")


def test_a_database_in_a_directory_the_reader_cannot_write_is_read(
    unwritable_directory: Path,
) -> None:
    """A cleanly stopped database (no write-ahead log) in a directory the reader cannot
    write (a backup, a read-only volume) is read: SQLite cannot create its ``-shm`` file
    there, so it is read as the complete file it is."""
    db = unwritable_directory / "run.db"
    asyncio.run(_stopped_database(db))
    assert not Path(f"{db}-wal").exists()
    db.chmod(0o644)
    unwritable_directory.chmod(0o555)
    for command in (["status"], ["tasks"], ["events"]):
        result = _as_reader(*command, "--db", str(db))
        assert result.returncode == 0, result.stderr
        assert "job" in result.stdout or "worker" in result.stdout, result.stdout
    assert sorted(p.name for p in unwritable_directory.iterdir()) == ["run.db", "run.db-lock"]


def test_a_database_with_a_log_in_such_a_directory_is_a_clear_error(
    unwritable_directory: Path,
) -> None:
    """With work still in its ``-wal`` file the database cannot be read without its
    ``-shm`` file: one line that says what to do, not "not a miminions database"."""
    db = unwritable_directory / "run.db"
    asyncio.run(_stopped_database(db, leave_wal=True))
    assert Path(f"{db}-wal").stat().st_size > 0
    Path(f"{db}-shm").unlink(missing_ok=True)  # a -shm file the reader may read would do
    for path in unwritable_directory.iterdir():
        path.chmod(0o644)
    unwritable_directory.chmod(0o555)
    result = _as_reader("status", "--db", str(db))
    assert result.returncode == 2
    assert "not a miminions database" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "write-ahead log" in result.stderr, result.stderr
    assert "not writable" in result.stderr, result.stderr


def test_demo_on_a_database_file_the_user_cannot_write_is_refused_at_once(
    unwritable_directory: Path,
) -> None:
    """A database file the user may read but not write (in a directory they may write) is
    refused at the start, in one line. The first commit failed instead, retried 8 times
    (about 20 s of silence), and the error said the next commit would try again."""
    db = unwritable_directory / "run.db"
    asyncio.run(_stopped_database(db, task_name="collect-sources"))  # a demo task's name
    Path(f"{db}-lock").unlink()  # root's lock file; the user makes their own
    db.chmod(0o444)
    unwritable_directory.chmod(0o777)
    result = _as_reader("demo", "--db", str(db), "--quiet")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "read-only for this user" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command", [["status"], ["top", "--once"], ["demo", "--quiet"]], ids=lambda c: c[0]
)
def test_a_command_with_its_output_closed_ends_cleanly(tmp_path: Path, command: list[str]) -> None:
    """``miminions ... >&-`` (cron, a daemon): Python has no sys.stdout then, and libuv
    aborts when one of its descriptors takes the number 1. The commands end without a
    traceback or an abort (they died flushing or writing None; the demo, on uvloop, by
    SIGABRT)."""
    db = tmp_path / "run.db"
    if command[0] != "demo":
        asyncio.run(_stopped_database(db))
    result = subprocess.run(
        [sys.executable, "-m", "miminions", *command, "--db", str(db)],
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=lambda: os.close(1),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_demo_takes_disable_as_the_plugin_errors_advise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed plugin that fails to load makes ``demo`` fail, advising ``--disable
    NAME``; ``demo`` takes it (it refused it as an unrecognized argument)."""
    site = tmp_path / "site"
    info = site / "brokenplug-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[miminions]\nbroken = brokenplug_mod\n")
    (site / "brokenplug_mod.py").write_text("raise ImportError('boom')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("MIMINIONS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setattr(demo_module, "STEP_SECONDS", 0.02)
    monkeypatch.setattr(demo_module, "PAUSE_SECONDS", 0.1)
    monkeypatch.setattr(demo_module, "TICK_SECONDS", 0.05)
    db = tmp_path / "demo.db"
    code, _, err = cli(capsys, "demo", "--db", str(db), "--quiet")
    assert code == 2
    assert "--disable broken" in err, err
    code, _, err = cli(capsys, "demo", "--db", str(db), "--quiet", "--disable", "broken")
    assert code == 0, err
    assert "unrecognized arguments" not in err
