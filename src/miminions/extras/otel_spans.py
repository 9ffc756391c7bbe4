"""The spans of the ``otel`` extra, made in the runtime's process (see
:mod:`miminions.extras.otel` for what they are and how they link).

:class:`RuntimeTracing` holds one runtime's tracer and the little it must remember between
two moments of a task (when a retried task began to wait again, a run whose outcome the
task events are about to tell); agent lifecycle spans are :mod:`.otel_lifecycle`'s.
:class:`TracedHost` and :class:`TracedBus` wrap the host and bus the other plugins chose,
so that the carrier the agent gets with a task is its run span's, and the carrier a
relayed message keeps is its send span's.

This module imports opentelemetry: it is only imported once the plugin is active.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from miminions.extras.otel_context import extract, inject
from miminions.extras.otel_lifecycle import EVENTS as LIFECYCLE_EVENTS
from miminions.extras.otel_lifecycle import LifecycleSpans, ns
from miminions.kernel.models import AgentMessage, AgentSpec, Event, EventType, Task
from miminions.kernel.task_input import describe_error
from miminions.kernel.tracing import Carrier

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

    from miminions.extras.otel import OtelOptions
    from miminions.kernel.interfaces import AgentHost, Bus
    from miminions.kernel.runtime import AgentRuntime

#: ``messaging.system`` of every messaging span: the runtime is the messaging system.
SYSTEM = "miminions"
#: ``messaging.destination.name`` of task spans: the runtime's one task queue.
TASK_QUEUE = "tasks"
# Span names are ``{operation} {destination}`` (the messaging semantic conventions), with
# the queue as the destination, never the task's name: a name must have few values for a
# backend to group spans by it. The task's name is the ``miminions.task.name`` attribute.
#: The PRODUCER span of a ``submit_task`` / ``submit_tasks`` call.
SUBMIT_SPAN = f"submit {TASK_QUEUE}"
#: The INTERNAL span of the time an attempt of a task waited in the queue.
WAIT_SPAN = f"wait {TASK_QUEUE}"
#: The CONSUMER span of an attempt of a task, its agent running it.
PROCESS_SPAN = f"process {TASK_QUEUE}"

# Task outcomes, the ``miminions.task.outcome`` of a run span.
COMPLETED, FAILED, TIMED_OUT, CANCELLED, REQUEUED, INTERRUPTED = (
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "requeued",
    "interrupted",  # cancelled with no task event to say why (the runtime closing)
)

_TASK_EVENTS = frozenset(
    {
        EventType.TASK_FAILED,
        EventType.TASK_TIMEOUT,
        EventType.TASK_RETRY_SCHEDULED,
        EventType.TASK_CANCELLED,
        EventType.TASK_REQUEUED,
    }
)


def _tracer(tracer_provider: TracerProvider | None) -> Tracer:
    """The tracer of the spans of miminions (from the global provider for None)."""
    from miminions import __version__

    return trace.get_tracer("miminions", __version__, tracer_provider=tracer_provider)


@dataclass(eq=False, slots=True)
class _Attempt:
    """One run of a task, from its handover to the agent until its outcome is known."""

    task_id: str
    span: Span
    #: Nothing records this run (no tracer provider): nothing to end or settle.
    quiet: bool = False
    outcome: str = COMPLETED
    error: str | None = None
    error_type: str | None = None
    retrying: bool = False
    #: Its span has ended: a late return of an abandoned run changes nothing.
    ended: bool = False

    def failed(self, error: BaseException) -> None:
        """The agent's code raised ``error`` (rebuilt from the worker for a process agent)."""
        remote_type = getattr(error, "remote_type", None)
        attributes: dict[str, AttributeValue] = {}
        if remote_type is not None:
            attributes["exception.type"] = remote_type
            attributes["exception.stacktrace"] = getattr(error, "remote_traceback", "")
        self.span.record_exception(error, attributes=attributes)
        self.outcome = FAILED
        self.error = describe_error(error)
        self.error_type = remote_type or type(error).__name__


class RuntimeTracing:
    """The spans of one runtime (one instance per runtime, made by the plugin)."""

    def __init__(
        self,
        runtime: AgentRuntime,
        options: OtelOptions,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        # Weakly: the plugin keeps this object in a WeakKeyDictionary keyed by the runtime,
        # and a value holding its key would keep both alive for good.
        self._runtime = weakref.ref(runtime)
        self.options = options
        self._provider = tracer_provider
        self.tracer: Tracer = _tracer(tracer_provider)
        self._waiting_since: dict[str, int] = {}  # task id -> when its next wait began (ns)
        self._settling: dict[str, _Attempt] = {}  # runs whose outcome the events tell now
        self._running: dict[str, _Attempt] = {}  # runs handed to their agent, not returned
        self._lifecycle = LifecycleSpans(self)

    def use(self, tracer_provider: TracerProvider | None) -> None:
        """Record with ``tracer_provider`` from now on (None: the global provider)."""
        self._provider = tracer_provider
        self.tracer = _tracer(tracer_provider)

    def recording(self) -> bool:
        """Whether spans can be recorded at all: this runtime was given a tracer provider,
        or one was set globally. Without one OpenTelemetry records nothing, and the task
        and message spans are not drawn (their bookkeeping cost about 17 µs per task): a
        span of a tracer without a provider would only repeat its parent's context, which
        the work already carries."""
        return self._provider is not None or not isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        )

    def close(self) -> None:
        """The runtime stopped: end what is still open (an agent start that never ended,
        a run whose code never returned)."""
        for attempt in list(self._running.values()):
            if attempt.outcome == COMPLETED:
                attempt.outcome = INTERRUPTED
            self._end_now(attempt)
        for attempt in list(self._settling.values()):
            self._finish(attempt)
        self._lifecycle.close()
        self._waiting_since.clear()

    # ------------------------------------------------------------------ work created
    def carrier_for(self, operation: str, count: int = 1) -> Carrier | None:
        """``miminions_trace_context``: a submit span's carrier for tasks (``count`` of
        them), else the caller's current context (the send spans come from
        :class:`TracedBus`)."""
        if operation != "submit" or not self.options.tasks or not self.recording():
            if not trace.get_current_span().get_span_context().is_valid:
                return None
            return inject()
        attributes: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "submit",
            "messaging.destination.name": TASK_QUEUE,
        }
        if count != 1:  # a batch (semantic conventions: not set for a single message)
            attributes["messaging.batch.message_count"] = count
        span = self.tracer.start_span(SUBMIT_SPAN, kind=SpanKind.PRODUCER, attributes=attributes)
        span.end()
        return inject(trace.set_span_in_context(span))

    # ------------------------------------------------------------------ task runs
    def begin_run(self, task: Task, spec: AgentSpec) -> _Attempt:
        """A task is handed to its agent: draw the wait that ended now, start the run and
        give the task (the agent's copy) the run span's carrier."""
        if not self.recording():
            self._waiting_since.pop(task.task_id, None)
            return _Attempt(task.task_id, trace.INVALID_SPAN, quiet=True)
        parent = extract(task.trace_context)
        now = ns(datetime.now(UTC))
        since = self._waiting_since.pop(task.task_id, None) or ns(task.created_at)
        attributes: dict[str, AttributeValue] = {
            "miminions.task.id": task.task_id,
            "miminions.task.name": task.name,
            "miminions.task.priority": task.priority,
            "miminions.task.attempt": task.retry_count + 1,
            "miminions.agent.id": spec.agent_id,
            "miminions.agent.name": spec.name,
        }
        wait = self.tracer.start_span(
            WAIT_SPAN, context=parent, start_time=min(since, now), attributes=attributes
        )
        wait.end(end_time=now)
        if not trace.get_current_span(parent).get_span_context().is_valid:
            # A task that carries no trace (submitted with tracing off, or before a
            # provider was set): its wait begins the attempt's trace, and the run joins it
            # (each was a trace of its own).
            parent = trace.set_span_in_context(wait)
        run = self.tracer.start_span(
            PROCESS_SPAN,
            context=parent,
            kind=SpanKind.CONSUMER,
            start_time=now,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": TASK_QUEUE,
                "messaging.message.id": task.task_id,
                **attributes,
            },
        )
        carrier = inject(trace.set_span_in_context(run, parent))
        if carrier is not None:
            task.trace_context = carrier  # the agent's copy: the stored task keeps its own
        earlier = self._running.get(task.task_id)
        if earlier is not None:  # an abandoned run no event ended: the task runs again
            earlier.outcome = REQUEUED
            self._end_now(earlier)
        attempt = self._running[task.task_id] = _Attempt(task.task_id, run)
        return attempt

    def settle(self, attempt: _Attempt) -> None:
        """The run returned or raised. The task events that say what came of it (retry,
        time-out, requeue, ...) follow in the same loop step: end the span after them."""
        if attempt.quiet or attempt.ended:
            return  # ended already: its run was abandoned, and its outcome told then
        if self._running.get(attempt.task_id) is attempt:
            del self._running[attempt.task_id]
        previous = self._settling.get(attempt.task_id)
        if previous is not None:
            self._finish(previous)  # never left open, however the loop steps fall
        self._settling[attempt.task_id] = attempt
        asyncio.get_running_loop().call_soon(self._finish, attempt)

    def _finish(self, attempt: _Attempt) -> None:
        if self._settling.get(attempt.task_id) is not attempt:
            return  # ended already (by close(), or by a later attempt settling)
        del self._settling[attempt.task_id]
        attempt.ended = True
        span = attempt.span
        if not span.is_recording():
            return
        span.set_attribute("miminions.task.outcome", attempt.outcome)
        if attempt.retrying:
            span.set_attribute("miminions.task.retry_scheduled", True)
        if attempt.outcome in (FAILED, TIMED_OUT):
            span.set_attribute("error.type", attempt.error_type or attempt.outcome)
            span.set_status(Status(StatusCode.ERROR, attempt.error))
        elif attempt.outcome == COMPLETED:
            span.set_status(Status(StatusCode.OK))
        span.end()

    def _end_now(self, attempt: _Attempt) -> None:
        """End the span of a run that has not returned (its outcome is known already)."""
        if self._running.get(attempt.task_id) is attempt:
            del self._running[attempt.task_id]
        self._settling[attempt.task_id] = attempt
        self._finish(attempt)

    def _task_event(self, event: Event) -> None:
        kind, task_id, details = event.event_type, event.task_id or "", event.details
        attempt = self._settling.get(task_id)
        # An outcome for a run that has not returned: the executor abandoned it (its code
        # ignored the cancel). The run ends here; its code returning later changes nothing.
        abandoned = attempt is None and task_id in self._running
        if abandoned:
            attempt = self._running[task_id]
        if kind in (EventType.TASK_RETRY_SCHEDULED, EventType.TASK_REQUEUED):
            self._waiting_since[task_id] = ns(event.timestamp)  # its next wait begins
        elif kind in (EventType.TASK_FAILED, EventType.TASK_CANCELLED):
            self._waiting_since.pop(task_id, None)
        if attempt is None:
            return
        if kind is EventType.TASK_TIMEOUT:
            attempt.outcome, attempt.error_type = TIMED_OUT, "TaskTimeoutError"
            attempt.error = f"timed out after {details.get('timeout_seconds')} s"
        elif kind in (EventType.TASK_RETRY_SCHEDULED, EventType.TASK_FAILED):
            attempt.retrying = kind is EventType.TASK_RETRY_SCHEDULED
            if attempt.outcome == COMPLETED:  # its result was refused (not JSON)
                attempt.outcome = FAILED
                attempt.error = str(details.get("error") or details.get("reason") or "")
        elif kind is EventType.TASK_CANCELLED:
            attempt.outcome = CANCELLED
        elif kind is EventType.TASK_REQUEUED:
            attempt.outcome = REQUEUED
            attempt.span.set_attribute("miminions.task.requeue_reason", details.get("reason", ""))
        if abandoned and kind is not EventType.TASK_TIMEOUT:  # a timeout's outcome follows
            self._end_now(attempt)

    # ------------------------------------------------------------------ messages
    def sent(self, message: AgentMessage) -> Span:
        """Start the send span of a message being relayed and give the message its
        carrier, so the receiver's handling is a child of the send. The caller ends it."""
        if not self.recording():
            return trace.INVALID_SPAN  # the message keeps the carrier it has
        if message.is_reply:
            operation = "reply"
        elif message.correlation_id is not None and message.correlation_id == message.message_id:
            operation = "request"
        else:
            operation = "publish" if message.topic else "send"
        destination = message.topic or self.agent_name(message.recipient_id)
        parent = extract(message.trace_context)
        span = self.tracer.start_span(
            f"{operation} {destination}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=self._message_attributes(message, "send", operation, destination),
        )
        carrier = inject(trace.set_span_in_context(span, parent))
        if carrier is not None:
            message.trace_context = carrier
        return span

    def received(self, message: AgentMessage) -> None:
        """A message left its recipient's mailbox: an instant receive span."""
        if not self.recording():
            return
        destination = message.topic or self.agent_name(message.recipient_id)
        self.tracer.start_span(
            f"receive {destination}",
            context=extract(message.trace_context),
            kind=SpanKind.CONSUMER,
            attributes=self._message_attributes(message, "receive", "receive", destination),
        ).end()

    def _message_attributes(
        self, message: AgentMessage, kind: str, operation: str, destination: str
    ) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": kind,
            "messaging.operation.name": operation,
            "messaging.destination.name": destination,
            "messaging.message.id": message.message_id,
            "miminions.message.type": message.message_type,
        }
        if message.correlation_id is not None:
            attributes["messaging.message.conversation_id"] = message.correlation_id
        if message.sender_id is not None:
            attributes["miminions.message.sender_id"] = message.sender_id
        if message.recipient_id is not None:
            attributes["miminions.message.recipient_id"] = message.recipient_id
        return attributes

    def agent_name(self, agent_id: str | None) -> str:
        """The name of a registered agent (its id if unknown; None: the runtime)."""
        if agent_id is None:
            return "runtime"  # a reply to the runtime's own request
        runtime = self._runtime()
        slot = None if runtime is None else runtime.agent_book.slots.get(agent_id)
        return slot.spec.name if slot is not None else agent_id

    # ------------------------------------------------------------------ events
    def on_event(self, event: Event) -> None:
        """Follow one event of the runtime: task outcomes and agent lifecycle."""
        kind = event.event_type
        if kind in _TASK_EVENTS:
            if self.options.tasks:
                self._task_event(event)
        elif kind in LIFECYCLE_EVENTS and self.options.agents and event.agent_id is not None:
            self._lifecycle.on_event(event)


class TracedHost:
    """The host another plugin chose, with a wait and a run span around each task run
    (every other member is the chosen host's)."""

    def __init__(self, host: AgentHost, tracing: RuntimeTracing) -> None:
        self._host = host
        self._tracing = tracing
        self.spec = host.spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    async def run(self, task: Task, checkpoint: Any = None) -> Any:
        """Run the task in the chosen host, its run span current for the agent."""
        attempt = self._tracing.begin_run(task, self.spec)
        try:
            return await self._host.run(task, checkpoint)
        except asyncio.CancelledError:
            attempt.outcome = INTERRUPTED  # the task events that follow say why
            raise
        except Exception as exc:
            attempt.failed(exc)
            raise
        finally:
            self._tracing.settle(attempt)


class TracedBus:
    """The bus another plugin chose, with a send span for every message it is handed
    and a receive span for every message taken (every other member is the chosen bus's)."""

    def __init__(self, bus: Bus, tracing: RuntimeTracing) -> None:
        self._bus = bus
        self._tracing = tracing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    def post(self, messages: list[AgentMessage]) -> list[AgentMessage]:
        """Post through the chosen bus, each message in its send span."""
        spans = [self._tracing.sent(message) for message in messages]
        try:
            return self._bus.post(messages)
        except Exception as exc:  # a full mailbox: nothing was sent
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            for span in spans:
                span.end()

    async def take(self, agent_id: str, timeout_seconds: float | None) -> AgentMessage:
        """Take from the chosen bus; the message gets a receive span."""
        message = await self._bus.take(agent_id, timeout_seconds)
        self._tracing.received(message)
        return message

    def resolve_reply(self, message: AgentMessage) -> bool:
        """Hand a reply to its waiting request; only a delivered reply gets a send span."""
        if not self._bus.resolve_reply(message):
            return False  # the kernel posts it to a mailbox instead: post() draws it
        # The requester resumes on a later loop turn, so the carrier set now reaches it.
        self._tracing.sent(message).end()
        return True


__all__ = [
    "PROCESS_SPAN",
    "SUBMIT_SPAN",
    "SYSTEM",
    "TASK_QUEUE",
    "WAIT_SPAN",
    "RuntimeTracing",
    "TracedBus",
    "TracedHost",
]
