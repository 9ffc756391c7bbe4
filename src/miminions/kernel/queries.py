"""Status answers built from the runtime's in-memory view: no I/O, no awaiting.

Kept apart from the façade so each answer (task status, queue, capacity, metrics, explain)
is one small function that reads the scheduler, the task book and the agent book.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

from miminions.kernel.models import (
    AgentStatus,
    Capacity,
    HoldKind,
    HoldReason,
    Metrics,
    QueueStatus,
    Task,
    TaskExplanation,
    TaskStatus,
    task_snapshot,
)
from miminions.kernel.scheduler import NodeState

if TYPE_CHECKING:
    from miminions.kernel.lifecycle import AgentSlot
    from miminions.kernel.runtime import AgentRuntime


def task_status(rt: AgentRuntime, task_id: str) -> Task:
    """A copy of the task with effective priority, queue position and estimated wait."""
    task = rt.task_book.get(task_id)
    sched = rt.scheduler
    update: dict[str, object] = {"effective_priority": sched.effective_priority(task_id)}
    position = sched.position(task_id)
    if position is not None:
        update["queue_position"] = position
        update["estimated_wait_seconds"] = _estimated_wait(rt, task_id, _ahead(rt, task_id))
    snapshot = task_snapshot(task)
    snapshot.__dict__.update(update)  # computed fields, not validated: the scheduler's own
    return snapshot


def _serving_agents(rt: AgentRuntime, task_id: str) -> list[AgentSlot]:
    route = rt.scheduler.route(task_id)
    return [slot for slot in rt.agent_book.slots.values() if route in slot.routes]


def _taking_tasks(slot: AgentSlot) -> bool:
    """Whether the agent takes tasks: running, and not being paused (a pause takes it out
    of dispatch at once; its status changes only once its ``on_pause`` returned)."""
    return slot.status is AgentStatus.RUNNING and slot.call != "pause"


def _busy(rt: AgentRuntime, slot: AgentSlot) -> bool:
    """Whether the agent runs a task, or an ``on_error`` for one that ended (it takes no
    task until that returns; an executor may say so)."""
    return slot.instance.task_id is not None or slot.agent_id in getattr(
        rt.executor, "in_on_error", {}
    )


_WILL_TAKE_TASKS = frozenset(
    {AgentStatus.RUNNING, AgentStatus.PAUSED, AgentStatus.STARTING, AgentStatus.QUEUED}
)


def _ahead(rt: AgentRuntime, task_id: str) -> int | None:
    """How many ready tasks an agent that may run ``task_id`` would take before it (None:
    it is not ready). Tasks of routes none of those agents takes do not hold it back."""
    sched = rt.scheduler
    competing = {sched.route(task_id)}
    for slot in _serving_agents(rt, task_id):
        # An agent that will take tasks (running, or paused, starting, queued: once it
        # runs) takes its own first; one stopped, failed or never started takes none.
        if slot.status in _WILL_TAKE_TASKS:
            competing.update(slot.routes)
    return sched.rank_among(task_id, competing)


def _estimated_wait(rt: AgentRuntime, task_id: str, ahead: int | None) -> float | None:
    mean = rt.task_book.mean_duration
    if ahead is None or mean is None or rt.queue_paused:  # nothing starts until a resume
        return None
    taking = [slot for slot in _serving_agents(rt, task_id) if _taking_tasks(slot)]
    if not taking:
        return None
    busy = sum(1 for slot in taking if _busy(rt, slot))
    rounds = ahead / len(taking) + (1 if busy >= len(taking) else 0)
    return rounds * mean


def queue_status(rt: AgentRuntime) -> QueueStatus:
    """Counts of tasks by status, pending tasks by base priority, and the queue's state."""
    book = rt.task_book
    counts = book.status_counts
    return QueueStatus(
        total=len(book.tasks),
        pending=counts[TaskStatus.PENDING],
        blocked=counts[TaskStatus.BLOCKED],
        running=counts[TaskStatus.RUNNING],
        completed=counts[TaskStatus.COMPLETED],
        failed=counts[TaskStatus.FAILED],
        cancelled=counts[TaskStatus.CANCELLED],
        paused=rt.queue_paused,
        dead_letters=sum(1 for letter in book.dead_letters.values() if letter.requeued_at is None),
        pending_by_priority=dict(sorted(book.pending_by_priority.items())),
        max_size=rt.config.limits.max_task_queue_size,
    )


def capacity(rt: AgentRuntime) -> Capacity:
    """Agent slots and queue room in use and free."""
    limits = rt.config.limits
    active = rt.agent_book.active_count
    waiting = rt.scheduler.waiting_count
    max_queue = limits.max_task_queue_size
    return Capacity(
        max_concurrent_agents=limits.max_concurrent_agents,
        active_agents=active,
        free_agent_slots=max(limits.max_concurrent_agents - active, 0),
        queued_agent_starts=rt.agent_book.queued_starts,
        max_task_queue_size=max_queue,
        queued_tasks=waiting,
        # Room held for a batch still being booked is not free (see sliced_booking).
        free_task_slots=None
        if max_queue is None
        else max(max_queue - waiting - rt.scheduler.reserved_count, 0),
        message_queue_max_size=limits.message_queue_max_size,
    )


def metrics(rt: AgentRuntime, uptime: float) -> Metrics:
    """Counters since start and task duration mean / p95 over recent tasks."""
    book = rt.task_book
    durations = sorted(book.durations)
    mean = sum(durations) / len(durations) if durations else None
    p95 = (
        durations[min(len(durations) - 1, math.ceil(0.95 * len(durations)) - 1)]
        if durations
        else None
    )
    agents = Counter(slot.status.value for slot in rt.agent_book.slots.values())
    latency_mean, latency_p95 = rt.messenger.latency_summary()
    return Metrics(
        uptime_seconds=uptime,
        tasks_submitted=book.counters["submitted"],
        tasks_completed=book.counters["completed"],
        tasks_failed=book.counters["failed"],
        tasks_cancelled=book.counters["cancelled"],
        tasks_retried=book.counters["retried"],
        task_duration_mean_seconds=mean,
        task_duration_p95_seconds=p95,
        agents_by_status=dict(agents),
        events_recorded=rt.events.count,
        messages_sent=rt.messenger.sent,
        messages_delivered=rt.messenger.delivered,
        message_latency_mean_seconds=latency_mean,
        message_latency_p95_seconds=latency_p95,
    )


def explain(rt: AgentRuntime, task_id: str) -> TaskExplanation:
    """Everything that holds ``task_id`` back, most fundamental first (F-24)."""
    task = rt.task_book.get(task_id)
    sched = rt.scheduler
    state = sched.state(task_id)
    reasons: list[HoldReason] = []
    position = None
    wait = None
    if state is NodeState.BLOCKED:
        waiting = sched.waiting_on(task_id)
        listed = ", ".join(f"{dep} ({rt.task_book.tasks[dep].status.value})" for dep in waiting)
        reasons.append(
            HoldReason(
                kind=HoldKind.DEPENDENCY,
                message=f"waiting for prerequisite task(s) {listed}",
                related_ids=waiting,
            )
        )
    elif state is NodeState.HELD:
        remaining = rt.executor.retry_remaining(task_id)
        shown = f"{remaining:.2f} s" if remaining is not None else "a moment"
        reasons.append(
            HoldReason(
                kind=HoldKind.RETRY_BACKOFF,
                message=(
                    f"waiting {shown} before retry {task.retry_count} of {task.max_retries} "
                    f"(last error: {task.error_message})"
                ),
            )
        )
    if state in (NodeState.BLOCKED, NodeState.READY, NodeState.HELD):
        if not rt.is_running:
            reasons.append(
                HoldReason(kind=HoldKind.RUNTIME_STOPPED, message="the runtime is not running")
            )
        if rt.queue_paused:
            reasons.append(
                HoldReason(
                    kind=HoldKind.QUEUE_PAUSED,
                    message="the task queue is paused (resume_queue() releases it)",
                )
            )
        reasons.extend(_agent_reasons(rt, task, state is NodeState.READY))
    if state is NodeState.READY:
        position = sched.position(task_id)
        # Only tasks an agent that may run this one would take first hold it back; the
        # queue position counts every ready task.
        ahead = _ahead(rt, task_id)
        if ahead:
            reasons.append(
                HoldReason(
                    kind=HoldKind.TASKS_AHEAD,
                    message=(
                        f"{ahead} ready task(s) that its agents would take first are ahead of "
                        "it by effective priority"
                    ),
                )
            )
        if position is not None:
            wait = _estimated_wait(rt, task_id, ahead)
    return TaskExplanation(
        task_id=task_id,
        status=task.status,
        priority=task.priority,
        effective_priority=sched.effective_priority(task_id),
        reasons=reasons,
        queue_position=position,
        estimated_wait_seconds=wait,
    )


def _agent_reasons(rt: AgentRuntime, task: Task, ready: bool) -> list[HoldReason]:
    serving = _serving_agents(rt, task.task_id)
    target = (
        f"its target agent {task.agent_id}"
        if task.agent_id
        else f"group {task.group!r}"
        if task.group
        else "any agent"
    )
    ids = [slot.agent_id for slot in serving]
    if not serving:
        return [
            HoldReason(
                kind=HoldKind.NO_AGENT,
                message=f"no agent is registered that can run it (target: {target})",
            )
        ]
    running = [slot for slot in serving if _taking_tasks(slot)]
    if running:
        # An executor may say which agents still run on_error for a task that ended: they
        # take no task until it returns.
        in_on_error = getattr(rt.executor, "in_on_error", {})
        handling = [
            s.agent_id for s in running if s.instance.task_id is None and s.agent_id in in_on_error
        ]
        if ready and all(_busy(rt, s) for s in running):
            message = f"all {len(running)} running agent(s) for {target} are busy"
            if handling:
                message += f" ({', '.join(handling)} still running on_error for a task that ended)"
            return [
                HoldReason(
                    kind=HoldKind.AGENTS_BUSY,
                    message=message,
                    related_ids=[s.agent_id for s in running],
                )
            ]
        return []
    reasons = []
    paused = [slot.agent_id for slot in serving if slot.status is AgentStatus.PAUSED]
    pausing = [
        slot.agent_id
        for slot in serving
        if slot.status is AgentStatus.RUNNING and not _taking_tasks(slot)
    ]
    if paused or pausing:
        held = [
            *([f"agent(s) {', '.join(paused)} for {target} are paused"] if paused else []),
            *([f"agent(s) {', '.join(pausing)} for {target} are being paused"] if pausing else []),
        ]
        reasons.append(
            HoldReason(
                kind=HoldKind.AGENT_PAUSED,
                message="; ".join(held),
                related_ids=[*paused, *pausing],
            )
        )
    queued = [slot.agent_id for slot in serving if slot.status is AgentStatus.QUEUED]
    if queued:
        reasons.append(
            HoldReason(
                kind=HoldKind.CONCURRENCY_LIMIT,
                message=(
                    f"agent(s) {', '.join(queued)} are queued to start, "
                    f"{rt.agent_book.start_wait_reason()}"
                ),
                related_ids=queued,
            )
        )
    if not paused and not pausing and not queued:
        starting = [slot.agent_id for slot in serving if slot.status is AgentStatus.STARTING]
        stopping = [slot.agent_id for slot in serving if slot.status is AgentStatus.STOPPING]
        notes = [
            *([f"starting: {', '.join(starting)}"] if starting else []),
            *([f"stopping: {', '.join(stopping)}"] if stopping else []),
        ]
        message = f"no agent is running for {target}" + (f" ({'; '.join(notes)})" if notes else "")
        reasons.append(HoldReason(kind=HoldKind.NO_AGENT, message=message, related_ids=ids))
    return reasons
