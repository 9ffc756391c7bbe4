"""Agents that report the OpenTelemetry context they run in, for the ``otel`` extra's tests.

A ``process`` agent's spans cannot reach the test's in-memory exporter, so these agents
report what they see *inside* their process in what they return (or reply):

- :func:`span_context` of OpenTelemetry's current span while the agent's code runs (which
  the runtime's run or send span must be);
- :func:`own_span` — a span the agent makes itself with a tracer provider of its own, and
  that span's parent (which must be the runtime's span, too).

Everything here is defined at module level so a worker process can import it by path; the
test session has opentelemetry (the tests that use these agents skip without it).
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from miminions import AgentMessage, BaseAgent, Task
from miminions.kernel.agent import AgentContext

#: Bound of every wait inside an agent, so a broken test cannot hang.
MAX_WAIT_SECONDS = 20.0


def ids(context: trace.SpanContext | None) -> dict[str, Any]:
    """A span context as JSON: hex ids as OpenTelemetry prints them, and validity."""
    if context is None:
        return {"trace_id": None, "span_id": None, "valid": False}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
        "valid": context.is_valid,
    }


def span_context() -> dict[str, Any]:
    """The ids of OpenTelemetry's current span, here and now."""
    return ids(trace.get_current_span().get_span_context())


def own_span(name: str) -> dict[str, Any]:
    """Make a span with a tracer provider of this agent's own, as agent code using
    OpenTelemetry would; return its ids and its parent's (None when it is a root)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("agent").start_as_current_span(name):
        pass
    (span,) = exporter.get_finished_spans()
    provider.shutdown()
    return {"span": ids(span.get_span_context()), "parent": ids(span.parent)}


class ContextReportingAgent(BaseAgent):
    """Returns ``{"pid", "current", "own"}``: the current span in its process while
    ``execute_task`` runs, and a span of its own (with its parent)."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {"pid": os.getpid(), "current": span_context(), "own": own_span("agent work")}


def sync_reporting_agent(task: Task, context: AgentContext) -> dict[str, Any]:
    """A plain ``def`` agent (it runs in the agent's thread): returns the current span."""
    return {"pid": os.getpid(), "current": span_context()}


class RequesterAgent(BaseAgent):
    """Sends a request to ``input_data["to"]`` inside a span of its own and returns the
    reply's data with what it saw: ``{"current", "own_request_parent", "reply"}``."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        current = span_context()
        provider = TracerProvider()
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("agent").start_as_current_span("ask") as asking:
            reply = await self.context.request(
                task.input_data["to"], "ping", {"n": 1}, timeout_seconds=MAX_WAIT_SECONDS
            )
        provider.shutdown()
        return {
            "current": current,
            "asking": ids(asking.get_span_context()),
            "reply": reply.data,
            "reply_trace_context": reply.trace_context,
        }


class ReplierAgent(BaseAgent):
    """Answers every request in ``on_message`` with the context it handled it in:
    ``{"current", "own"}``."""

    async def on_message(self, message: AgentMessage) -> None:
        if message.correlation_id is not None and not message.is_reply:
            await self.context.reply(
                message, {"current": span_context(), "own": own_span("handle request")}
            )

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {}


class InboxReportingAgent(BaseAgent):
    """Keeps, for every message ``on_message`` got, the current span while handling it;
    a task returns them (``{"seen": [{"message_id", "current"}]}``)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def on_message(self, message: AgentMessage) -> None:
        self.seen.append({"message_id": message.message_id, "current": span_context()})

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {"seen": list(self.seen)}


def broken_setup() -> None:
    """A worker setup (``miminions_worker_setup``) that fails."""
    raise RuntimeError("this setup always fails")
