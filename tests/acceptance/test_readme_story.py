"""User stories, end to end through the public API only.

1. The README's "In your code" example, run as written (on a temporary database), does
   what it says: the summary task runs after its prerequisite and prints its result.
2. The README's quick start: ``miminions demo``, then ``miminions status`` and
   ``miminions events --format jsonl`` on the database the demo left behind.
3. A team of agents works through a dependency graph with a retry and a pause; at the
   blocked moment ``explain()`` names what holds each task; the event log tells the story.

Requirement IDs: F-02, F-03, F-04, F-05, F-09, F-10, F-12, F-18, F-19, F-23, F-24, F-25.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    Event,
    EventType,
    HoldKind,
    Priority,
    RuntimeConfig,
    Task,
    TaskRequest,
    TaskStatus,
)
from tests.support.events import EventRecorder
from tests.support.runtime import start_agent

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_section(title: str) -> str:
    """The text of the README's ``## title`` section."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


async def read_back(db: Path) -> tuple[list[Task], list[Event]]:
    """Open the database with a new runtime: the tasks (oldest first) and the events of the
    run that left it behind (up to its ``runtime_stopped``)."""
    async with AgentRuntime(config=RuntimeConfig(storage_path=str(db))) as rt:
        tasks = list(reversed(rt.list_tasks(limit=None)))
        events = await rt.query_events(limit=None)
    stopped = next(i for i, e in enumerate(events) if e.event_type is EventType.RUNTIME_STOPPED)
    return tasks, events[: stopped + 1]


# --------------------------------------------------------------------------- README, in code
def test_readme_in_your_code_example_runs_as_written(tmp_path: Path) -> None:
    """F-02, F-10, F-15, F-18, F-24: the README example, saved as a script (database moved
    to a temporary directory) and run with python, runs the summary after its
    prerequisite, on the one agent of the group "writers" (in its own worker process, the
    default), and prints its result."""
    (code,) = PYTHON_BLOCK.findall(readme_section("In your code"))
    db = tmp_path / "miminions.db"
    assert code.count('AgentRuntime("miminions.db")') == 1, "the README example changed"
    script = tmp_path / "app.py"
    script.write_text(code.replace('AgentRuntime("miminions.db")', f"AgentRuntime({str(db)!r})"))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr

    printed = done.stdout.splitlines()
    tasks, events = asyncio.run(read_back(db))
    fetch, summary = tasks
    assert (fetch.name, summary.name) == ("fetch", "summarise")
    assert len(printed) == 2, printed
    # explain() names the summary's prerequisite, or (once it already ran) the summary itself.
    assert fetch.task_id in printed[0] or summary.task_id in printed[0], printed[0]
    assert printed[1] == "completed {'summary': 'a long text', 'seen': 2}"

    assert fetch.status is summary.status is TaskStatus.COMPLETED
    assert fetch.priority == Priority.HIGH
    assert fetch.output_data == {"summary": "...", "seen": 1}
    assert summary.output_data == {"summary": "a long text", "seen": 2}
    assert summary.dependencies == [fetch.task_id]
    assert (summary.group, summary.max_retries, summary.retry_count) == ("writers", 2, 0)
    assert fetch.assigned_agent_id == summary.assigned_agent_id
    assert fetch.completed_at is not None
    assert summary.started_at is not None
    assert summary.started_at >= fetch.completed_at

    kinds = [e.event_type for e in events]
    assert kinds[0] is EventType.RUNTIME_STARTED
    assert kinds[-1] is EventType.RUNTIME_STOPPED
    for task in tasks:
        mine = [e.event_type for e in events if e.task_id == task.task_id]
        assert mine == [EventType.TASK_ENQUEUED, EventType.TASK_STARTED, EventType.TASK_COMPLETED]
    registered = [e for e in events if e.event_type is EventType.AGENT_REGISTERED]
    assert [(e.details["name"], e.details["group"]) for e in registered] == [
        ("summariser", "writers")
    ]


# --------------------------------------------------------------------------- README, quick start
@pytest.mark.slow
def test_quick_start_demo_then_status_and_events(tmp_path: Path) -> None:
    """F-23, F-12: the quick start's commands, as a user types them in a fresh directory:
    the demo completes its ten tasks, ``status`` shows them, ``events`` exports the log."""
    commands = BASH_BLOCK.findall(readme_section("Quick start"))
    assert any(".venv/bin/miminions demo" in block for block in commands)
    assert "miminions status --db miminions.db" in readme_section("Quick start")
    assert "miminions events --db miminions.db --format jsonl" in readme_section("Quick start")
    exe = Path(sys.executable).with_name("miminions")
    assert exe.exists(), f"the miminions command is not installed next to {sys.executable}"

    def run(*argv: str) -> str:
        done = subprocess.run(
            [str(exe), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    demo = run("demo")
    assert "Summary of this run: all tasks completed" in demo
    assert "RETRY     fetch-statistics" in demo
    assert "why isn't 'publish' running?" in demo
    assert (tmp_path / "miminions.db").exists()

    status = run("status", "--db", "miminions.db")
    assert "stopped cleanly" in status
    counts = status.split("pending  blocked  running  completed  failed  cancelled  total")[1]
    assert counts.split()[:7] == ["0", "0", "0", "10", "0", "0", "10"]
    for name in ("scout", "analyst", "librarian", "drafter", "editor"):
        assert re.search(rf"^\s+{name}\s+\w+\s+stopped\b", status, re.MULTILINE), name

    lines = run("events", "--db", "miminions.db", "--format", "jsonl").splitlines()
    events = [json.loads(line) for line in lines]
    kinds = [event["event_type"] for event in events]
    assert kinds[0] == "runtime_started"
    assert kinds[-1] == "runtime_stopped"
    assert kinds.count("task_completed") == 10
    assert kinds.count("task_retry_scheduled") == 1
    assert {"agent_paused", "agent_resumed", "queue_paused", "queue_resumed"} <= set(kinds)
    assert [e["event_id"] for e in events] == sorted(e["event_id"] for e in events)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """The quick start has exactly two commands, the demo's and the tests'; ``.ci/run``
    runs the second one as it is written there."""
    commands = [block.strip() for block in BASH_BLOCK.findall(readme_section("Quick start"))]
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("miminions demo")
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci_lines


# --------------------------------------------------------------------------- a team story
GATES: dict[str, asyncio.Event] = {}  # a task whose name is here runs until its gate opens


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


@pytest.fixture(autouse=True)
def _reset_gates() -> None:
    GATES.clear()


class TeamAgent(BaseAgent):
    """Works in steps with a safe point after each; a task held in ``GATES`` keeps
    stepping until released; ``fail_attempts`` in the input fails the first attempts."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.checkpoint()
        if task.retry_count < task.input_data.get("fail_attempts", 0):
            raise ConnectionError(
                f"{task.name}: source unreachable (attempt {task.retry_count + 1})"
            )
        steps = 1
        held = GATES.get(task.name)
        while held is not None and not held.is_set():
            await self.context.checkpoint({"steps": steps})
            steps += 1
            await asyncio.sleep(0.002)
        return {"task": task.name, "by": self.context.name, "steps": steps}


H, M, L = Priority.HIGH, Priority.MEDIUM, Priority.LOW
# name: (group, priority, prerequisites, extra input)
PLAN: dict[str, tuple[str | None, int, tuple[str, ...], dict[str, Any]]] = {
    "gather": ("research", H, (), {}),
    "stats": ("research", H, (), {"fail_attempts": 1}),
    "analyse": ("research", M, ("gather", "stats"), {}),
    "outline": ("writers", M, ("gather",), {}),
    "write": ("writers", H, ("outline", "analyse"), {}),
    "publish": (None, H, ("write",), {}),
}


async def test_team_works_through_a_dag_with_a_retry_and_a_pause(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-03, F-04, F-10, F-12, F-18, F-19, F-24, F-25: two researchers and a writer work
    through a dependency graph; one task fails once and is retried; the writer is paused
    while it writes the outline. At that moment explain() names what holds each waiting
    task; after the resume everything completes, and the event log shows it in order."""
    recorder = EventRecorder()
    async with AgentRuntime(config=make_config(), plugins=[recorder]) as rt:
        ids = {
            name: await start_agent(rt, name, TeamAgent, group=group)
            for name, group in (
                ("scout", "research"),
                ("analyst", "research"),
                ("writer", "writers"),
            )
        }
        agent_names = {agent_id: name for name, agent_id in ids.items()}
        gate("outline")
        gate("analyse")
        requests = [
            TaskRequest(
                task_id=f"story-{name}",
                name=name,
                group=group,
                priority=priority,
                dependencies=[f"story-{dep}" for dep in deps],
                input_data=extra,
                max_retries=2 if extra.get("fail_attempts") else 0,
            )
            for name, (group, priority, deps, extra) in PLAN.items()
        ]
        task_ids = await rt.submit_tasks(requests)
        tid = dict(zip(PLAN, task_ids, strict=True))
        assert rt.get_task_status(tid["publish"]).status is TaskStatus.BLOCKED

        # The writer starts the outline; pause it there (it halts at its next safe point).
        await recorder.wait_for(EventType.TASK_STARTED, task_id=tid["outline"])
        paused = await rt.pause_agent(ids["writer"], timeout_seconds=5)
        assert paused.status is AgentStatus.PAUSED
        assert paused.task_id == tid["outline"]
        # The flaky task is retried and completes; analyse starts and is held.
        await recorder.wait_for(EventType.TASK_STARTED, task_id=tid["analyse"])
        assert rt.get_task_status(tid["stats"]).status is TaskStatus.COMPLETED
        cover = await rt.submit_task("cover", group="writers", priority=L)

        # ---- the blocked moment: why isn't it running?
        write = rt.explain(tid["write"])
        assert write.status is TaskStatus.BLOCKED
        assert [r.kind for r in write.reasons] == [HoldKind.DEPENDENCY, HoldKind.AGENT_PAUSED]
        dependency, agent_paused = write.reasons
        assert set(dependency.related_ids) == {tid["outline"], tid["analyse"]}
        assert f"{tid['outline']} (running)" in dependency.message
        assert f"{tid['analyse']} (running)" in dependency.message
        assert agent_paused.related_ids == [ids["writer"]]
        assert "group 'writers'" in agent_paused.message
        assert write.effective_priority == H
        assert write.queue_position is None
        # publish waits for write only; it may run anywhere and research agents run.
        publish = rt.explain(tid["publish"])
        assert [r.kind for r in publish.reasons] == [HoldKind.DEPENDENCY]
        assert publish.reasons[0].related_ids == [tid["write"]]
        assert f"{tid['write']} (blocked)" in publish.summary
        # outline inherits write's urgency: it is a prerequisite of a HIGH task (F-26).
        assert rt.get_task_status(tid["outline"]).effective_priority == H
        # cover is ready, but the only writer is paused.
        waiting = rt.explain(cover)
        assert waiting.status is TaskStatus.PENDING
        assert [r.kind for r in waiting.reasons] == [HoldKind.AGENT_PAUSED]
        assert waiting.queue_position == 0
        assert rt.get_agent_status(ids["writer"]).status is AgentStatus.PAUSED
        assert rt.get_task_status(tid["outline"]).status is TaskStatus.RUNNING

        # ---- release: the held work finishes, the writer resumes where it halted.
        gate("analyse").set()
        gate("outline").set()
        assert (await rt.resume_agent(ids["writer"])).status is AgentStatus.RUNNING
        final = {name: await rt.wait_for_task(task_id, 10) for name, task_id in tid.items()}
        final["cover"] = await rt.wait_for_task(cover, 10)
        events = await rt.query_events(limit=None)
        metrics = rt.get_metrics()
        done = rt.explain(tid["publish"])

    # ---- final statuses
    assert {name: task.status for name, task in final.items()} == dict.fromkeys(
        final, TaskStatus.COMPLETED
    )
    assert final["stats"].retry_count == 1
    assert all(final[name].retry_count == 0 for name in final if name != "stats")
    by = {name: agent_names[task.assigned_agent_id or ""] for name, task in final.items()}
    assert {by["gather"], by["stats"], by["analyse"]} <= {"scout", "analyst"}
    assert by["outline"] == by["write"] == by["cover"] == "writer"
    assert final["outline"].output_data["by"] == "writer"
    assert done.reasons == []
    assert done.summary == f"task {tid['publish']} is completed"
    assert (metrics.tasks_completed, metrics.tasks_retried, metrics.tasks_failed) == (7, 1, 0)

    # ---- the event log tells the story in order
    def first(kind: EventType, **fields: Any) -> int:
        for event in events:
            if event.event_type is kind and all(getattr(event, k) == v for k, v in fields.items()):
                assert event.event_id is not None  # a stored event has its id
                return event.event_id
        raise AssertionError(f"no {kind.value} event with {fields}")

    def started(name: str) -> int:
        return first(EventType.TASK_STARTED, task_id=tid[name])

    def completed(name: str) -> int:
        return first(EventType.TASK_COMPLETED, task_id=tid[name])

    for name, (_, _, deps, _) in PLAN.items():
        for dep in deps:
            assert completed(dep) < started(name), f"{name} started before {dep} completed"
    stats_events = [e.event_type for e in events if e.task_id == tid["stats"]]
    assert stats_events == [
        EventType.TASK_ENQUEUED,
        EventType.TASK_STARTED,
        EventType.TASK_RETRY_SCHEDULED,
        EventType.TASK_STARTED,
        EventType.TASK_COMPLETED,
    ]
    retry = next(e for e in events if e.event_type is EventType.TASK_RETRY_SCHEDULED)
    assert "source unreachable (attempt 1)" in json.dumps(retry.details)
    writer_pauses = [
        e for e in events if e.agent_id == ids["writer"] and e.event_type is EventType.AGENT_PAUSED
    ]
    assert len(writer_pauses) == 1
    assert writer_pauses[0].details["task_id"] == tid["outline"]
    resumed = first(EventType.AGENT_RESUMED, agent_id=ids["writer"])
    pause_id = writer_pauses[0].event_id
    assert pause_id is not None
    assert started("outline") < pause_id < resumed < completed("outline")
    assert completed("write") < started("publish")
