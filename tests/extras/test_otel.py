"""The otel extra: spans of tasks, messages and agents linked into one trace across the
runtime and its worker processes; options, disable, missing package; and the kernel's trace
carrier it builds on (stored with tasks, carried by messages, seen inside agents).

Spans are recorded with the SDK's in-memory exporter on a tracer provider given to the
runtime (``otel.use_tracer_provider``), never the global one. What a ``process`` agent sees
in its worker comes back in its task's result (``tests.support.tracing_agents``).
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentMessage,
    AgentRuntime,
    BaseAgent,
    ConfigurationError,
    DependencyCycleError,
    MissingExtraError,
    RuntimeConfig,
    Task,
    TaskRequest,
    TaskStatus,
    ValidationError,
    hookimpl,
)
from miminions.extras import otel
from miminions.kernel.agent import AgentContext
from miminions.kernel.plugins import AUTOLOAD_ENV
from miminions.kernel.tracing import scope_carrier
from miminions.plugins import sqlite_schema
from miminions.plugins.sqlite_store import SQLiteStore
from tests.support import agents
from tests.support.agents import STARTED, EchoAgent, FlakyAgent, RecordingAgent, SleepyAgent
from tests.support.interpreter import without_package
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until

try:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    from tests.support import tracing_agents
except ImportError:  # the core test session has no extras: the tests needing them skip
    pass

PIP_COMMAND = "pip install 'miminions[otel]'"
MakeConfig = Callable[..., RuntimeConfig]


@pytest.fixture(autouse=True)
def _entry_points_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extra is tested as users get it: loaded from the entry-point group."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)


@dataclass
class Recorded:
    """A tracer provider recording into memory, and what it recorded."""

    provider: TracerProvider
    exporter: InMemorySpanExporter

    def named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``, oldest first."""
        spans = [span for span in self.exporter.get_finished_spans() if span.name == name]
        return sorted(spans, key=lambda span: span.start_time or 0)

    async def one(self, name: str) -> ReadableSpan:
        """The one span called ``name`` (waiting for it to end: some end a moment after
        the call that made them returned)."""
        spans = await wait_until(lambda: self.named(name), f"a span named {name!r}")
        assert len(spans) == 1, [span.name for span in spans]
        return spans[0]

    async def some(self, name: str, count: int) -> list[ReadableSpan]:
        """The ``count`` spans called ``name``, oldest first."""
        spans = await wait_until(
            lambda: self.named(name) if len(self.named(name)) >= count else None,
            f"{count} x {name!r}",
        )
        assert len(spans) == count, [span.name for span in spans]
        return spans

    def names(self) -> set[str]:
        return {span.name for span in self.exporter.get_finished_spans()}


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    pytest.importorskip("opentelemetry.sdk", reason="needs miminions[otel]")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Recorded(provider, exporter)
    provider.shutdown()


@pytest.fixture
async def traced(make_config: MakeConfig, recorded: Recorded) -> AsyncIterator[AgentRuntime]:
    """A started runtime recording its spans into ``recorded``."""
    rt = AgentRuntime(config=make_config())
    otel.use_tracer_provider(rt, recorded.provider)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


def ids(span: ReadableSpan) -> dict[str, Any]:
    """A recorded span's ids in the form the agents report them."""
    return tracing_agents.ids(span.get_span_context())


def assert_attributes(span: ReadableSpan, expected: dict[str, Any]) -> None:
    attributes = dict(span.attributes or {})
    assert {key: attributes.get(key) for key in expected} == expected


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.context is not None
    assert parent.context is not None
    assert child.context.trace_id == parent.context.trace_id, f"{child.name} in another trace"
    assert child.parent.span_id == parent.context.span_id, (
        f"{child.name} is not a child of {parent.name}"
    )


async def run_task(rt: AgentRuntime, name: str, data: dict[str, Any], **kwargs: Any) -> Task:
    task_id = await rt.submit_task(name, data, **kwargs)
    return await rt.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)


# ----------------------------------------------------------------------------- tasks
async def test_submit_wait_and_run_spans_follow_the_caller(
    traced: AgentRuntime, recorded: Recorded
) -> None:
    """The submit span is a child of the caller's span; the queue wait and the run are
    children of the submit span, with the messaging attributes and the run's outcome."""
    agent_id = await start_agent(traced, "echo", EchoAgent)
    with recorded.provider.get_tracer("test").start_as_current_span("caller"):
        task_id = await traced.submit_task("greet", {"x": 1})
    task = await traced.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)
    assert task.status is TaskStatus.COMPLETED

    caller, submit = await recorded.one("caller"), await recorded.one("submit tasks")
    wait, run = await recorded.one("wait tasks"), await recorded.one("process tasks")
    assert_child(submit, caller)
    assert_child(wait, submit)
    assert_child(run, submit)
    assert (submit.kind, wait.kind, run.kind) == (
        SpanKind.PRODUCER,
        SpanKind.INTERNAL,
        SpanKind.CONSUMER,
    )
    assert submit.attributes is not None
    assert run.attributes is not None
    assert_attributes(
        submit,
        {
            "messaging.system": "miminions",
            "messaging.operation.type": "send",
            "messaging.operation.name": "submit",
            "messaging.destination.name": "tasks",
        },
    )
    assert "messaging.batch.message_count" not in submit.attributes  # one task: no batch
    assert_attributes(wait, {"miminions.task.id": task_id, "miminions.task.name": "greet"})
    assert_attributes(
        run,
        {
            "messaging.system": "miminions",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "tasks",
            "messaging.message.id": task_id,
            "miminions.task.id": task_id,
            "miminions.task.name": "greet",
            "miminions.task.attempt": 1,
            "miminions.agent.id": agent_id,
            "miminions.agent.name": "echo",
            "miminions.task.outcome": "completed",
        },
    )
    assert run.status.status_code is StatusCode.OK
    assert wait.start_time is not None
    assert wait.end_time is not None
    assert run.start_time is not None
    assert wait.start_time <= wait.end_time <= run.start_time
    # The task keeps the submit span's context; only the agent's copy had the run's.
    stored = traced.get_task_status(task_id).trace_context
    assert stored is not None
    assert ids(submit)["span_id"] in stored["traceparent"]


async def test_a_batch_is_one_submit_span_and_names_stay_few(
    traced: AgentRuntime, recorded: Recorded
) -> None:
    """``submit_tasks`` draws one submit span with the batch's size; the tasks' spans are
    named after the queue, whatever the task is called, and carry its name instead."""
    await start_agent(traced, "echo", EchoAgent)
    task_ids = await traced.submit_tasks([{"name": "alpha"}, {"name": "beta"}, {"name": "gamma"}])
    for task_id in task_ids:
        task = await traced.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)
        assert task.status is TaskStatus.COMPLETED

    submit = await recorded.one("submit tasks")
    assert_attributes(submit, {"messaging.batch.message_count": 3})
    runs = await recorded.some("process tasks", 3)
    waits = await recorded.some("wait tasks", 3)
    for span in (*runs, *waits):
        assert_child(span, submit)
    named = {(span.attributes or {}).get("miminions.task.name") for span in runs}
    assert named == {"alpha", "beta", "gamma"}
    task_spans = {name for name in recorded.names() if not name.startswith("agent ")}
    assert task_spans == {"submit tasks", "wait tasks", "process tasks"}


@pytest.mark.parametrize("isolation", ["process", "inline"])
@pytest.mark.parametrize("agent", ["async class", "sync function"])
async def test_agent_code_runs_in_its_run_span(
    traced: AgentRuntime, recorded: Recorded, isolation: str, agent: str
) -> None:
    """Inside the agent — in its worker process too, and in a sync agent's thread —
    OpenTelemetry's current span is the run span, and a span the agent makes with its own
    tracer provider is the run span's child."""
    registered: object = (
        tracing_agents.ContextReportingAgent
        if agent == "async class"
        else tracing_agents.sync_reporting_agent
    )
    agent_id = await start_agent(traced, "reporter", registered, isolation=isolation)
    task = await run_task(traced, "report", {}, agent_id=agent_id)
    assert task.status is TaskStatus.COMPLETED, task.error_message

    run = await recorded.one("process tasks")
    seen = task.output_data
    assert (seen["pid"] != os.getpid()) == (isolation == "process")
    assert seen["current"] == ids(run) | {"valid": True}
    if "own" in seen:
        assert seen["own"]["parent"] == seen["current"]
        assert seen["own"]["span"]["trace_id"] == ids(run)["trace_id"]


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_a_failed_attempt_is_an_error_and_its_retry_waits_again(
    traced: AgentRuntime, recorded: Recorded, isolation: str
) -> None:
    """Each attempt has its own wait and run span under the one submit span; the failed
    run is ERROR with the agent's exception (its original type, from a worker too)."""
    await start_agent(traced, "flaky", FlakyAgent, isolation=isolation)
    task = await run_task(traced, "flaky", {"fail_times": 1}, max_retries=1)
    assert task.status is TaskStatus.COMPLETED, task.error_message

    submit = await recorded.one("submit tasks")
    first, second = await recorded.some("process tasks", 2)
    waits = await recorded.some("wait tasks", 2)
    for span in (first, second, *waits):
        assert_child(span, submit)
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.status.status_code is StatusCode.ERROR
    assert "attempt 1 fails" in (first.status.description or "")
    assert first.attributes["error.type"] == "ValueError"
    assert first.attributes["miminions.task.outcome"] == "failed"
    assert first.attributes["miminions.task.retry_scheduled"] is True
    (exception,) = [event for event in first.events if event.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "ValueError"
    assert second.status.status_code is StatusCode.OK
    assert second.attributes["miminions.task.attempt"] == 2
    # the retry's wait began when the first attempt failed, not when the task was made
    assert waits[1].start_time is not None
    assert first.start_time is not None
    assert waits[1].start_time >= first.start_time


async def test_a_timed_out_run_is_an_error(traced: AgentRuntime, recorded: Recorded) -> None:
    await start_agent(traced, "sleepy", SleepyAgent)
    task = await run_task(traced, "nap", {"seconds": 30}, timeout_seconds=0.1)
    assert task.status is TaskStatus.FAILED

    run = await recorded.one("process tasks")
    assert run.attributes is not None
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes["miminions.task.outcome"] == "timed_out"
    assert run.attributes["error.type"] == "TaskTimeoutError"


async def test_a_cancelled_run_is_not_an_error(traced: AgentRuntime, recorded: Recorded) -> None:
    await start_agent(traced, "sleepy", SleepyAgent)
    task_id = await traced.submit_task("nap", {"seconds": 30})
    await wait_until(lambda: "nap" in STARTED, "the task to start")
    await traced.cancel_task(task_id)

    run = await recorded.one("process tasks")
    assert run.attributes is not None
    assert run.attributes["miminions.task.outcome"] == "cancelled"
    assert run.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("how", ["requeued", "timed_out"])
async def test_an_abandoned_run_ends_with_its_outcome_not_when_its_code_returns(
    make_config: MakeConfig, recorded: Recorded, how: str
) -> None:
    """A run whose code ignores cancellation is abandoned (its agent stopped, or its
    timeout past): its span ends then, with that outcome, and the task's next run has a
    span of its own; the stuck code returning later changes nothing (no second
    "completed" run of one task in the trace)."""
    gate = agents.GATES.setdefault("stubborn", asyncio.Event())
    gate.clear()
    agents.STARTED.pop("stubborn", None)
    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=0.2))
    otel.use_tracer_provider(rt, recorded.provider)
    async with rt:
        try:
            stubborn = await start_agent(rt, "stubborn", agents.StubbornAgent)
            timeout = 0.1 if how == "timed_out" else None
            task_id = await rt.submit_task("stubborn", timeout_seconds=timeout, max_retries=1)
            await asyncio.wait_for(agents.STARTED["stubborn"].wait(), WAIT_SECONDS)
            if how == "timed_out":
                await wait_until(
                    lambda: rt.executor._runs[task_id].timed_out,  # type: ignore[attr-defined]
                    "the timeout to pass",
                )
            await rt.stop_agent(stubborn, timeout_seconds=0.05)  # the run is abandoned
            await start_agent(rt, "echo", EchoAgent)
            done = await rt.wait_for_task(task_id, WAIT_SECONDS)
            assert done.status is TaskStatus.COMPLETED
            first, second = await recorded.some("process tasks", 2)
        finally:
            gate.set()  # the stuck code returns now
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["miminions.agent.name"] == "stubborn"
    assert first.attributes["miminions.task.outcome"] == how
    assert first.status.status_code is (
        StatusCode.ERROR if how == "timed_out" else StatusCode.UNSET
    )
    assert second.attributes["miminions.task.outcome"] == "completed"
    # after the stop, the stuck code has returned: still two runs, the first unchanged
    runs = recorded.named("process tasks")
    assert [r.attributes["miminions.task.outcome"] for r in runs if r.attributes] == [
        how,
        "completed",
    ]


async def test_the_trace_survives_a_restart(make_config: MakeConfig, recorded: Recorded) -> None:
    """The carrier is stored with the task: a run in a later runtime on the same database
    is still a child of the original submit span."""
    first = AgentRuntime(config=make_config())
    otel.use_tracer_provider(first, recorded.provider)
    async with first:
        await first.pause_queue()
        task_id = await first.submit_task("later")
        stored = first.get_task_status(task_id).trace_context
    submit = await recorded.one("submit tasks")
    assert stored is not None
    assert ids(submit)["span_id"] in stored["traceparent"]

    second = AgentRuntime(config=make_config())
    otel.use_tracer_provider(second, recorded.provider)
    async with second:
        assert second.get_task_status(task_id).trace_context == stored
        await start_agent(second, "echo", EchoAgent)
        await second.resume_queue()
        task = await second.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)
        assert task.status is TaskStatus.COMPLETED
    assert_child(await recorded.one("process tasks"), submit)


# ----------------------------------------------------------------------------- messages
async def test_request_and_reply_between_process_agents_are_one_trace(
    traced: AgentRuntime, recorded: Recorded
) -> None:
    """Agent A (a worker process) sends a request to agent B (another worker process)
    inside a span of its own; B handles it in the request's send span and replies. Every
    span — the caller's, submit, A's run, request, receive, reply — is in one trace, each
    a child of the one before it, also across the processes."""
    replier = await start_agent(traced, "replier", tracing_agents.ReplierAgent, isolation="process")
    requester = await start_agent(
        traced, "requester", tracing_agents.RequesterAgent, isolation="process"
    )
    with recorded.provider.get_tracer("test").start_as_current_span("caller"):
        task_id = await traced.submit_task("ask", {"to": replier}, agent_id=requester)
    task = await traced.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    seen = task.output_data

    caller, submit, run = (
        await recorded.one("caller"),
        await recorded.one("submit tasks"),
        await recorded.one("process tasks"),
    )
    request = await recorded.one("request replier")
    receive = await recorded.one("receive replier")
    reply = await recorded.one("reply requester")
    assert_child(submit, caller)
    assert_child(run, submit)
    # in A's worker: the run span is current; A's own span "ask" is its child and the
    # request is a child of "ask"
    assert seen["current"] == ids(run) | {"valid": True}
    assert seen["asking"]["trace_id"] == ids(run)["trace_id"]
    assert request.parent is not None
    assert trace.format_span_id(request.parent.span_id) == seen["asking"]["span_id"]
    assert ids(request)["trace_id"] == ids(caller)["trace_id"]
    # in B's worker: the request was handled in its send span
    assert_child(receive, request)
    assert seen["reply"]["current"] == ids(request) | {"valid": True}
    assert seen["reply"]["own"]["parent"] == ids(request) | {"valid": True}
    # the reply answers in the request's trace, and A got the reply span's context
    assert_child(reply, request)
    assert ids(reply)["span_id"] in seen["reply_trace_context"]["traceparent"]
    assert (request.kind, receive.kind, reply.kind) == (
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
    )
    assert request.attributes is not None
    assert reply.attributes is not None
    assert request.attributes["messaging.operation.name"] == "request"
    assert request.attributes["messaging.destination.name"] == "replier"
    assert request.attributes["miminions.message.sender_id"] == requester
    conversation = request.attributes["messaging.message.conversation_id"]
    assert conversation == request.attributes["messaging.message.id"]
    assert reply.attributes["messaging.message.conversation_id"] == conversation


async def test_messages_from_the_application_are_children_of_the_caller(
    traced: AgentRuntime, recorded: Recorded
) -> None:
    """``send_message`` and ``publish`` inside a span of the application: each send span
    is its child, the receive span the send's, and ``on_message`` runs in the send span."""
    inbox = tracing_agents.InboxReportingAgent()
    agent_id = await start_agent(traced, "inbox", inbox, topics=["news"])
    with recorded.provider.get_tracer("test").start_as_current_span("caller"):
        (sent_id,) = await traced.send_message(agent_id, "note", {"n": 1})
        (published_id,) = await traced.publish("news", "headline")
    caller = await recorded.one("caller")
    send, publish = await recorded.one("send inbox"), await recorded.one("publish news")
    assert_child(send, caller)
    assert_child(publish, caller)
    assert_child(await recorded.one("receive inbox"), send)
    assert_child(await recorded.one("receive news"), publish)
    assert send.attributes is not None
    assert publish.attributes is not None
    assert send.attributes["messaging.message.id"] == sent_id
    assert send.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.operation.name"] == "publish"
    assert publish.attributes["messaging.destination.name"] == "news"

    seen = await wait_until(lambda: inbox.seen if len(inbox.seen) == 2 else None, "both handled")
    by_id = {entry["message_id"]: entry["current"] for entry in seen}
    assert by_id[sent_id] == ids(send) | {"valid": True}
    assert by_id[published_id] == ids(publish) | {"valid": True}


# ----------------------------------------------------------------------------- agents
async def test_agent_lifecycle_spans(traced: AgentRuntime, recorded: Recorded) -> None:
    """Start and stop are spans with their duration, the other lifecycle events instant
    spans; all name the agent and are children of the caller's span."""
    with recorded.provider.get_tracer("test").start_as_current_span("caller"):
        agent_id = await start_agent(traced, "life", RecordingAgent)
        await traced.pause_agent(agent_id)
        await traced.resume_agent(agent_id)
        await traced.stop_agent(agent_id)
    caller = await recorded.one("caller")
    for verb in ("register", "start", "pause", "resume", "stop"):
        span = await recorded.one(f"agent {verb}")
        assert_child(span, caller)
        assert span.attributes is not None
        assert span.attributes["miminions.agent.id"] == agent_id
        assert span.attributes["miminions.agent.name"] == "life"
        assert span.status.status_code is not StatusCode.ERROR
    start, stop = await recorded.one("agent start"), await recorded.one("agent stop")
    assert start.start_time is not None
    assert start.end_time is not None
    assert start.start_time <= start.end_time  # from agent_starting to agent_started
    assert stop.attributes is not None
    assert stop.attributes["miminions.event.graceful"] is True


async def test_a_failed_start_is_an_error(traced: AgentRuntime, recorded: Recorded) -> None:
    class FailingStart(BaseAgent):
        async def on_start(self) -> None:
            raise RuntimeError("cannot start")

    agent_id = await traced.register_agent("failing", FailingStart)
    instance = await traced.start_agent(agent_id)
    assert instance.status.value == "failed"
    start = await recorded.one("agent start")
    assert start.status.status_code is StatusCode.ERROR
    assert "cannot start" in (start.status.description or "")


# ----------------------------------------------------------------------------- options
async def test_options_choose_the_spans(make_config: MakeConfig, recorded: Recorded) -> None:
    """``tasks`` and ``agents`` off: only message spans; work still runs."""
    rt = AgentRuntime(
        config=make_config(plugin_options={"otel": {"tasks": False, "agents": False}})
    )
    otel.use_tracer_provider(rt, recorded.provider)
    async with rt:
        agent_id = await start_agent(rt, "echo", EchoAgent)
        assert (await run_task(rt, "greet", {})).status is TaskStatus.COMPLETED
        await rt.send_message(agent_id, "note")
        await recorded.one("send echo")
    assert recorded.names() == {"send echo"}


async def test_without_agent_context_a_worker_sees_no_span(
    make_config: MakeConfig, recorded: Recorded
) -> None:
    """``agent_context`` off: the runtime still records the run, but agent code in a
    worker process runs outside any trace."""
    rt = AgentRuntime(config=make_config(plugin_options={"otel": {"agent_context": False}}))
    otel.use_tracer_provider(rt, recorded.provider)
    async with rt:
        agent_id = await start_agent(
            rt, "reporter", tracing_agents.ContextReportingAgent, isolation="process"
        )
        task = await run_task(rt, "report", {}, agent_id=agent_id)
    await recorded.one("process tasks")
    assert task.output_data["current"]["valid"] is False


@pytest.mark.parametrize(
    ("section", "complaint"),
    [({"spans": True}, "spans"), ({"tasks": "yes"}, "tasks"), ({"agents": 1}, "agents")],
)
async def test_bad_options_fail_the_start(
    make_config: MakeConfig, section: dict[str, Any], complaint: str
) -> None:
    rt = AgentRuntime(config=make_config(plugin_options={"otel": section}))
    with pytest.raises(ConfigurationError, match=rf"plugin_options\['otel'\].*{complaint}"):
        await rt.start()


# ----------------------------------------------------------------------------- loading
def test_registered_from_the_entry_point_group(make_config: MakeConfig) -> None:
    rt = AgentRuntime(config=make_config())
    assert rt.plugin_manager.get_plugin("otel") is otel


async def test_disabled_by_name_records_nothing(
    make_config: MakeConfig, recorded: Recorded
) -> None:
    rt = AgentRuntime(config=make_config(), disable=["otel"])
    otel.use_tracer_provider(rt, recorded.provider)
    assert rt.plugin_manager.get_plugin("otel") is None
    async with rt:
        agent_id = await start_agent(rt, "echo", EchoAgent)
        with recorded.provider.get_tracer("test").start_as_current_span("caller"):
            task = await run_task(rt, "greet", {})
            await rt.send_message(agent_id, "note")
        assert task.status is TaskStatus.COMPLETED
        assert task.trace_context is None
    assert recorded.names() == {"caller"}


def _hide_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if opentelemetry were not installed (imports of it fail)."""
    for name in ("opentelemetry", "opentelemetry.trace"):
        monkeypatch.setitem(sys.modules, name, None)


async def test_without_the_package_it_is_dormant(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing asked for it: the runtime runs as if the plugin were not there."""
    _hide_opentelemetry(monkeypatch)
    async with AgentRuntime(config=make_config()) as rt:
        await start_agent(rt, "echo", EchoAgent)
        task = await run_task(rt, "greet", {})
        assert task.status is TaskStatus.COMPLETED
        assert task.trace_context is None
        assert rt.trace_carrier("submit") is None


async def test_asked_for_without_the_package_the_start_fails(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide_opentelemetry(monkeypatch)
    rt = AgentRuntime(config=make_config(plugin_options={"otel": {}}))
    with pytest.raises(MissingExtraError, match=re.escape(PIP_COMMAND)) as info:
        await rt.start()
    assert info.value.extra == "otel"
    assert not rt.is_running


def test_not_installed_it_adds_no_hook_to_the_work(tmp_path: Path) -> None:
    """Without opentelemetry at import, the plugin is loaded but implements nothing the
    runtime calls per submit, send or event; asking for it still fails the start."""
    seen = without_package("opentelemetry", "otel", str(tmp_path / "db.sqlite"))
    assert "otel" in seen["plugins"]
    assert seen["hooks"] == ["miminions_configure"]
    assert "otel" not in seen["event"]
    assert seen["trace"] == []
    assert PIP_COMMAND in seen["start"]


# ----------------------------------------------------------------------------- the kernel
class CarrierPlugin:
    """A tracing plugin of the simplest kind: every piece of work gets one fixed carrier."""

    miminions_plugin_name = "fixed_carrier"
    CARRIER = {"trace": "t-1"}

    @hookimpl
    def miminions_trace_context(self, operation: str) -> dict[str, str]:
        return {**self.CARRIER, "operation": operation}


class Inbox(BaseAgent):
    """Keeps the messages ``on_message`` got and the carrier current while handling each."""

    def __init__(self) -> None:
        self.got: list[tuple[AgentMessage, dict[str, str] | None]] = []

    async def on_message(self, message: AgentMessage) -> None:
        self.got.append((message, scope_carrier()))

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {}


async def sending_agent(task: Task, context: AgentContext) -> dict[str, Any]:
    """Sends a note to ``input_data["to"]``; returns the carrier current in its task."""
    await context.send(task.input_data["to"], "note")
    return {"carrier": scope_carrier()}


async def test_the_kernel_carries_a_plugins_carrier(make_config: MakeConfig) -> None:
    """Without OpenTelemetry: a ``miminions_trace_context`` answer is stored on the task,
    current while its agent runs, and carried by what the agent sends, to the receiver's
    ``on_message``."""
    rt = AgentRuntime(config=make_config(), plugins=[CarrierPlugin()], disable=["otel"])
    async with rt:
        inbox = Inbox()
        inbox_id = await start_agent(rt, "inbox", inbox)
        sender_id = await start_agent(rt, "sender", sending_agent)
        task = await run_task(rt, "send", {"to": inbox_id}, agent_id=sender_id)
        expected = {"trace": "t-1", "operation": "submit"}
        assert task.trace_context == expected
        assert task.output_data == {"carrier": expected}
        ((message, handled_in),) = await wait_until(lambda: inbox.got, "the note handled")
        assert message.trace_context == expected
        assert handled_in == expected
        await rt.send_message(inbox_id, "from the application")
        got = await wait_until(
            lambda: inbox.got if len(inbox.got) == 2 else None, "the second note"
        )
        assert got[1][0].trace_context == {"trace": "t-1", "operation": "send"}


async def test_a_worker_setup_that_fails_fails_the_start(make_config: MakeConfig) -> None:
    """``miminions_worker_setup`` names functions a worker calls before it builds the
    agent; one that raises fails the agent's start, naming it."""
    pytest.importorskip("opentelemetry.sdk")  # the worker imports tracing_agents

    class BrokenSetup:
        miminions_plugin_name = "broken_setup"

        @hookimpl
        def miminions_worker_setup(self) -> str:
            return "tests.support.tracing_agents:broken_setup"

    async with AgentRuntime(config=make_config(), plugins=[BrokenSetup()]) as rt:
        agent_id = await rt.register_agent("echo", EchoAgent, isolation="process")
        instance = await rt.start_agent(agent_id)
    assert instance.status.value == "failed"
    assert "tracing_agents:broken_setup" in (instance.error_message or "")
    assert "this setup always fails" in (instance.error_message or "")


async def test_a_database_not_migrated_yet_reads_without_carriers(db_path: Path) -> None:
    """A read-only reader of a database at schema 1 (before tasks had a trace context)
    reads its tasks with ``trace_context`` None; a writer migrates it."""
    task = Task(task_id="t1", name="old", created_at=datetime.now(UTC))
    conn = sqlite3.connect(db_path)
    conn.executescript(";".join(sqlite_schema.MIGRATIONS[0].statements))
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
    old_columns = sqlite_schema.TASK_COLUMNS[:-1]  # without trace_context
    marks = ", ".join("?" * len(old_columns))
    conn.execute(
        f"INSERT INTO tasks ({', '.join(old_columns)}) VALUES ({marks})",
        sqlite_schema.task_row(task)[:-1],
    )
    conn.commit()
    conn.close()

    reader = await SQLiteStore.open_readonly(str(db_path))
    try:
        (read,) = await reader.load_tasks()
    finally:
        await reader.close()
    assert (read.task_id, read.trace_context) == ("t1", None)
    async with SQLiteStore(str(db_path)) as writer:
        (read,) = await writer.load_tasks()
        assert read.trace_context is None
        read.trace_context = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        await writer.put_task(read)
        assert (await writer.load_tasks())[0].trace_context == read.trace_context


async def test_without_a_tracer_provider_task_spans_are_not_drawn_until_one_is_given(
    make_config: MakeConfig, recorded: Recorded
) -> None:
    """With no tracer provider (none given, none set globally) OpenTelemetry would record
    nothing, so the runtime draws no task spans: the agent runs outside any span, and
    nothing waits to be ended. Given a provider, the next task has its spans."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global tracer provider is set in this test process")
    rt = AgentRuntime(config=make_config())
    await rt.start()
    try:
        tracing = otel._runtimes.get(rt)
        assert tracing is not None
        assert not tracing.recording()
        agent_id = await start_agent(
            rt, "reporter", tracing_agents.ContextReportingAgent, isolation="inline"
        )
        quiet = await rt.wait_for_task(await rt.submit_task("report", agent_id=agent_id))
        assert quiet.status is TaskStatus.COMPLETED
        assert quiet.trace_context is None
        assert quiet.output_data is not None
        assert quiet.output_data["current"]["valid"] is False
        assert not tracing._settling  # nothing left to end
        assert recorded.names() == set()

        otel.use_tracer_provider(rt, recorded.provider)
        assert tracing.recording()
        traced = await rt.wait_for_task(await rt.submit_task("report", agent_id=agent_id))
        run = await recorded.one("process tasks")
        assert traced.output_data is not None
        assert traced.output_data["current"] == ids(run)
    finally:
        await rt.stop()


async def test_a_start_that_never_ended_is_an_error_span(
    make_config: MakeConfig, recorded: Recorded, tmp_path: Path
) -> None:
    """An ``agent start`` span whose start was abandoned by a stop, cut short by the
    runtime's stop or cancelled by its caller ends as an ERROR (it was ended with no status,
    drawn as a start that went through)."""
    from tests.support.lifecycle_agents import HangingHooksAgent, hook_log

    rt = AgentRuntime(config=make_config(agent_start_timeout_seconds=120.0))
    otel.use_tracer_provider(rt, recorded.provider)
    await rt.start()
    hanging = []
    for n in range(3):
        log = tmp_path / f"hooks{n}.jsonl"
        agent_id = await rt.register_agent(
            f"hanging{n}", HangingHooksAgent, config={"log": str(log), "hang": ["start"]}
        )
        starting = asyncio.ensure_future(rt.start_agent(agent_id))

        def started(log: Path = log) -> bool:
            return hook_log(log) == [["start"]]

        await wait_until(started, "on_start")
        hanging.append((agent_id, starting))
    await rt.stop_agent(hanging[0][0], timeout_seconds=0.05)
    hanging[1][1].cancel()
    await asyncio.wait({starting for _, starting in hanging[:2]}, timeout=WAIT_SECONDS)
    await rt.stop(timeout_seconds=0.05)
    await asyncio.wait({hanging[2][1]}, timeout=WAIT_SECONDS)
    starts = await recorded.some("agent start", 3)
    assert [span.status.status_code for span in starts] == [StatusCode.ERROR] * 3


async def test_a_refused_submit_draws_no_submit_span(
    traced: AgentRuntime, recorded: Recorded
) -> None:
    """A submit refused (bad value, cycle) draws no ``submit tasks`` span: it drew one, as
    if tasks had been sent; an accepted batch draws one, counting its new tasks."""
    with pytest.raises(ValidationError):
        await traced.submit_task("bad", priority=500)
    with pytest.raises(DependencyCycleError):
        await traced.submit_tasks(
            [
                TaskRequest(name="a", task_id="a", dependencies=["b"]),
                TaskRequest(name="b", task_id="b", dependencies=["a"]),
            ]
        )
    assert recorded.named("submit tasks") == []
    await traced.submit_tasks([TaskRequest(name=f"t{n}") for n in range(3)])
    span = await recorded.one("submit tasks")
    assert_attributes(span, {"messaging.batch.message_count": 3})


async def test_the_wait_and_run_of_a_task_carrying_no_trace_are_one_trace(
    make_config: MakeConfig, recorded: Recorded
) -> None:
    """A task stored without a trace context (submitted with tracing off) runs with tracing
    on: its wait and its run are one trace (each was a root of its own)."""
    async with AgentRuntime(config=make_config(), disable=["otel"]) as first:
        await first.pause_queue()
        task_id = await first.submit_task("old")
    second = AgentRuntime(config=make_config())
    otel.use_tracer_provider(second, recorded.provider)
    async with second:
        assert second.get_task_status(task_id).trace_context is None
        await start_agent(second, "echo", EchoAgent)
        await second.resume_queue()
        assert (await second.wait_for_task(task_id, WAIT_SECONDS)).status is TaskStatus.COMPLETED
        wait, run = await recorded.one("wait tasks"), await recorded.one("process tasks")
    assert wait.parent is None
    assert_child(run, wait)
