"""The metrics of one runtime, for the prometheus extra.

Two sources, one rule: what the runtime already keeps in memory is read when a scrape asks
(task and agent counts, the queue, capacity, the counters of ``get_metrics()``, the
resident memory of agent worker processes); what it does not keep is counted from its
events (:meth:`RuntimeMetrics.observe`: task durations, message delivery latency, restarts,
limit breaches, expired messages, events by type).

Everything lives on the runtime's event loop: events arrive there, and scrapes are served
there. So the event counts are plain integers and lists, not prometheus_client's locked
instruments: counting an event costs a dict update, which matters at thousands of tasks a
second, and :class:`RuntimeMetrics` renders them itself when it is collected.

Names follow Prometheus conventions: the ``miminions_`` prefix, ``_total`` on counters,
base units in the name (``_seconds``, ``_bytes``), and labels with few values (a status, a
priority band, an event type, a limit). Only the per-agent memory gauge is labelled by agent.
The metrics are listed in ``docs/extras.md`` (section Prometheus); the registry also holds
prometheus_client's standard ``process_*`` metrics of the runtime's own process.

This module imports prometheus_client: the plugin loads it only once the package is known
to be installed.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import generate_latest as generate_text
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from miminions.kernel.models import AgentStatus, Event, EventType, TaskStatus
from miminions.plugins.process_pool import existing_pool
from miminions.plugins.process_probe import read_usage

if TYPE_CHECKING:
    from miminions.extras.prometheus import PrometheusOptions
    from miminions.kernel.runtime import AgentRuntime

#: ``priority_band`` of ``miminions_queue_depth``: the upper bound (inclusive) of each band
#: of base priorities, around the named levels HIGH (0), MEDIUM (50) and LOW (100).
PRIORITY_BANDS = (("high", 33), ("medium", 66), ("low", 100))
#: ``outcome`` of ``miminions_task_duration_seconds``.
OUTCOMES = ("completed", "failed")
#: ``limit`` of ``miminions_limit_breaches_total`` for each event that reports a breach:
#: soft and hard memory and CPU limits of process agents, and spent usage budgets.
BREACHES = {
    EventType.RESOURCE_LIMIT_WARNING: "soft",
    EventType.RESOURCE_LIMIT_EXCEEDED: "hard",
    EventType.BUDGET_EXHAUSTED: "budget",
}
#: The ``(limit, resource)`` pairs the kernel reports, exported from the start (at 0).
BREACH_KINDS = (
    ("soft", "memory"),
    ("soft", "cpu"),
    ("hard", "memory"),
    ("hard", "cpu"),
    ("budget", "tokens"),
    ("budget", "cost"),
)


def priority_band(priority: int) -> str:
    """The band (``high``, ``medium``, ``low``) of a base priority 0..100."""
    for band, upper in PRIORITY_BANDS:
        if priority <= upper:
            return band
    return PRIORITY_BANDS[-1][0]


class Histogram:
    """Observations in buckets with upper bounds ``bounds`` (and +Inf), their sum and
    count: prometheus_client's histogram without its lock, for use on one thread."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self._le = [*(floatToGoString(bound) for bound in self.bounds), "+Inf"]  # type: ignore[no-untyped-call]

    def observe(self, value: float) -> None:
        """Add one observation (``le`` is inclusive: a value on a bound counts in it)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, +Inf last, as exposition wants them."""
        total = 0
        cumulative = []
        for le, count in zip(self._le, self.counts, strict=True):
            total += count
            cumulative.append((le, float(total)))
        return cumulative


class RuntimeMetrics:
    """Everything the extra measures for one runtime, in a registry of its own.

    It is the registry's collector for the runtime's metrics. It holds the runtime weakly:
    the plugin keeps this object per runtime until the runtime is gone, which a strong
    reference back would never let happen.
    """

    def __init__(self, runtime: AgentRuntime, options: PrometheusOptions) -> None:
        self._runtime = weakref.ref(runtime)
        # Only attempts begun after this moment are timed: a task restored from an earlier
        # run carries that run's start time, which would count the downtime as work.
        self._since = datetime.now(UTC)
        self.events = dict.fromkeys(EventType, 0)
        self.durations = {outcome: Histogram(options.task_duration_buckets) for outcome in OUTCOMES}
        self.latency = Histogram(options.message_latency_buckets)
        self.restarts = 0
        self.expired = 0
        self._received = 0  # the highest count of delivered messages reported
        self.breaches = dict.fromkeys(BREACH_KINDS, 0)
        self._handlers: dict[EventType, Callable[[Event], None]] = {
            EventType.TASK_COMPLETED: self._task_completed,
            EventType.TASK_RETRY_SCHEDULED: self._attempt_failed,
            EventType.TASK_FAILED: self._task_failed,
            EventType.MESSAGE_RECEIVED: self._message_received,
            EventType.MESSAGE_EXPIRED: self._message_expired,
            EventType.AGENT_RESTARTING: self._agent_restarting,
            EventType.RESOURCE_LIMIT_WARNING: self._limit_breached,
            EventType.RESOURCE_LIMIT_EXCEEDED: self._limit_breached,
            EventType.BUDGET_EXHAUSTED: self._limit_breached,
        }
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    # ------------------------------------------------------------------ rendering
    def render(self, format: str) -> bytes:
        """The exposition of every metric: ``prometheus`` (text 0.0.4) or ``openmetrics``."""
        if format == "openmetrics":
            body: bytes = generate_openmetrics(self.registry)  # type: ignore[no-untyped-call]
            return body
        return generate_text(self.registry)

    def render_for(self, accept: str) -> tuple[bytes, str]:
        """The exposition a scrape with this ``Accept`` header asked for, and its content
        type (OpenMetrics when asked for, else the text format)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # ------------------------------------------------------------------ events
    def observe(self, event: Event) -> None:
        """Count one event of the runtime and feed what it stands for. Runs for every event
        on the runtime's loop: a few dict operations, nothing more."""
        kind = event.event_type
        self.events[kind] = self.events.get(kind, 0) + 1
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(event)

    def _task_completed(self, event: Event) -> None:
        self._time_attempt(event, "completed")

    def _attempt_failed(self, event: Event) -> None:
        self._time_attempt(event, "failed")

    def _task_failed(self, event: Event) -> None:
        # Failed for good after running carries "attempts"; failed because a prerequisite
        # failed carries "reason" and never ran.
        if "attempts" in event.details:
            self._time_attempt(event, "failed")

    def _time_attempt(self, event: Event, outcome: str) -> None:
        runtime = self._runtime()
        if runtime is None or event.task_id is None:
            return
        task = runtime.task_book.tasks.get(event.task_id)
        started = None if task is None else task.started_at
        if started is None or started < self._since:
            return  # never begun (handed over ahead of time), or begun in an earlier run
        seconds = (event.timestamp - started).total_seconds()
        self.durations[outcome].observe(max(seconds, 0.0))

    def _message_received(self, event: Event) -> None:
        latency = event.details.get("latency_seconds")
        # A message taken back and received again was observed at its first receipt.
        if isinstance(latency, int | float) and not event.details.get("redelivered"):
            self.latency.observe(max(float(latency), 0.0))

    def _message_expired(self, event: Event) -> None:
        self.expired += 1

    def _agent_restarting(self, event: Event) -> None:
        self.restarts += 1

    def _limit_breached(self, event: Event) -> None:
        kind = (BREACHES[event.event_type], str(event.details.get("resource")))
        self.breaches[kind] = self.breaches.get(kind, 0) + 1

    # ------------------------------------------------------------------ collecting
    def describe(self) -> Iterable[Metric]:
        """The families :meth:`collect` returns, without samples (so the registry checks
        names without asking the runtime)."""
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        """The current values: the runtime's in-memory answers and the event counts.

        Called by a scrape, on the runtime's loop (the endpoint and
        ``export_prometheus_metrics`` both run there); never touches the database.
        """
        runtime = self._runtime()
        if runtime is None:
            return []
        families = _Families()
        _add_runtime_state(families, runtime)
        # A message put back in its mailbox (its receiver's worker went) no longer counts
        # as delivered, until it is taken again; a counter must never go down.
        self._received = max(self._received, runtime.get_metrics().messages_delivered)
        families.received.add_metric([], self._received)
        for kind, count in self.events.items():
            families.events.add_metric([kind.value], count)
        for outcome, histogram in self.durations.items():
            families.durations.add_metric([outcome], histogram.buckets(), histogram.sum)
        families.latency.add_metric([], self.latency.buckets(), self.latency.sum)
        families.restarts.add_metric([], self.restarts)
        families.expired.add_metric([], self.expired)
        for (limit, resource), count in self.breaches.items():
            families.breaches.add_metric([limit, resource], count)
        return families.all()


def _add_runtime_state(families: _Families, runtime: AgentRuntime) -> None:
    """Add what the runtime keeps in memory: its status answers and its own counters."""
    queue = runtime.get_queue_status()
    capacity = runtime.get_capacity()
    metrics = runtime.get_metrics()
    by_status = {
        TaskStatus.PENDING: queue.pending,
        TaskStatus.BLOCKED: queue.blocked,
        TaskStatus.RUNNING: queue.running,
        TaskStatus.COMPLETED: queue.completed,
        TaskStatus.FAILED: queue.failed,
        TaskStatus.CANCELLED: queue.cancelled,
    }
    for status, count in by_status.items():
        families.tasks.add_metric([status.value], count)
    bands = dict.fromkeys((band for band, _ in PRIORITY_BANDS), 0)
    for priority, count in queue.pending_by_priority.items():
        bands[priority_band(priority)] += count
    for band, count in bands.items():
        families.queue_depth.add_metric([band], count)
    families.queue_paused.add_metric([], 1 if queue.paused else 0)
    families.dead_letters.add_metric([], queue.dead_letters)
    for agent_status in AgentStatus:
        count = metrics.agents_by_status.get(agent_status.value, 0)
        families.agents.add_metric([agent_status.value], count)
    families.agent_slots.add_metric(["used"], capacity.active_agents)
    families.agent_slots.add_metric(["free"], capacity.free_agent_slots)
    pool = existing_pool(runtime)
    for agent in runtime.list_agents():
        pid = agent.process_id
        # What its memory limit counts: the worker with the subprocesses its agent started.
        members = [] if pool is None or pid is None else pool.members_of(pid)
        usage = None if pid is None else read_usage(pid, members)
        if usage is not None:
            families.agent_rss.add_metric([agent.agent_id, agent.name], usage.rss_bytes)
    families.uptime.add_metric([], metrics.uptime_seconds)
    families.submitted.add_metric([], metrics.tasks_submitted)
    families.finished.add_metric([TaskStatus.COMPLETED.value], metrics.tasks_completed)
    families.finished.add_metric([TaskStatus.FAILED.value], metrics.tasks_failed)
    families.finished.add_metric([TaskStatus.CANCELLED.value], metrics.tasks_cancelled)
    families.retries.add_metric([], metrics.tasks_retried)
    families.sent.add_metric([], metrics.messages_sent)


class _Families:
    """Empty families of every metric :class:`RuntimeMetrics` reports, to be filled."""

    def __init__(self) -> None:
        self.tasks = GaugeMetricFamily(
            "miminions_tasks", "Tasks known to the runtime, by status.", labels=["status"]
        )
        self.queue_depth = GaugeMetricFamily(
            "miminions_queue_depth",
            "Pending tasks (ready, or waiting out a retry backoff) by band of base priority: "
            "high 0-33, medium 34-66, low 67-100.",
            labels=["priority_band"],
        )
        self.queue_paused = GaugeMetricFamily(
            "miminions_queue_paused", "1 while pause_queue() holds the task queue, else 0."
        )
        self.dead_letters = GaugeMetricFamily(
            "miminions_dead_letters", "Dead letters (tasks and messages) not re-queued."
        )
        self.agents = GaugeMetricFamily(
            "miminions_agents", "Registered agents, by status.", labels=["status"]
        )
        self.agent_slots = GaugeMetricFamily(
            "miminions_agent_slots",
            "Agent slots (max_concurrent_agents) in use and free.",
            labels=["state"],
        )
        self.agent_rss = GaugeMetricFamily(
            "miminions_agent_resident_memory_bytes",
            "Resident memory of each process agent's worker process.",
            labels=["agent_id", "agent_name"],
            unit="bytes",
        )
        self.uptime = GaugeMetricFamily(
            "miminions_uptime_seconds", "Seconds since the runtime started.", unit="seconds"
        )
        self.submitted = CounterMetricFamily(
            "miminions_tasks_submitted", "Tasks submitted to this runtime."
        )
        self.finished = CounterMetricFamily(
            "miminions_tasks_finished",
            "Tasks that ended for good in this runtime, by final status.",
            labels=["status"],
        )
        self.retries = CounterMetricFamily(
            "miminions_task_retries", "Failed task attempts that were scheduled for a retry."
        )
        self.sent = CounterMetricFamily("miminions_messages_sent", "Messages sent between agents.")
        self.received = CounterMetricFamily(
            "miminions_messages_received", "Messages their recipients took."
        )
        self.expired = CounterMetricFamily(
            "miminions_messages_expired",
            "Messages whose time to live ran out before their recipient took them.",
        )
        self.restarts = CounterMetricFamily(
            "miminions_agent_restarts",
            "Automatic restarts of crashed agents planned by the restart policy.",
        )
        self.breaches = CounterMetricFamily(
            "miminions_limit_breaches",
            "Limits crossed: soft and hard memory or CPU limits of process agents "
            "(limit soft/hard), spent usage budgets (limit budget).",
            labels=["limit", "resource"],
        )
        self.events = CounterMetricFamily(
            "miminions_events", "Events recorded by the runtime, by type.", labels=["event_type"]
        )
        self.durations = HistogramMetricFamily(
            "miminions_task_duration_seconds",
            "How long task attempts ran, from their start to their result or failure.",
            labels=["outcome"],
            unit="seconds",
        )
        self.latency = HistogramMetricFamily(
            "miminions_message_delivery_latency_seconds",
            "Time from sending a message to its recipient taking it.",
            unit="seconds",
        )

    def all(self) -> list[Metric]:
        """Every family, in the order they are exported."""
        return list(vars(self).values())


__all__ = [
    "BREACHES",
    "BREACH_KINDS",
    "OUTCOMES",
    "PRIORITY_BANDS",
    "Histogram",
    "RuntimeMetrics",
    "priority_band",
]
