"""One frame of ``miminions top``: a snapshot of a runtime database, rendered as text.

Pure: no I/O and no clock. :mod:`miminions.top` reads the database into a :class:`Snapshot`
and puts frames on the screen; this module only decides what a frame says. The tables reuse
the formatting of ``miminions status`` (:mod:`miminions.cli`), so both commands show agents,
task counts and events the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from miminions.cli import format_counts, format_events, short_id
from miminions.demo import format_table, priority_label
from miminions.kernel.models import AgentStatus, Event, TaskStatus

#: Priorities listed one per row in the queue table; less urgent ones share a last row.
MAX_PRIORITY_ROWS = 8
#: The unfinished task statuses, in the column order of the queue table.
UNFINISHED = (TaskStatus.PENDING, TaskStatus.BLOCKED, TaskStatus.RUNNING)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task an agent is running now."""

    task_id: str
    name: str


@dataclass(frozen=True, slots=True)
class AgentLine:
    """One agent as ``top`` shows it: its stored record plus the tasks it is running."""

    agent_id: str
    name: str
    group: str | None
    status: AgentStatus
    restarts: int
    running: tuple[RunningTask, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one refresh read from the database.

    ``monotonic`` is a :func:`time.monotonic` reading taken with it: throughput is measured
    between two snapshots on that clock, which wall-clock changes cannot disturb.
    ``runtime`` and ``queue`` are the lines ``miminions status`` prints (``queue`` is None
    when no runtime owns the database). ``unfinished`` counts pending, blocked and running
    tasks by ``(status, priority)``; ``counts`` counts every task by status.
    """

    path: str
    taken_at: datetime
    monotonic: float
    runtime: str
    queue: str | None
    agents: tuple[AgentLine, ...]
    counts: Mapping[str, int]
    unfinished: Mapping[tuple[str, int], int]
    events: tuple[Event, ...]
    events_limit: int


@dataclass(frozen=True, slots=True)
class Throughput:
    """Tasks that finished between two snapshots ``seconds`` apart."""

    completed: int
    failed: int
    seconds: float

    @property
    def completed_per_second(self) -> float:
        """Completed tasks per second over the interval."""
        return self.completed / self.seconds


def throughput(previous: Snapshot | None, current: Snapshot) -> Throughput | None:
    """The tasks completed and failed since ``previous``; None for the first snapshot, or
    when the counts went down (the database was replaced), as there is no rate to give."""
    if previous is None:
        return None
    seconds = current.monotonic - previous.monotonic
    completed = _count(current, TaskStatus.COMPLETED) - _count(previous, TaskStatus.COMPLETED)
    failed = _count(current, TaskStatus.FAILED) - _count(previous, TaskStatus.FAILED)
    if seconds <= 0 or completed < 0 or failed < 0:
        return None
    return Throughput(completed=completed, failed=failed, seconds=seconds)


def _count(snapshot: Snapshot, status: TaskStatus) -> int:
    return snapshot.counts.get(status.value, 0)


# --------------------------------------------------------------------------- sections
def format_throughput(rate: Throughput | None) -> str:
    """``2.50 tasks/s (5 completed, 0 failed in 2.00 s)``, or why there is no rate yet."""
    if rate is None:
        return "- (measured between two refreshes)"
    return (
        f"{rate.completed_per_second:.2f} tasks/s ({rate.completed} completed, "
        f"{rate.failed} failed in {rate.seconds:.2f} s)"
    )


def _running_text(running: Sequence[RunningTask]) -> str:
    if not running:
        return "-"
    return ", ".join(f"{task.name} ({short_id(task.task_id)})" for task in running)


def format_agent_lines(agents: Sequence[AgentLine]) -> str:
    """Agents as a table: name, short id, group, status, current task(s), restarts."""
    if not agents:
        return "  (no agents)"
    rows = [
        [
            agent.name,
            short_id(agent.agent_id),
            agent.group or "-",
            agent.status.value,
            _running_text(agent.running),
            agent.restarts,
        ]
        for agent in agents
    ]
    return format_table(["name", "id", "group", "status", "task", "restarts"], rows)


def _priority_text(priority: int) -> str:
    label = priority_label(priority)
    return label if label == str(priority) else f"{label} ({priority})"


def format_queue(unfinished: Mapping[tuple[str, int], int]) -> str:
    """Unfinished tasks per priority (most urgent first) and status, with a total row.

    Named levels read ``HIGH (0)``; past :data:`MAX_PRIORITY_ROWS` priorities, the least
    urgent ones are summed in one ``lo-hi`` row so the table stays a few lines long.
    """
    if not unfinished:
        return "  (no unfinished tasks)"
    priorities = sorted({priority for _, priority in unfinished})
    shown, folded = priorities, []
    if len(priorities) > MAX_PRIORITY_ROWS:
        shown, folded = priorities[: MAX_PRIORITY_ROWS - 1], priorities[MAX_PRIORITY_ROWS - 1 :]
    groups = [([p], _priority_text(p)) for p in shown]
    if folded:
        groups.append((folded, f"{folded[0]}-{folded[-1]}"))
    rows: list[list[object]] = []
    for members, label in groups:
        rows.append(
            [label, *(sum(unfinished.get((s.value, p), 0) for p in members) for s in UNFINISHED)]
        )
    rows.append(["total", *(_status_total(unfinished, s) for s in UNFINISHED)])
    return format_table(["priority", *(s.value for s in UNFINISHED)], rows)


def _status_total(unfinished: Mapping[tuple[str, int], int], status: TaskStatus) -> int:
    return sum(count for (s, _), count in unfinished.items() if s == status.value)


def render(snapshot: Snapshot, previous: Snapshot | None = None) -> str:
    """The text of one frame; ``previous`` is the snapshot of the frame before, if any,
    from which the throughput is measured."""
    names = {agent.agent_id: agent.name for agent in snapshot.agents}
    lines = [
        f"miminions top  {snapshot.path}  {snapshot.taken_at.strftime(TIME_FORMAT)} UTC",
        f"Runtime     {snapshot.runtime}",
    ]
    if snapshot.queue is not None:
        lines.append(f"Queue       {snapshot.queue}")
    lines += [
        f"Throughput  {format_throughput(throughput(previous, snapshot))}",
        "",
        f"Agents ({len(snapshot.agents)})",
        format_agent_lines(snapshot.agents),
        "",
        "Unfinished tasks by priority",
        format_queue(snapshot.unfinished),
        "",
        "Tasks by status",
        format_counts(dict(snapshot.counts)),
        "",
        f"Recent events (last {snapshot.events_limit})",
        format_events(snapshot.events, names),
    ]
    return "\n".join(lines)


__all__ = [
    "MAX_PRIORITY_ROWS",
    "AgentLine",
    "RunningTask",
    "Snapshot",
    "Throughput",
    "format_agent_lines",
    "format_queue",
    "format_throughput",
    "render",
    "throughput",
]
