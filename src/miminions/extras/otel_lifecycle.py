"""Agent lifecycle spans of the ``otel`` extra, drawn from the runtime's events.

A start and a stop take time (``on_start`` / ``on_stop`` run, a worker process starts or
ends): ``agent start`` spans ``agent_starting`` to ``agent_started`` (or ``agent_failed``),
``agent stop`` spans ``agent_stopping`` to ``agent_stopped``. The other lifecycle events are
instants: ``agent register``, ``queue``, ``pause``, ``resume``, ``restart``, and ``fail``,
``kill``, ``error`` with status ERROR. Each names the agent and carries the event's details
as ``miminions.event.<key>`` attributes. No explicit parent: the caller's current span
(``start_agent`` inside a span of the application) is the natural one.

This module imports opentelemetry: it is only imported once the plugin is active.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, Status, StatusCode

from miminions.kernel.models import Event, EventType

if TYPE_CHECKING:
    from miminions.extras.otel_spans import RuntimeTracing

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Events drawn as an instant span "agent <verb>".
_POINTS = {
    EventType.AGENT_REGISTERED: "register",
    EventType.AGENT_QUEUED: "queue",
    EventType.AGENT_PAUSED: "pause",
    EventType.AGENT_RESUMED: "resume",
    EventType.AGENT_RESTARTING: "restart",
    EventType.AGENT_STARTED: "start",
    EventType.AGENT_STOPPED: "stop",
    EventType.AGENT_FAILED: "fail",
    EventType.AGENT_KILLED: "kill",
    EventType.AGENT_ERROR: "error",
}
_ERRORS = frozenset({EventType.AGENT_FAILED, EventType.AGENT_KILLED, EventType.AGENT_ERROR})
# Events that begin an operation with a duration, and those that end one under way.
_BEGINS = {EventType.AGENT_STARTING: "start", EventType.AGENT_STOPPING: "stop"}
_ENDS = frozenset(
    {
        EventType.AGENT_STARTED,
        EventType.AGENT_RESUMED,  # the start of an agent that comes back paused resumes it
        EventType.AGENT_STOPPED,
        EventType.AGENT_FAILED,
    }
)
#: The event types :meth:`LifecycleSpans.on_event` draws.
EVENTS = frozenset(_POINTS) | frozenset(_BEGINS)


def ns(moment: datetime) -> int:
    """A timestamp in OpenTelemetry's unit (integer nanoseconds since the epoch)."""
    return (moment - _EPOCH) // _MICROSECOND * 1000


class LifecycleSpans:
    """The lifecycle spans of one runtime's agents (see the module docstring)."""

    def __init__(self, tracing: RuntimeTracing) -> None:
        self._tracing = tracing
        self._under_way: dict[str, Span] = {}  # agent id -> its start or stop under way

    def on_event(self, event: Event) -> None:
        """Draw one lifecycle event of an agent (one of :data:`EVENTS`)."""
        kind, agent_id = event.event_type, event.agent_id or ""
        at = ns(event.timestamp)
        error = event.details.get("error") or event.details.get("reason")
        if kind in _ENDS:
            span = self._under_way.pop(agent_id, None)
            if span is not None:
                if kind is EventType.AGENT_FAILED:
                    span.set_status(Status(StatusCode.ERROR, str(error or "")))
                _add_details(span, event.details)
                span.end(end_time=at)
                return
        verb = _BEGINS.get(kind)
        if verb is not None:
            leftover = self._under_way.pop(agent_id, None)
            if leftover is not None:
                # A start that never ended (a stop abandoned it, or it was cancelled): not
                # a start that went through.
                leftover.set_status(Status(StatusCode.ERROR, f"cut short by {kind.value}"))
                leftover.end(end_time=at)
            self._under_way[agent_id] = self._span(verb, agent_id, at, event.details)
            return
        span = self._span(_POINTS[kind], agent_id, at, event.details)
        if kind in _ERRORS:
            span.set_status(Status(StatusCode.ERROR, str(error or "")))
        span.end(end_time=at)

    def close(self) -> None:
        """The runtime stopped: end the starts and stops that never ended, as errors."""
        for span in self._under_way.values():
            span.set_status(Status(StatusCode.ERROR, "the runtime stopped first"))
            span.end()
        self._under_way.clear()

    def _span(self, verb: str, agent_id: str, at: int, details: Mapping[str, Any]) -> Span:
        span = self._tracing.tracer.start_span(
            f"agent {verb}",
            start_time=at,
            attributes={
                "miminions.agent.id": agent_id,
                "miminions.agent.name": self._tracing.agent_name(agent_id),
            },
        )
        _add_details(span, details)
        return span


def _add_details(span: Span, details: Mapping[str, Any]) -> None:
    for key, value in details.items():
        if isinstance(value, (str, bool, int, float)):
            span.set_attribute(f"miminions.event.{key}", value)


__all__ = ["EVENTS", "LifecycleSpans", "ns"]
