"""The built-in demo workload behind ``miminions demo``.

Five in-process agents in two groups (``research`` and ``writers``) work through a small
report-writing project: a dependency graph of ten tasks with HIGH, MEDIUM and LOW
priorities. Along the way one task fails on its first attempt and succeeds on its retry, a
writer agent and the queue are paused and resumed, and ``explain()`` says why a blocked task
is not running. Progress lines show the run as it happens; a summary closes it.

Everything here uses the public API only, so the module doubles as a worked example. The
agents are module-level classes, so they can be imported (and run in worker processes).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sqlite3
import sys
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from miminions import (
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    ConfigurationError,
    Event,
    EventType,
    Metrics,
    Priority,
    RuntimeConfig,
    Task,
    TaskExplanation,
    TaskRequest,
    TaskStatus,
    hookimpl,
)
from miminions.kernel.errors import MiminionsError
from miminions.kernel.models import JSONObject
from miminions.plugins.sqlite_store import SQLiteStore

TICK_SECONDS = 0.25
"""How often a progress line is printed."""
STEP_SECONDS = 0.12
"""How long one step of a demo task takes."""
PAUSE_SECONDS = 0.6
"""How long the demo keeps the queue and one writer paused."""
RUN_TIMEOUT_SECONDS = 30.0
"""Safety net: the demo gives up waiting after this long (it normally takes a few seconds)."""
EXPLAINED_TASK = "publish"
"""The blocked task whose ``explain()`` the demo prints."""
PAUSED_AT_TASK = "draft-outline"
"""The demo pauses the agent running this task (and the queue) once it has started."""

DEMO_CONFIG = RuntimeConfig(
    retry_backoff_base_seconds=0.2,  # quick retries so the demo stays short
    retry_backoff_max_seconds=1.0,
    shutdown_timeout_seconds=5.0,
    default_isolation="inline",
)


class DemoError(RuntimeError):
    """The simulated failure of a flaky task's first attempt."""


# --------------------------------------------------------------------------- the agents
async def _do_steps(agent: BaseAgent, task: Task) -> int:
    """Work through ``task``'s steps; every step ends at a safe point (pause halts there).

    A task with ``fail_attempts: n`` in its input raises :class:`DemoError` on its first
    ``n`` attempts, after one step, so the retry is visible.
    """
    steps = int(task.input_data.get("steps", 2))
    fail_attempts = int(task.input_data.get("fail_attempts", 0))
    for step in range(steps):
        await asyncio.sleep(STEP_SECONDS)
        await agent.context.checkpoint()
        if step == 0 and task.retry_count < fail_attempts:
            raise DemoError(f"{task.name}: upstream source timed out (simulated)")
    return steps


class ResearchAgent(BaseAgent):
    """Gathers and analyses material: a few short steps per task."""

    async def execute_task(self, task: Task) -> JSONObject:
        """Do the research steps and report what was found."""
        steps = await _do_steps(self, task)
        return {"task": task.name, "findings": steps, "by": self.context.name}


class WriterAgent(BaseAgent):
    """Writes; keeps a count of the pages written that survives a pause (F-09)."""

    def __init__(self) -> None:
        self.pages = 0

    async def execute_task(self, task: Task) -> JSONObject:
        """Write the task's pages."""
        self.pages += await _do_steps(self, task)
        return {"task": task.name, "pages_total": self.pages, "by": self.context.name}

    async def on_pause(self) -> JSONObject:
        """Keep the page count while paused."""
        return {"pages": self.pages}

    async def on_resume(self, state: JSONObject) -> None:
        """Get the page count back."""
        self.pages = int(state.get("pages", 0))


@dataclass(frozen=True)
class AgentPlan:
    """One agent of the demo."""

    name: str
    group: str
    agent: type[BaseAgent]


@dataclass(frozen=True)
class TaskPlan:
    """One task of the demo; ``after`` names the tasks it depends on."""

    name: str
    priority: int
    group: str | None
    steps: int
    after: tuple[str, ...] = ()
    fail_attempts: int = 0
    max_retries: int = 0


AGENTS: tuple[AgentPlan, ...] = (
    AgentPlan("scout", "research", ResearchAgent),
    AgentPlan("analyst", "research", ResearchAgent),
    AgentPlan("librarian", "research", ResearchAgent),
    AgentPlan("drafter", "writers", WriterAgent),
    AgentPlan("editor", "writers", WriterAgent),
)

H, M, L = Priority.HIGH, Priority.MEDIUM, Priority.LOW
TASKS: tuple[TaskPlan, ...] = (
    TaskPlan("collect-sources", H, "research", 3),
    TaskPlan("fetch-statistics", H, "research", 2, fail_attempts=1, max_retries=2),
    TaskPlan("scan-archives", L, "research", 2),
    TaskPlan("analyse-trends", M, "research", 3, after=("collect-sources", "fetch-statistics")),
    TaskPlan("check-facts", M, "research", 2, after=("analyse-trends",)),
    TaskPlan("draft-outline", M, "writers", 3, after=("collect-sources",)),
    TaskPlan("design-cover", L, "writers", 2),
    TaskPlan("write-chapters", H, "writers", 4, after=("draft-outline", "analyse-trends")),
    TaskPlan("edit-report", M, "writers", 2, after=("write-chapters", "check-facts")),
    TaskPlan("publish", H, None, 1, after=("edit-report", "design-cover")),
)
_AGENT_NAMES = frozenset(plan.name for plan in AGENTS)
_TASK_NAMES = frozenset(plan.name for plan in TASKS)


# --------------------------------------------------------------------------- live output
class DemoMonitor:
    """A ``miminions_event`` plugin: prints notable events of this run as they happen and
    lets the demo wait for a task to start."""

    miminions_plugin_name = "demo_monitor"

    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.started_mono = time.monotonic()
        self.task_names: dict[str, str] = {}
        self.agent_names: dict[str, str] = {}
        self.started: dict[str, asyncio.Event] = {}

    def say(self, text: str) -> None:
        """Print one progress line prefixed with the time since the demo began."""
        if not self.quiet:
            elapsed = time.monotonic() - self.started_mono
            print(f"[{elapsed:5.2f}s] {text}", file=self.out, flush=True)

    def agent(self, agent_id: str | None) -> str:
        """The name of an agent of this demo (or its id)."""
        return self.agent_names.get(agent_id or "", agent_id or "-")

    @hookimpl
    def miminions_event(self, event: Event) -> None:
        """Print the events worth seeing live; note task starts."""
        task_id = event.task_id
        if task_id is not None and task_id not in self.task_names:
            return  # a task of an earlier run
        line = self._describe(event)
        if event.event_type is EventType.TASK_STARTED and task_id is not None:
            self.started.setdefault(self.task_names[task_id], asyncio.Event()).set()
        if line is not None:
            self.say(line)

    def _describe(self, event: Event) -> str | None:
        kind, details = event.event_type, event.details
        task = self.task_names.get(event.task_id or "", "")
        if kind is EventType.TASK_COMPLETED:
            return f"done      {task} (by {self.agent(event.agent_id)})"
        if kind is EventType.TASK_RETRY_SCHEDULED:
            delay = float(details.get("delay_seconds", 0.0))
            return (
                f"RETRY     {task} failed on {self.agent(event.agent_id)}: "
                f"{details.get('error')}; attempt {int(details.get('attempt', 0)) + 1} "
                f"in {delay:.2f} s"
            )
        if kind is EventType.TASK_FAILED:
            return f"FAILED    {task}: {details.get('error') or details.get('reason')}"
        if kind is EventType.AGENT_PAUSED:
            return f"PAUSED    agent {self.agent(event.agent_id)} (halted at a safe point)"
        if kind is EventType.AGENT_RESUMED:
            return f"RESUMED   agent {self.agent(event.agent_id)}"
        if kind is EventType.QUEUE_PAUSED:
            return "PAUSED    the task queue: no new task is handed out"
        if kind is EventType.QUEUE_RESUMED:
            return "RESUMED   the task queue"
        if kind in (EventType.TASK_TIMEOUT, EventType.AGENT_FAILED, EventType.RUNTIME_RECOVERED):
            return f"{kind.value}: {json.dumps(details)}"
        return None

    async def wait_started(self, task_name: str, timeout_seconds: float) -> bool:
        """Wait until the task named ``task_name`` starts; False after ``timeout_seconds``."""
        started = self.started.setdefault(task_name, asyncio.Event())
        try:
            async with asyncio.timeout(timeout_seconds):
                await started.wait()
        except TimeoutError:
            return False
        return True


def status_counts(rt: AgentRuntime, task_ids: Sequence[str]) -> Counter[TaskStatus]:
    """How many of ``task_ids`` are in each status."""
    return Counter(rt.get_task_status(task_id).status for task_id in task_ids)


def progress_line(counts: Counter[TaskStatus], total: int, queue_paused: bool = False) -> str:
    """``done 3/10 | running 2 | pending 1 | blocked 4`` (plus failed/cancelled if any, and
    whether the queue is paused)."""
    parts = [f"done {counts[TaskStatus.COMPLETED]}/{total}"]
    for status in (TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.BLOCKED):
        parts.append(f"{status.value} {counts[status]}")
    for status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        if counts[status]:
            parts.append(f"{status.value} {counts[status]}")
    if queue_paused:
        parts.append("queue paused")
    return "progress  " + " | ".join(parts)


async def report_progress(rt: AgentRuntime, monitor: DemoMonitor, task_ids: Sequence[str]) -> None:
    """Print a progress line every :data:`TICK_SECONDS` until cancelled."""
    while True:
        counts = status_counts(rt, task_ids)
        monitor.say(progress_line(counts, len(task_ids), rt.queue_paused))
        await asyncio.sleep(TICK_SECONDS)


# --------------------------------------------------------------------------- the run
@dataclass
class DemoResult:
    """What one demo run did: its tasks (final state), agents and metrics."""

    db_path: Path
    tasks: list[Task]
    agent_names: dict[str, str]
    agent_groups: dict[str, str]
    metrics: Metrics
    explanation: TaskExplanation | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every task of the run completed."""
        return all(task.status is TaskStatus.COMPLETED for task in self.tasks)


async def refuse_foreign_database(db_path: Path) -> None:
    """Raise ConfigurationError if the database holds agents or tasks the demo does not
    make: an application's (``miminions.db`` is also ``AgentRuntime()``'s default file).
    The demo's agents would run its tasks, and the demo would resume its paused queue.
    Read before the demo's runtime opens it (its start recovers the tasks it finds)."""
    try:
        store = await SQLiteStore.open_readonly(str(db_path))
    except (MiminionsError, sqlite3.Error):
        return  # a new (or empty) file, or one the runtime's start refuses, saying why
    try:
        agents = {agent.name for agent in await store.load_agents()} - _AGENT_NAMES
        tasks = {task.name for task in await store.load_tasks()} - _TASK_NAMES
    finally:
        await store.close()
    if agents or tasks:
        found = ", ".join(
            [
                *(f"agent {name!r}" for name in sorted(agents)[:3]),
                *(f"task {name!r}" for name in sorted(tasks)[:3]),
            ]
        )
        raise ConfigurationError(
            f"{str(db_path)!r} holds agents or tasks the demo did not make ({found}): the "
            "demo runs on a database of its own, not an application's; give it another "
            "file with --db"
        )


async def setup_agents(rt: AgentRuntime, monitor: DemoMonitor) -> list[str]:
    """Register and start the demo agents (their names go to ``monitor`` first, so the
    live lines name them); return notes on what an earlier run left behind.

    On a database an earlier demo used, registration gives back the same ids; an agent left
    paused by an interrupted run is resumed instead of started, and a note says so.
    """
    notes: list[str] = []
    for plan in AGENTS:
        agent_id = await rt.register_agent(plan.name, plan.agent, group=plan.group)
        monitor.agent_names[agent_id] = plan.name
        status = rt.get_agent_status(agent_id).status
        if status is AgentStatus.PAUSED:
            await rt.resume_agent(agent_id)
            notes.append(f"resumed agent {plan.name!r}, which an earlier run had left paused")
        elif status in (AgentStatus.REGISTERED, AgentStatus.STOPPED, AgentStatus.FAILED):
            await rt.start_agent(agent_id)
    return notes


async def release_queue(rt: AgentRuntime) -> str | None:
    """Resume a queue an earlier run left paused; return a note saying so, else None.

    The queue pause is stored, so a run stopped during its pause (Ctrl-C twice, a kill)
    leaves the database's queue paused, and no task of a later run would ever start.
    """
    if not rt.queue_paused:
        return None
    await rt.resume_queue()
    return "resumed the task queue, which an earlier run had left paused"


def task_requests() -> tuple[list[TaskRequest], dict[str, str]]:
    """The demo's task graph as one batch with fresh ids; also ``{task_id: name}``."""
    ids = {plan.name: uuid.uuid4().hex for plan in TASKS}
    requests = [
        TaskRequest(
            task_id=ids[plan.name],
            name=plan.name,
            input_data={"steps": plan.steps, "fail_attempts": plan.fail_attempts},
            priority=int(plan.priority),
            dependencies=[ids[name] for name in plan.after],
            group=plan.group,
            max_retries=plan.max_retries,
        )
        for plan in TASKS
    ]
    return requests, {task_id: name for name, task_id in ids.items()}


async def pause_and_explain(
    rt: AgentRuntime, monitor: DemoMonitor, ids_by_name: dict[str, str]
) -> TaskExplanation | None:
    """Pause the agent running :data:`PAUSED_AT_TASK` and the queue, print ``explain()``
    of :data:`EXPLAINED_TASK`, wait a moment, then resume both."""
    if not await monitor.wait_started(PAUSED_AT_TASK, RUN_TIMEOUT_SECONDS):
        monitor.say(f"note: {PAUSED_AT_TASK} never started; skipping the pause")
        return None
    agent_id = rt.get_task_status(ids_by_name[PAUSED_AT_TASK]).assigned_agent_id
    if agent_id is not None and rt.get_agent_status(agent_id).status is not AgentStatus.RUNNING:
        agent_id = None
    try:
        if agent_id is not None:
            await rt.pause_agent(agent_id, timeout_seconds=5.0)
        await rt.pause_queue()
        explanation = rt.explain(ids_by_name[EXPLAINED_TASK])
        if not monitor.quiet:
            print(format_explanation(explanation, monitor.task_names), file=monitor.out, flush=True)
        await asyncio.sleep(PAUSE_SECONDS)
    finally:
        # Also when the run is cancelled (Ctrl-C) or times out here: the queue pause is
        # stored, and left in place it would hold every later run on this database.
        await undo_pause(rt, agent_id)
    return explanation


async def undo_pause(rt: AgentRuntime, agent_id: str | None) -> None:
    """Resume the queue and, if it is paused, the agent ``agent_id`` (both may be unpaused
    already, when the pause was interrupted before it was made)."""
    if not rt.is_running:
        return
    await rt.resume_queue()
    if agent_id is not None and rt.get_agent_status(agent_id).status is AgentStatus.PAUSED:
        await rt.resume_agent(agent_id)


def format_explanation(explanation: TaskExplanation, task_names: dict[str, str]) -> str:
    """``explain()`` as readable lines, with task ids replaced by the demo's task names."""
    name = task_names.get(explanation.task_id, explanation.task_id)
    lines = [
        f"          why isn't {name!r} running? status {explanation.status.value}, "
        f"priority {explanation.priority} (effective {explanation.effective_priority})"
    ]
    for reason in explanation.reasons:
        message = reason.message
        for task_id in reason.related_ids:
            message = message.replace(task_id, repr(task_names.get(task_id, task_id)))
        lines.append(f"            - {reason.kind.value}: {message}")
    return "\n".join(lines)


async def run_demo(
    db_path: Path,
    *,
    out: TextIO = sys.stdout,
    quiet: bool = False,
    disable: Sequence[str] = (),
) -> DemoResult:
    """Run the demo workload on the database at ``db_path`` and return what it did.

    Progress goes to ``out`` unless ``quiet``; the summary is left to :func:`format_summary`.
    ``disable`` names plugins to leave out (a broken third-party one, say).
    """
    monitor = DemoMonitor(out, quiet)
    config = DEMO_CONFIG.model_copy(update={"storage_path": str(db_path)})
    # The demo prints events itself; the logging monitor would repeat warnings on stderr.
    notes: list[str] = []
    left_out = ["logging_monitor", *(name for name in disable if name != "logging_monitor")]
    await refuse_foreign_database(db_path)
    async with AgentRuntime(config=config, plugins=[monitor], disable=left_out) as rt:
        left_behind = await setup_agents(rt, monitor)
        released = await release_queue(rt)
        for note in [*left_behind, *([] if released is None else [released])]:
            notes.append(note)
            monitor.say(f"note: {note}")
        requests, monitor.task_names = task_requests()
        ids_by_name = {name: task_id for task_id, name in monitor.task_names.items()}
        monitor.say(f"started {len(AGENTS)} agents in groups 'research' and 'writers'")
        task_ids = await rt.submit_tasks(requests)
        monitor.say(f"submitted {len(task_ids)} tasks (a dependency graph, priorities H/M/L)")
        ticker = asyncio.create_task(report_progress(rt, monitor, task_ids))
        explanation: TaskExplanation | None = None
        deadline = asyncio.timeout(RUN_TIMEOUT_SECONDS)
        try:
            async with deadline:
                explanation = await pause_and_explain(rt, monitor, ids_by_name)
                final = [await rt.wait_for_task(task_id) for task_id in task_ids]
        except TimeoutError:
            if not deadline.expired():
                raise  # not the run's own deadline (e.g. a pause that timed out)
            # The summary reports the tasks as they are; the unfinished ones stay stored
            # and a later runtime on this database picks them up.
            final = [rt.get_task_status(task_id) for task_id in task_ids]
            unfinished = [task.name for task in final if task.status is not TaskStatus.COMPLETED]
            listed = f"; not completed: {', '.join(unfinished)}" if unfinished else ""
            notes.append(f"gave up waiting after {RUN_TIMEOUT_SECONDS:g} s{listed}")
        finally:
            ticker.cancel()
        monitor.say(progress_line(status_counts(rt, task_ids), len(task_ids)))
        groups = {
            agent_id: rt.get_agent_status(agent_id).group or "-" for agent_id in monitor.agent_names
        }
        return DemoResult(
            db_path=db_path,
            tasks=final,
            agent_names=monitor.agent_names,
            agent_groups=groups,
            metrics=rt.get_metrics(),
            explanation=explanation,
            notes=notes,
        )


# --------------------------------------------------------------------------- the summary
def priority_label(priority: int) -> str:
    """``HIGH``, ``MEDIUM`` or ``LOW`` for the named levels, else the number."""
    try:
        return Priority(priority).name
    except ValueError:
        return str(priority)


def attempts(task: Task) -> int:
    """How many times the task was started."""
    return task.retry_count + (1 if task.started_at is not None else 0)


def duration_text(task: Task) -> str:
    """The last attempt's run time, or ``-``."""
    if task.started_at is None or task.completed_at is None:
        return "-"
    return f"{(task.completed_at - task.started_at).total_seconds():.2f} s"


def table_cell(value: object) -> str:
    """``value`` as text for one table cell: non-printable characters (newlines, tabs,
    terminal escapes) are shown escaped as in a Python literal (``\\n``, ``\\x1b``), since
    they would break the row or the terminal. Printable text, non-ASCII included, is as is.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def char_columns(char: str) -> int:
    """How many terminal columns a printable ``char`` takes: 2 for wide East Asian
    characters (CJK, most emoji), 0 for marks drawn on the character before (general
    categories Mn and Me, which include Thai vowel marks whose combining class is 0) and
    invisible format characters (Cf), otherwise 1."""
    if unicodedata.category(char) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


_ZERO_WIDTH = frozenset({"Mn", "Me", "Cf"})


def display_width(text: str) -> int:
    """How many terminal columns printable ``text`` takes (see :func:`char_columns`)."""
    return len(text) if text.isascii() else sum(map(char_columns, text))


def cut_to_columns(text: str, columns: int) -> str:
    """The longest start of printable ``text`` that fits in ``columns`` terminal columns."""
    if text.isascii():
        return text[:columns]
    used = 0
    for index, char in enumerate(text):
        used += char_columns(char)
        if used > columns:
            return text[:index]
    return text


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """A plain text table with left-aligned columns sized to fit (in terminal columns:
    a wide character counts twice); cells as :func:`table_cell` shows them."""
    cells = [[table_cell(cell) for cell in row] for row in rows]
    widths = [
        max([display_width(h), *(display_width(row[i]) for row in cells)])
        for i, h in enumerate(headers)
    ]

    def line(texts: Sequence[str]) -> str:
        padded = (t + " " * (w - display_width(t)) for t, w in zip(texts, widths, strict=True))
        return (indent + "  ".join(padded)).rstrip()

    return "\n".join([line(headers), *map(line, cells)])


def _task_rows(result: DemoResult) -> list[list[Any]]:
    return [
        [
            task.name,
            priority_label(task.priority),
            task.status.value,
            attempts(task),
            result.agent_names.get(task.assigned_agent_id or "", task.assigned_agent_id or "-"),
            duration_text(task),
        ]
        for task in result.tasks
    ]


def _agent_rows(result: DemoResult) -> list[list[Any]]:
    done: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    for task in result.tasks:
        agent_id = task.assigned_agent_id or ""
        if task.status is TaskStatus.COMPLETED:
            done[agent_id] += 1
        elif task.status is TaskStatus.FAILED:
            failed[agent_id] += 1
    return [
        [name, result.agent_groups.get(agent_id, "-"), done[agent_id], failed[agent_id]]
        for agent_id, name in result.agent_names.items()
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _invoked_as() -> str:
    """The command to print for what to try next: the path this program was run by when
    it is a ``miminions`` script given with its directory (the README's quick start runs
    ``.venv/bin/miminions`` without activating the venv), else ``miminions``."""
    invoked = sys.argv[0] if sys.argv else ""
    if os.path.basename(invoked) == "miminions" and os.sep in invoked:
        return shlex.quote(invoked)
    return "miminions"


def format_summary(result: DemoResult) -> str:
    """The closing summary: tasks, agents, queue metrics and what to try next."""
    metrics = result.metrics
    db = shlex.quote(str(result.db_path))
    cmd = _invoked_as()
    verdict = "all tasks completed" if result.ok else "SOME TASKS DID NOT COMPLETE"
    notes = ["Notes", *(f"  - {note}" for note in result.notes), ""] if result.notes else []
    return "\n".join(
        [
            "",
            f"Summary of this run: {verdict}",
            "",
            *notes,
            "Tasks",
            format_table(
                ["name", "priority", "status", "attempts", "agent", "duration"], _task_rows(result)
            ),
            "",
            "Agents (tasks of this run)",
            format_table(["name", "group", "completed", "failed"], _agent_rows(result)),
            "",
            "Queue metrics",
            f"  tasks submitted {metrics.tasks_submitted}, completed {metrics.tasks_completed}, "
            f"failed {metrics.tasks_failed}, retried {metrics.tasks_retried}",
            f"  task duration mean {_seconds(metrics.task_duration_mean_seconds)}, "
            f"p95 {_seconds(metrics.task_duration_p95_seconds)}",
            f"  events recorded {metrics.events_recorded}, uptime {metrics.uptime_seconds:.2f} s",
            "",
            f"Everything is stored in {result.db_path}. Try next:",
            f"  {cmd} status --db {db}",
            f"  {cmd} tasks --db {db}",
            f"  {cmd} events --db {db} --type task_retry_scheduled agent_paused agent_resumed",
            f"  {cmd} events --db {db} --format jsonl --output events.jsonl",
        ]
    )


__all__ = [
    "AGENTS",
    "TASKS",
    "AgentPlan",
    "DemoError",
    "DemoMonitor",
    "DemoResult",
    "ResearchAgent",
    "TaskPlan",
    "WriterAgent",
    "format_summary",
    "format_table",
    "run_demo",
    "table_cell",
]
