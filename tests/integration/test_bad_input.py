"""R-04, bad input: a typed miminions error that names the parameter, nothing changed, and
a database the next runtime opens -- for what slipped through: a request's attributes set
after it was built, counts beyond a float's range, a process agent's context arguments,
``call_sync`` given something that is not a call."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

from miminions import (
    AgentContext,
    AgentRuntime,
    AgentStatus,
    MiminionsError,
    ResourceLimits,
    RuntimeConfig,
    Task,
    TaskRequest,
    TaskStatus,
    UsageBudget,
    ValidationError,
)
from tests.support import agents


def _stored_tasks(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("select count(*) from tasks").fetchone()[0])


@pytest.mark.parametrize(
    "bad",
    [None, 5, "ab"],
    ids=["None", "int", "str (iterable!)"],
)
async def test_a_task_request_whose_dependencies_were_set_to_a_non_list_gets_a_validation_error(
    make_config: Callable[..., RuntimeConfig], bad: Any
) -> None:
    """Model attributes are set without validation, and submit_tasks re-checks every field
    of a TaskRequest it is given -- ``dependencies`` too: ``None`` or an int raised a bare
    TypeError, and a string was split into one-character task ids."""
    config = make_config()
    async with AgentRuntime(config=config) as rt:
        await rt.submit_tasks(
            [TaskRequest(name="a", task_id="a"), TaskRequest(name="b", task_id="b")]
        )
        request = TaskRequest(name="dependent")
        request.dependencies = bad  # attributes are set without validation
        with pytest.raises(ValidationError, match="dependencies"):
            await rt.submit_tasks([request])
        await rt.store.flush()
        assert _stored_tasks(Path(config.storage_path)) == 2
        assert len(rt.list_tasks(limit=None)) == 2
    async with AgentRuntime(config=config) as rt:
        assert len(rt.list_tasks(limit=None)) == 2


async def report_tokens(task: Task, context: AgentContext) -> dict[str, str]:
    """Reports the tokens its input names; says whether report_usage refused them."""
    try:
        await context.report_usage(tokens=int(task.input_data["tokens"]))
    except MiminionsError as exc:
        return {"refused": type(exc).__name__}
    return {"refused": ""}


async def test_a_token_count_beyond_float_range_is_refused(
    rt: AgentRuntime,
) -> None:
    """F-27: a token count past a float's range (10**400) was counted and tripped the
    breaker, whose pause then failed formatting its message (OverflowError): the agent
    ran on over its budget for good. Counts are at most 2**63 - 1: it is refused."""
    agent_id = await rt.register_agent(
        "spender",
        report_tokens,
        isolation="inline",
        limits=ResourceLimits(usage_budget=UsageBudget(tokens=100)),
    )
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(
        await rt.submit_task("spend", {"tokens": str(10**400)}), timeout_seconds=30
    )
    assert task.status.value == "completed", task.error_message
    assert task.output_data == {"refused": "ValidationError"}
    assert rt.get_agent_status(agent_id).status is AgentStatus.RUNNING


async def misuse_context(task: Task, context: AgentContext) -> dict[str, str]:
    """Makes context calls with one bad argument each; returns each call's outcome as
    ``"<ErrorClass>: <message>"`` (or ``"ok"``)."""
    me = context.agent_id

    async def watch_next_nan() -> object:
        watch = await context.kv.open_watch("")
        try:
            return await watch.next(float("nan"))
        finally:
            await watch.close()

    calls = {
        "receive(timeout_seconds=nan)": lambda: context.receive(float("nan")),
        "request(timeout_seconds=inf)": lambda: context.request(
            me, "ask", timeout_seconds=float("inf")
        ),
        "send(ttl_seconds=inf)": lambda: context.send(me, "note", ttl_seconds=float("inf")),
        "kv.set(key with a lone surrogate)": lambda: context.kv.set("k\udcff", 1),
        "kv watch next(timeout_seconds=nan)": watch_next_nan,
    }
    found: dict[str, str] = {}
    for label, call in calls.items():
        try:
            await call()
            found[label] = "ok"
        except MiminionsError as exc:
            found[label] = f"{type(exc).__name__}: {exc}"
    return found


#: What each bad call's error must name (the argument that was wrong).
NAMED = {
    "receive(timeout_seconds=nan)": "timeout_seconds",
    "request(timeout_seconds=inf)": "timeout_seconds",
    "send(ttl_seconds=inf)": "ttl_seconds",
    "kv.set(key with a lone surrogate)": "key",
    "kv watch next(timeout_seconds=nan)": "timeout_seconds",
}


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_a_process_agents_bad_context_argument_gets_an_error_naming_it(
    rt: AgentRuntime, isolation: str
) -> None:
    """An agent's context call with a bad argument gets a ValidationError naming that
    argument, in both modes (a process agent's said "message data must be
    JSON-serialisable" or "cannot be encoded", although its data was fine)."""
    agent_id = await rt.register_agent("misuser", misuse_context, isolation=isolation)
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(await rt.submit_task("misuse"), timeout_seconds=60)
    assert task.status.value == "completed", task.error_message
    found = task.output_data
    wrong = {
        label: outcome
        for label, outcome in found.items()
        if not outcome.startswith("ValidationError") or NAMED[label] not in outcome
    }
    assert not wrong, wrong


async def test_a_count_limit_beyond_float_range_is_refused(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """docs/operations.md: metrics are finite numbers. A count limit had no upper bound:
    ``max_concurrent_agents=10**400`` was taken, and every export of the metrics raised
    OverflowError. Counts are at most 2**63 - 1; the largest is exported."""
    with pytest.raises(pydantic.ValidationError, match="max_concurrent_agents"):
        ResourceLimits(max_concurrent_agents=10**400)
    pytest.importorskip("prometheus_client")  # (the export needs the prometheus extra)
    limits = ResourceLimits(max_concurrent_agents=2**63 - 1)
    async with AgentRuntime(config=make_config(limits=limits)) as rt:
        body = rt.export_prometheus_metrics()
        assert b"miminions_" in body


def call_sync_misuse(task: Task, context: AgentContext) -> dict[str, str]:
    """Synchronous agent code passing ``call_sync`` something that is not a context call
    (the method itself, uncalled, as is easy to do); reports the error it got."""
    found: dict[str, str] = {}
    for label, call in (("a method, not called", context.kv.get), ("None", None)):
        try:
            context.call_sync(call)  # type: ignore[arg-type]
            found[label] = "ok"
        except Exception as exc:
            found[label] = f"{type(exc).__name__}: {exc}"
    return found


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_call_sync_of_something_not_awaitable_gets_a_validation_error(
    rt: AgentRuntime, isolation: str
) -> None:
    """``context.call_sync(context.kv.get)`` (the call not made) came back as a bare
    TypeError from the agent's loop; it is a ValidationError saying what to pass."""
    agent_id = await rt.register_agent("sync-misuser", call_sync_misuse, isolation=isolation)
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(await rt.submit_task("misuse"), timeout_seconds=60)
    assert task.status.value == "completed", task.error_message
    wrong = {k: v for k, v in task.output_data.items() if not v.startswith("ValidationError")}
    assert not wrong, wrong


async def send_to_a_set(task: Task, context: AgentContext) -> dict[str, int]:
    """Sends one message to itself, naming the recipients as a set."""
    return {"sent": len(await context.send({context.agent_id}, "note"))}


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_recipients_given_as_a_set_reach_them_in_both_modes(
    rt: AgentRuntime, isolation: str
) -> None:
    """A set of recipients works for an inline agent; a process agent's failed with
    "message data must be JSON-serialisable"."""
    agent_id = await rt.register_agent("setter", send_to_a_set, isolation=isolation)
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(await rt.submit_task("send"), timeout_seconds=60)
    assert task.output_data == {"sent": 1}, task.error_message


async def send_to_dict_keys(task: Task, context: AgentContext) -> dict[str, Any]:
    """Sends one message to itself, naming the recipients as ``dict.keys()``, then as a
    ``map`` object: iterables of agent ids, as ``send``'s signature (Iterable[str]) allows."""
    peers = {context.agent_id: "me"}
    out: dict[str, Any] = {}
    for label, recipients in (
        ("keys", peers.keys()),
        ("map", map(str, [context.agent_id])),
    ):
        try:
            out[label] = len(await context.send(recipients, "note"))
        except Exception as exc:  # what the agent got, for the assertion
            out[label] = f"{type(exc).__name__}: {exc}"
    return out


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_recipients_given_as_dict_keys_or_map_reach_them_in_both_modes(
    rt: AgentRuntime, isolation: str
) -> None:
    """Recipients may be any iterable (``dict.keys()``, ``map(...)``) in both modes (a
    process agent got "message data must be JSON-serialisable")."""
    agent_id = await rt.register_agent("keys", send_to_dict_keys, isolation=isolation)
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(await rt.submit_task("send"), timeout_seconds=60)
    assert task.output_data == {"keys": 1, "map": 1}, (task.output_data, task.error_message)


async def test_recipients_given_as_bytes_get_an_error_naming_them(
    rt: AgentRuntime, isolation: str
) -> None:
    """An agent id given as bytes (read from a socket) was iterated as one recipient per
    byte: "no agent with id 53". It is refused, saying why."""
    sender = await rt.register_agent("s", agents.Sender, isolation=isolation)
    receiver = await rt.register_agent("r", agents.EchoAgent, isolation="inline")
    await rt.start_agent(sender)
    task = await rt.wait_for_task(
        await rt.submit_task("t", {"to": receiver, "mode": "bytes"}, agent_id=sender), 30
    )
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data is not None
    error = task.output_data["error"]
    assert error.startswith("ValidationError"), error
    assert "bytes" in error, error


async def test_runtime_send_message_with_bytes_recipient(rt: AgentRuntime) -> None:
    """The same from the application."""
    receiver = await rt.register_agent("r", agents.EchoAgent, isolation="inline")
    with pytest.raises(ValidationError, match="got bytes"):
        await rt.send_message(receiver.encode(), "note", {"x": 1})  # type: ignore[arg-type]
