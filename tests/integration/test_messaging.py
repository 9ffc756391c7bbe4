"""Messaging between agents (F-06), the same assertions for both isolation modes.

Agents come from :mod:`tests.support.messaging_agents`: a ``ScriptAgent`` runs messaging
calls listed in its task's input and returns what they gave back; a ``ResponderAgent``
handles messages in ``on_message`` and journals them. Only what a user can observe is
asserted: task results, the journal file, the event log, dead letters and metrics.

"Nothing else arrived" is shown without waiting for a timeout: the test sends a sentinel
message last and the agent receives until the sentinel; every message that was delivered
before it is in the result. Waits on another process are bounded (:func:`wait_until`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentMessage,
    AgentRuntime,
    AgentStatus,
    EventType,
    MessageTooLargeError,
    NotFoundError,
    QueueFullError,
    ResourceLimits,
    RestartPolicy,
    RuntimeConfig,
    Severity,
    Task,
    TaskStatus,
    ValidationError,
    WaitTimeoutError,
    hookimpl,
)
from miminions.kernel import messaging
from miminions.kernel.messaging import MAX_PAYLOAD_BYTES
from miminions.kernel.wire import retrieve
from miminions.plugins.memory_bus import MemoryBus
from miminions.plugins.process_host import ProcessHost
from miminions.testing import started_runtime
from tests.support.journal_agents import (
    GatedHandlerAgent,
    ReplyingJournalAgent,
    RequestThenSendAgent,
    read_journal,
)
from tests.support.messaging_agents import (
    IGNORED,
    SENTINEL,
    AskWhileStoppingAgent,
    CancellingHandlerAgent,
    CrashingHandlerAgent,
    PoisonReceiverAgent,
    PongAgent,
    ResponderAgent,
    ScriptAgent,
    SilentAgent,
    SlowHandlerAgent,
    SyncHandlerAgent,
    TopicScriptAgent,
)
from tests.support.process_agents import GiveUpAtOnceAgent
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # bound for every wait on another process's progress


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal.jsonl"


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A file gate: closed until the test creates the file (opened at teardown too)."""
    return tmp_path / "gate"


def open_gate(gate: Path) -> None:
    """Open a file gate: a task waiting at it goes on."""
    gate.touch()


def open_runtime(
    make_config: Callable[..., RuntimeConfig], isolation: str, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[AgentRuntime]:
    """A runtime in ``isolation`` for the block (the plugin's checks run after it stops)."""
    return started_runtime(make_config(default_isolation=isolation, **overrides))


@pytest.fixture
async def rt(
    make_config: Callable[..., RuntimeConfig], isolation: str, gate: Path
) -> AsyncIterator[AgentRuntime]:
    """A started runtime whose agents default to the mode under test."""
    async with open_runtime(make_config, isolation) as runtime:
        try:
            yield runtime
        finally:
            open_gate(gate)  # nothing keeps the shutdown waiting


def records(journal: Path, hook: str, **fields: Any) -> list[dict[str, Any]]:
    """Journal records of ``hook`` whose fields equal ``fields``, in order."""
    return [
        record
        for record in read_journal(journal)
        if record["hook"] == hook and all(record.get(k) == v for k, v in fields.items())
    ]


def handled(journal: Path, message_type: str | None = None) -> list[dict[str, Any]]:
    """The messages a ResponderAgent journalled in ``on_message`` (of ``message_type``)."""
    return [
        record["message"]
        for record in records(journal, "on_message")
        if message_type is None or record["message"]["message_type"] == message_type
    ]


async def start(
    rt: AgentRuntime,
    name: str,
    agent: object = ScriptAgent,
    journal: Path | None = None,
    topics: list[str] | None = None,
) -> str:
    """Register ``agent`` in the runtime's default isolation, start it, return its id."""
    config = {"journal": str(journal)} if journal is not None else {}
    agent_id = await rt.register_agent(name, agent, config=config, topics=topics)
    status = await rt.start_agent(agent_id)
    assert status.status is AgentStatus.RUNNING, status.error_message
    return agent_id


async def submit(rt: AgentRuntime, agent_id: str, *ops: dict[str, Any]) -> str:
    """Give the ScriptAgent ``agent_id`` a task running ``ops``."""
    return await rt.submit_task("script", {"ops": list(ops)}, agent_id=agent_id)


async def finished(rt: AgentRuntime, task_id: str) -> Task:
    return await rt.wait_for_task(task_id, timeout_seconds=WAIT)


async def results(rt: AgentRuntime, task_id: str) -> list[Any]:
    """The per-op results of a ScriptAgent task, which must complete."""
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data is not None
    result: list[Any] = task.output_data["results"]
    return result


async def run(rt: AgentRuntime, agent_id: str, *ops: dict[str, Any]) -> list[Any]:
    """Run ``ops`` in the ScriptAgent ``agent_id`` and return their results."""
    return await results(rt, await submit(rt, agent_id, *ops))


async def failed(rt: AgentRuntime, agent_id: str, *ops: dict[str, Any]) -> str:
    """Run ``ops``, which must fail the task; return its error message."""
    task = await finished(rt, await submit(rt, agent_id, *ops))
    assert task.status is TaskStatus.FAILED, task.output_data
    assert task.error_message is not None
    return task.error_message


async def received_until_sentinel(rt: AgentRuntime, agent_id: str) -> list[dict[str, Any]]:
    """Send the agent a sentinel and return everything it received up to and with it."""
    await rt.send_message(agent_id, SENTINEL)
    received: list[dict[str, Any]]
    [received] = await run(rt, agent_id, {"op": "receive_until", "timeout": WAIT})
    assert received[-1]["message_type"] == SENTINEL
    assert received[-1]["sender_id"] is None
    return received


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [message["message_type"] for message in messages]


async def sent_events(rt: AgentRuntime, message_ids: list[str]) -> dict[str, str]:
    """recipient of each MESSAGE_SENT event of ``message_ids``, by message id."""
    events = await rt.query_events(event_type=EventType.MESSAGE_SENT, limit=None)
    wanted = set(message_ids)
    return {
        e.details["message_id"]: e.details["recipient_id"]
        for e in events
        if e.details["message_id"] in wanted
    }


# ---------------------------------------------------------------------- 1. direct
async def test_runtime_sends_to_an_agent(rt: AgentRuntime, journal: Path) -> None:
    """rt.send_message reaches an agent's ``context.receive`` whether the message waited in
    the mailbox or the receive waited for the message; every field arrives intact; a
    receive with nothing to get fails the task with WaitTimeoutError."""
    agent_id = await start(rt, "receiver", ScriptAgent, journal)
    data: dict[str, Any] = {"text": "héllo ✓", "items": [1, None, True, 2.5, {"deep": []}]}
    [waiting] = await rt.send_message(agent_id, "greeting", data)
    [[first]] = await run(rt, agent_id, {"op": "receive"})
    assert first["message_id"] == waiting
    assert first["sender_id"] is None  # from the runtime
    assert first["recipient_id"] == agent_id
    assert first["message_type"] == "greeting"
    assert first["data"] == data
    assert (first["topic"], first["correlation_id"], first["is_reply"]) == (None, None, False)
    assert first["expires_at"] is None

    # the receive is (as good as always) waiting first this time: the message is handed
    # to it when it comes
    task_id = await submit(rt, agent_id, {"op": "receive", "timeout": WAIT})
    await wait_until(lambda: records(journal, "op", task_id=task_id), what="receive called")
    [later] = await rt.send_message(agent_id, "later", [1, 2, 3])
    [[second]] = await results(rt, task_id)
    assert (second["message_id"], second["data"]) == (later, [1, 2, 3])

    error = await failed(rt, agent_id, {"op": "receive", "timeout": 0.1})
    assert error.startswith("WaitTimeoutError: no message for agent"), error


async def test_agent_to_agent_keeps_each_senders_order(rt: AgentRuntime) -> None:
    """50 messages from an agent and 50 from the runtime, sent at the same time, reach the
    receiver each in the order they were sent."""
    sender = await start(rt, "sender")
    receiver = await start(rt, "receiver")
    receiving = await submit(rt, receiver, {"op": "receive", "count": 100, "timeout": WAIT})
    sending = await submit(rt, sender, {"op": "send", "to": receiver, "type": "a", "count": 50})
    runtime_ids = [(await rt.send_message(receiver, "r", {"seq": seq}))[0] for seq in range(50)]
    [agent_ids] = await results(rt, sending)
    [received] = await results(rt, receiving)

    from_agent = [m for m in received if m["sender_id"] == sender]
    from_runtime = [m for m in received if m["sender_id"] is None]
    assert len(from_agent) == len(from_runtime) == 50
    assert [m["message_id"] for m in from_agent] == agent_ids
    assert [m["data"]["seq"] for m in from_agent] == list(range(50))
    assert {m["message_type"] for m in from_agent} == {"a"}
    assert [m["message_id"] for m in from_runtime] == runtime_ids
    assert [m["data"]["seq"] for m in from_runtime] == list(range(50))
    assert {m["recipient_id"] for m in received} == {receiver}


# ---------------------------------------------------------------------- 2. multicast etc.
async def test_multicast_to_several_ids(rt: AgentRuntime) -> None:
    """A send to a list of ids gives each recipient its own copy (one id each)."""
    sender = await start(rt, "sender")
    b, c, d = [await start(rt, name) for name in ("b", "c", "d")]
    ids = await rt.send_message([b, c, d], "multi", {"k": 1})
    assert len(set(ids)) == 3
    [agent_ids] = await run(rt, sender, {"op": "send", "to": [b, c], "type": "multi-a"})
    assert len(set(agent_ids)) == 2
    assert await sent_events(rt, ids + agent_ids) == {
        ids[0]: b,
        ids[1]: c,
        ids[2]: d,
        agent_ids[0]: b,
        agent_ids[1]: c,
    }
    for recipient, expected in ((b, ["multi", "multi-a"]), (c, ["multi", "multi-a"])):
        got = await received_until_sentinel(rt, recipient)
        assert types(got) == [*expected, SENTINEL]
        assert got[0]["data"] == {"k": 1}
        assert got[1]["sender_id"] == sender
        assert {m["recipient_id"] for m in got} == {recipient}
    assert types(await received_until_sentinel(rt, d)) == ["multi", SENTINEL]
    assert types(await received_until_sentinel(rt, sender)) == [SENTINEL]


async def test_broadcast_reaches_running_and_paused_agents_but_not_the_sender(
    rt: AgentRuntime,
) -> None:
    """A broadcast goes to every running or paused agent except its sender; agents that
    are registered but not started, or stopped, get nothing."""
    sender = await start(rt, "sender")
    running = await start(rt, "running")
    paused = await start(rt, "paused")
    stopped = await start(rt, "stopped")
    never_started = await rt.register_agent("never-started", ScriptAgent)
    assert (await rt.pause_agent(paused, timeout_seconds=WAIT)).status is AgentStatus.PAUSED
    assert (await rt.stop_agent(stopped)).status is AgentStatus.STOPPED

    [agent_ids] = await run(rt, sender, {"op": "broadcast", "type": "from-agent", "data": 1})
    assert sorted((await sent_events(rt, agent_ids)).values()) == sorted([running, paused])
    runtime_ids = await rt.broadcast("from-runtime", {"n": 2})
    assert sorted((await sent_events(rt, runtime_ids)).values()) == sorted(
        [sender, running, paused]
    )

    assert types(await received_until_sentinel(rt, sender)) == ["from-runtime", SENTINEL]
    got = await received_until_sentinel(rt, running)
    assert types(got) == ["from-agent", "from-runtime", SENTINEL]
    assert (got[0]["sender_id"], got[0]["data"]) == (sender, 1)
    assert (await rt.resume_agent(paused)).status is AgentStatus.RUNNING
    got = await received_until_sentinel(rt, paused)
    assert types(got) == ["from-agent", "from-runtime", SENTINEL]
    for agent_id in (stopped, never_started):
        assert (await rt.start_agent(agent_id)).status is AgentStatus.RUNNING
        assert types(await received_until_sentinel(rt, agent_id)) == [SENTINEL]


async def test_publish_subscribe_and_unsubscribe(rt: AgentRuntime) -> None:
    """Subscriptions come from ``topics=`` at registration, a ``topics`` class attribute
    and ``context.subscribe``; a publisher does not get its own message; after
    ``context.unsubscribe`` the topic is no longer delivered."""
    publisher = await start(rt, "publisher", topics=["alpha"])
    declared = await start(rt, "declared", topics=["alpha", "beta"])
    by_class = await start(rt, "by-class", TopicScriptAgent)
    dynamic = await start(rt, "dynamic")
    outsider = await start(rt, "outsider")
    assert await run(rt, dynamic, {"op": "subscribe", "topic": "alpha"}) == [None]

    first = await rt.publish("alpha", "news", {"n": 1})
    assert sorted((await sent_events(rt, first)).values()) == sorted(
        [publisher, declared, by_class, dynamic]
    )
    [second] = await run(
        rt, publisher, {"op": "publish", "topic": "alpha", "type": "news", "data": {"n": 2}}
    )
    assert sorted((await sent_events(rt, second)).values()) == sorted([declared, by_class, dynamic])
    assert len(await rt.publish("beta", "other", {"n": 0})) == 1
    assert await run(rt, dynamic, {"op": "unsubscribe", "topic": "alpha"}) == [None]
    third = await rt.publish("alpha", "news", {"n": 3})
    assert sorted((await sent_events(rt, third)).values()) == sorted(
        [publisher, declared, by_class]
    )
    assert await rt.publish("nobody-listens", "news", {"n": 4}) == []

    def news(agent_id: str, got: list[dict[str, Any]]) -> list[int]:
        assert got[-1]["message_type"] == SENTINEL
        for message in got[:-1]:
            assert message["recipient_id"] == agent_id
            assert message["topic"] in ("alpha", "beta")
        return [m["data"]["n"] for m in got[:-1]]

    assert news(publisher, await received_until_sentinel(rt, publisher)) == [1, 3]
    assert news(declared, await received_until_sentinel(rt, declared)) == [1, 2, 0, 3]
    assert news(by_class, await received_until_sentinel(rt, by_class)) == [1, 2, 3]
    assert news(dynamic, await received_until_sentinel(rt, dynamic)) == [1, 2]
    assert news(outsider, await received_until_sentinel(rt, outsider)) == []


# ---------------------------------------------------------------------- 3. request / reply
async def test_request_and_reply(rt: AgentRuntime, journal: Path) -> None:
    """An agent's ``context.request`` returns the reply the other agent gave in its
    ``on_message`` with ``context.reply``, matched by correlation id; ``rt.request`` does
    the same from the runtime."""
    responder = await start(rt, "responder", ResponderAgent, journal)
    asker = await start(rt, "asker")
    [reply] = await run(
        rt, asker, {"op": "request", "to": responder, "type": "ask", "data": {"q": 1}}
    )
    [request] = handled(journal, "ask")
    assert request["sender_id"] == asker
    assert request["recipient_id"] == responder
    assert request["data"] == {"q": 1}
    assert request["correlation_id"] == request["message_id"]
    assert request["is_reply"] is False
    assert reply["correlation_id"] == request["message_id"]
    assert reply["is_reply"] is True
    assert reply["sender_id"] == responder
    assert reply["recipient_id"] == asker
    assert reply["message_type"] == "ask.reply"
    assert reply["data"] == {"echo": {"q": 1}, "by": "responder"}
    # journalled once the responder's reply call returned: that may be just after the
    # requester got the reply
    [replied] = await wait_until(
        lambda: records(journal, "replied", request_id=request["message_id"]),
        what="the responder journalled its reply",
    )
    assert replied["reply_id"] == reply["message_id"]

    answer = await rt.request(responder, "ask", {"q": 2}, timeout_seconds=WAIT)
    asked = handled(journal, "ask")[-1]
    assert asked["sender_id"] is None
    assert answer.correlation_id == asked["message_id"]
    assert answer.is_reply
    assert answer.sender_id == responder
    assert answer.recipient_id is None  # the runtime, as for the messages it sends
    assert answer.message_type == "ask.reply"
    assert answer.data == {"echo": {"q": 2}, "by": "responder"}
    # the reply went straight to the requester, not into a mailbox
    assert types(await received_until_sentinel(rt, asker)) == [SENTINEL]


async def test_request_without_reply_times_out(rt: AgentRuntime, journal: Path) -> None:
    """A request nobody answers raises WaitTimeoutError: in the agent (its task fails
    with it) and from the runtime."""
    responder = await start(rt, "responder", ResponderAgent, journal)
    asker = await start(rt, "asker")
    error = await failed(
        rt, asker, {"op": "request", "to": responder, "type": IGNORED, "timeout": 0.2}
    )
    assert error.startswith("WaitTimeoutError: no reply to 'ignore'"), error
    with pytest.raises(WaitTimeoutError, match="no reply to 'ignore'"):
        await rt.request(responder, IGNORED, {"q": 3}, timeout_seconds=0.2)
    requests = await wait_until(
        lambda: handled(journal, IGNORED)[1:] and handled(journal, IGNORED),
        what="both requests are handled",
    )
    assert [r["sender_id"] for r in requests] == [asker, None]  # both arrived
    assert not records(journal, "replied")


# ---------------------------------------------------------------------- 4. beside a task
async def test_on_message_runs_while_a_task_is_in_progress(
    rt: AgentRuntime, journal: Path, gate: Path
) -> None:
    """Messages are handled by ``on_message`` while a task of the same agent waits at its
    gate; even a request is answered meanwhile."""
    responder = await start(rt, "responder", ResponderAgent, journal)
    task_id = await rt.submit_task(
        "gated", {"action": "gate", "gate": str(gate)}, agent_id=responder
    )
    await wait_until(lambda: records(journal, "gate_entered"), what="the task is at its gate")
    [ping] = await rt.send_message(responder, "ping", {"i": 1})
    await wait_until(lambda: handled(journal, "ping"), what="the ping is handled")
    answer = await rt.request(responder, "ask", {"q": 1}, timeout_seconds=WAIT)
    assert answer.data == {"echo": {"q": 1}, "by": "responder"}
    await wait_until(lambda: records(journal, "replied"), what="the reply is journalled")
    assert rt.get_task_status(task_id).status is TaskStatus.RUNNING
    assert not records(journal, "gate_passed")

    open_gate(gate)
    task = await finished(rt, task_id)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data is not None
    assert task.output_data["handled_while_waiting"] == [ping, answer.correlation_id]
    hooks = [r["hook"] for r in read_journal(journal)]
    assert hooks == [
        "on_start",
        "gate_entered",
        "on_message",  # the ping
        "on_message",  # the request
        "replied",
        "gate_passed",
    ]


# A process agent's on_message inbox across a pause. The runtime hands the worker's waiting
# receive a message while the pause goes on; these force the two crossings that used to
# leave it in the stopped worker (lost if the runtime then died) instead of the mailbox.
def process_host(rt: AgentRuntime, agent_id: str) -> ProcessHost:
    """The agent's ProcessHost, under any host a plugin wrapped it in (the otel extra)."""
    host: Any = rt.agent_book.slots[agent_id].host
    while not isinstance(host, ProcessHost):
        host = host._host
    return host


async def _paused_with_message_waiting(rt: AgentRuntime, agent_id: str, message_id: str) -> None:
    """The agent is paused and ``message_id`` waits in its (stored) mailbox."""
    assert rt.get_agent_status(agent_id).status is AgentStatus.PAUSED
    assert rt.messenger.bus.pending(agent_id) == 1
    await rt.store.flush()
    assert list(await rt.store.load_meta_prefix("mailbox:")) == [f"mailbox:{message_id}"]


async def _handled_once_after_resume(
    rt: AgentRuntime, agent_id: str, journal: Path, message_type: str
) -> None:
    await rt.resume_agent(agent_id)
    await rt.send_message(agent_id, "after")
    await wait_until(lambda: handled(journal, "after"), "the message sent after the resume")
    assert len(handled(journal, message_type)) == 1


async def test_a_message_handed_to_a_pausing_worker_goes_back_to_the_mailbox(
    make_config: Callable[..., RuntimeConfig], journal: Path
) -> None:
    """R-02, F-25: a message the runtime handed to a process agent's inbox but whose reply
    reached the worker only after its pause goes back to the mailbox when the pause
    completes, and is handled once after the resume."""
    async with open_runtime(make_config, "process") as rt:
        agent_id = await start(rt, "responder", ResponderAgent, journal)
        host = process_host(rt, agent_id)
        release, held = asyncio.Event(), asyncio.Event()
        messaging = host._messaging

        async def reply_late(call: str, payload: dict[str, Any], live: Any) -> Any:
            result = await messaging(call, payload, live)
            held_back = isinstance(result, dict) and result.get("message_type") == "held"
            if call == "receive" and payload.get("inbox") and held_back:
                held.set()
                await release.wait()  # the reply reaches the worker after its pause
            return result

        host._messaging = reply_late  # type: ignore[method-assign]
        # The inbox's receive in flight may have begun before the patch: one message first,
        # so that the receive of the held one goes through reply_late.
        await rt.send_message(agent_id, "first")
        await wait_until(lambda: handled(journal, "first"), "the first message")
        [message_id] = await rt.send_message(agent_id, "held")
        await asyncio.wait_for(held.wait(), WAIT)
        await rt.pause_agent(agent_id, timeout_seconds=WAIT)
        await _paused_with_message_waiting(rt, agent_id, message_id)
        release.set()
        await _handled_once_after_resume(rt, agent_id, journal, "held")


async def test_a_message_arriving_as_a_pause_completes_waits_in_the_mailbox(
    make_config: Callable[..., RuntimeConfig], journal: Path
) -> None:
    """R-02, F-25: a message sent between the worker's pause reply and the agent becoming
    paused waits in the mailbox, not in the stopped worker."""
    async with open_runtime(make_config, "process") as rt:
        agent_id = await start(rt, "responder", ResponderAgent, journal)
        host = process_host(rt, agent_id)
        pause = host.pause
        sent: list[str] = []

        async def send_as_the_pause_completes() -> Any:
            state = await pause()
            sent.extend(await rt.send_message(agent_id, "late"))
            return state

        host.pause = send_as_the_pause_completes  # type: ignore[method-assign]
        await rt.pause_agent(agent_id, timeout_seconds=WAIT)
        await wait_until(lambda: rt.messenger.bus.pending(agent_id) == 1, "the late message")
        await _paused_with_message_waiting(rt, agent_id, sent[0])
        await _handled_once_after_resume(rt, agent_id, journal, "late")


# ---------------------------------------------------------------------- 5. limits, bad input
async def test_a_message_whose_handler_crashed_its_worker_is_not_delivered_again(
    make_config: Callable[..., RuntimeConfig], journal: Path
) -> None:
    """R-01, F-15: handling is at most once once begun: a message whose on_message kills
    its worker in its first step is not handed to the restarted worker (it would crash
    every restart until the restart policy gave up)."""
    fast = RestartPolicy(max_restarts=3, backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    async with open_runtime(make_config, "process", restart=fast) as rt:
        agent_id = await start(rt, "crasher", CrashingHandlerAgent, journal)
        [message_id] = await rt.send_message(agent_id, "poison")
        await wait_until(
            lambda: (
                rt.get_agent_status(agent_id).restart_count == 1
                and rt.get_agent_status(agent_id).status is AgentStatus.RUNNING
            ),
            "the agent's restart after its worker's crash",
        )
        await rt.send_message(agent_id, "after")  # handled (and crashing) only after "poison"
        await wait_until(
            lambda: rt.get_agent_status(agent_id).restart_count == 2, "the second crash"
        )
        begun = [r["message_id"] for r in records(journal, "handler_begun")]
        assert begun.count(message_id) == 1, begun


def after_the_first_task_receive(
    host: ProcessHost, action: Callable[[int, Any], None]
) -> list[int]:
    """Patch ``host`` so that ``action(pid, channel)`` runs once, as the runtime has taken
    the message for its agent's task's first ``receive`` and before the reply is written.
    Returns a list that gets the worker's pid when it ran."""
    messaging = host._messaging
    done: list[int] = []

    async def then_act(call: str, payload: dict[str, Any], live: Any) -> Any:
        result = await messaging(call, payload, live)
        if call == "receive" and not payload.get("inbox") and not done:
            assert live is not None
            done.append(live.process.pid)
            action(live.process.pid, live.channel)
        return result

    host._messaging = then_act  # type: ignore[method-assign]
    return done


async def test_a_message_received_by_a_task_whose_worker_died_is_received_again(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """R-01, F-28: a message a process agent's task receives is not lost when its worker
    dies after the runtime took it from the mailbox but before it reached the task's code:
    it goes back to the mailbox, and the task's retry on the restarted worker receives it."""
    fast = RestartPolicy(max_restarts=3, backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    async with open_runtime(make_config, "process", restart=fast) as rt:
        agent_id = await start(rt, "receiver")
        # SIGKILL is final once sent: the worker runs no more code, so the reply written
        # next never reaches the task.
        killed = after_the_first_task_receive(
            process_host(rt, agent_id), lambda pid, _: os.kill(pid, signal.SIGKILL)
        )
        task_id = await rt.submit_task(
            "script",
            {"ops": [{"op": "receive", "timeout": WAIT}]},
            agent_id=agent_id,
            max_retries=1,
        )
        [message_id] = await rt.send_message(agent_id, "kept", {"n": 1})
        [[message]] = await results(rt, task_id)
        assert killed
        assert (message["message_id"], message["data"]) == (message_id, {"n": 1})
        assert rt.get_agent_status(agent_id).restart_count == 1


async def test_a_message_the_task_received_is_not_delivered_again_after_its_worker_dies(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """R-01: a message that reached a process agent's task is the task's: its worker dying
    in the same loop turn as ``receive`` returned (a C extension crashing on the data) does
    not bring it back to the retry, which would crash on it every time.

    A heartbeat ping reaching the worker in the same read as the receive's reply makes the
    worker's confirmation wait for the end of that turn (it used to be queued, not written,
    and so was lost with the worker)."""
    log = tmp_path / "log"
    fast = RestartPolicy(max_restarts=5, backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    async with open_runtime(make_config, "process", restart=fast) as rt:
        agent_id = await start(rt, "poisoned", PoisonReceiverAgent)

        def ping_beside_the_reply(pid: int, channel: Any) -> None:
            os.kill(pid, signal.SIGSTOP)  # the reply and the ping arrive together

            def ping_and_wake() -> None:
                channel.request("ping").add_done_callback(retrieve)
                channel.flush_now()  # the reply (queued first), then the ping
                os.kill(pid, signal.SIGCONT)

            asyncio.get_running_loop().call_soon(ping_and_wake)

        pinged = after_the_first_task_receive(process_host(rt, agent_id), ping_beside_the_reply)
        [poison_id] = await rt.send_message(agent_id, "poison", {"n": 1})
        [good_id] = await rt.send_message(agent_id, "good", {"n": 2})
        task_id = await rt.submit_task(
            "receive", {"log": str(log)}, agent_id=agent_id, max_retries=2
        )
        task = await finished(rt, task_id)
        assert pinged
        assert log.read_text().split() == [poison_id, good_id]
        assert task.status is TaskStatus.COMPLETED, task.error_message


async def test_a_pause_waits_for_the_on_message_handler_in_progress(
    rt: AgentRuntime, journal: Path, gate: Path
) -> None:
    """F-25: an on_message handler in progress reaches its end (or a safe point) before
    pause_agent returns, as the running task does: a paused agent runs none of its code,
    and a process agent's worker is not stopped with a message half handled."""
    agent_id = await start(rt, "slow", SlowHandlerAgent, journal)
    [message_id] = await rt.send_message(agent_id, "slow", {"gate": str(gate)})
    await wait_until(lambda: records(journal, "handler_begun"), "the handler to begin")
    pausing = asyncio.create_task(rt.pause_agent(agent_id, timeout_seconds=WAIT))
    open_gate(gate)
    paused = await pausing
    assert paused.status is AgentStatus.PAUSED
    assert records(journal, "handler_ended", message_id=message_id)
    await rt.resume_agent(agent_id)


@pytest.mark.parametrize("isolation", ["inline", "process"])
async def test_a_handler_raising_cancelled_error_itself_does_not_end_delivery(
    rt: AgentRuntime, isolation: str
) -> None:
    """An on_message handler that raises CancelledError nobody asked for (it awaited a
    future someone else cancelled) fails like any handler: logged, and the next message
    still comes. It ended the agent's delivery of messages for good, silently."""
    agent_id = await rt.register_agent("h", CancellingHandlerAgent, isolation=isolation)
    await rt.start_agent(agent_id)
    await rt.send_message(agent_id, "first")
    await wait_until(lambda: rt.kv.get("seen:first"), "the first message handled")
    await rt.send_message(agent_id, "boom")
    await rt.send_message(agent_id, "after")
    await wait_until(lambda: rt.kv.get("seen:after"), "the message after 'boom' handled")


async def test_full_mailbox_refuses_the_whole_multicast(
    make_config: Callable[..., RuntimeConfig], isolation: str
) -> None:
    """With message_queue_max_size=3 a fourth waiting message raises QueueFullError (from
    the runtime, and in the agent); a multicast that does not fit one mailbox is sent to
    none; once the mailbox is drained it takes messages again."""
    limits = ResourceLimits(message_queue_max_size=3)
    async with open_runtime(make_config, isolation, limits=limits) as rt:
        sender = await start(rt, "sender")
        full = await start(rt, "full")
        other = await start(rt, "other")
        filled = [(await rt.send_message(full, "fill", {"i": i}))[0] for i in range(3)]
        before = rt.get_metrics().messages_sent

        with pytest.raises(QueueFullError, match=full):
            await rt.send_message([other, full], "multi")
        error = await failed(rt, sender, {"op": "send", "to": [other, full], "type": "multi"})
        assert error.startswith("QueueFullError: the mailbox of agent"), error
        [caught] = await run(
            rt, sender, {"op": "send", "to": [other, full], "type": "multi", "catch": True}
        )
        assert caught["error"] == "QueueFullError"  # the class itself, in either mode
        assert rt.get_metrics().messages_sent == before
        assert types(await received_until_sentinel(rt, other)) == [SENTINEL]

        [got] = await run(rt, full, {"op": "receive", "count": 3})
        assert [m["message_id"] for m in got] == filled
        assert len(await rt.send_message([other, full], "multi")) == 2
        assert types(await received_until_sentinel(rt, full)) == ["multi", SENTINEL]


async def test_ttl_expiry_makes_an_event_and_a_dead_letter(
    make_config: Callable[..., RuntimeConfig], isolation: str
) -> None:
    """A message not received within its TTL is gone: MESSAGE_EXPIRED, a dead letter of
    kind "message" that a later runtime on the same database still lists, and the
    recipient never gets it."""
    async with open_runtime(make_config, isolation) as rt:
        sender = await start(rt, "sender")
        idle = await start(rt, "idle")
        [expiring] = await rt.send_message(idle, "short", {"x": 1}, ttl_seconds=0.2)
        [[from_agent]] = await run(
            rt, sender, {"op": "send", "to": idle, "type": "short-a", "ttl": 0.2}
        )

        async def expired() -> set[str]:
            events = await rt.query_events(event_type=EventType.MESSAGE_EXPIRED, limit=None)
            return {e.details["message_id"] for e in events}

        await wait_until(
            lambda: _contains(expired(), {expiring, from_agent}), what="both messages expired"
        )
        [event] = [
            e
            for e in await rt.query_events(event_type=EventType.MESSAGE_EXPIRED)
            if e.details["message_id"] == expiring
        ]
        assert event.agent_id == idle
        assert event.severity is Severity.WARNING
        assert event.details["message_type"] == "short"
        letters = {d.ref_id: d for d in rt.list_dead_letters(kind="message")}
        assert set(letters) == {expiring, from_agent}
        letter = letters[expiring]
        assert letter.dead_letter_id == f"message:{expiring}"
        assert letter.kind == "message"
        assert letter.payload["recipient_id"] == idle
        assert letter.payload["message_type"] == "short"
        assert letter.payload["data"] == {"x": 1}
        assert letters[from_agent].payload["sender_id"] == sender
        assert rt.list_dead_letters(kind="task") == []
        assert types(await received_until_sentinel(rt, idle)) == [SENTINEL]

    async with open_runtime(make_config, isolation) as again:
        kept = again.list_dead_letters(kind="message")
        assert {d.ref_id for d in kept} == {expiring, from_agent}


async def _contains(found: Awaitable[set[str]], wanted: set[str]) -> bool:
    return wanted <= await found


async def test_ttl_does_not_count_while_the_recipient_is_paused(rt: AgentRuntime) -> None:
    """A paused agent's messages do not expire: while a running agent's message with the
    same TTL expires, the paused one's waits, and it is received after the resume."""
    control = await start(rt, "control")
    paused = await start(rt, "paused")
    assert (await rt.pause_agent(paused, timeout_seconds=WAIT)).status is AgentStatus.PAUSED
    receiving = await submit(rt, paused, {"op": "receive", "timeout": WAIT})
    [kept] = await rt.send_message(paused, "keep", {"k": 1}, ttl_seconds=0.5)
    [gone] = await rt.send_message(control, "control", ttl_seconds=0.5)

    async def expired_ids() -> set[str]:
        events = await rt.query_events(event_type=EventType.MESSAGE_EXPIRED, limit=None)
        return {e.details["message_id"] for e in events}

    await wait_until(lambda: _contains(expired_ids(), {gone}), what="the control expired")
    assert kept not in await expired_ids()
    assert [d.ref_id for d in rt.list_dead_letters(kind="message")] == [gone]
    assert rt.get_task_status(receiving).status is TaskStatus.PENDING

    assert (await rt.resume_agent(paused)).status is AgentStatus.RUNNING
    [[message]] = await results(rt, receiving)
    assert (message["message_id"], message["data"]) == (kept, {"k": 1})
    assert kept not in await expired_ids()


async def test_oversized_message_is_refused(rt: AgentRuntime) -> None:
    """Data of more than 10 MB as JSON (counted in bytes, not characters) raises
    MessageTooLargeError, from the runtime and in the agent; 10 MB exactly is sent."""
    sender = await start(rt, "sender")
    receiver = await start(rt, "receiver")
    with pytest.raises(MessageTooLargeError, match="10 MB"):
        await rt.send_message(receiver, "big", "x" * (MAX_PAYLOAD_BYTES - 1))  # +2 quotes
    with pytest.raises(MessageTooLargeError):
        # fewer characters than the limit, but two bytes each in UTF-8
        await rt.send_message(receiver, "big", "é" * (MAX_PAYLOAD_BYTES // 2))
    error = await failed(
        rt, sender, {"op": "send", "to": receiver, "type": "big", "filler": MAX_PAYLOAD_BYTES}
    )
    assert error.startswith("MessageTooLargeError: message data is"), error
    assert len(await rt.send_message(receiver, "limit", "x" * (MAX_PAYLOAD_BYTES - 2))) == 1
    # beyond what one frame to the runtime carries (a process agent's worker finds out
    # first): the same error
    huge = {"op": "send", "to": receiver, "type": "huge", "filler": 65 * 1024 * 1024}
    assert (await failed(rt, sender, huge)).startswith("MessageTooLargeError: "), huge["type"]


async def test_bad_messages_are_refused(rt: AgentRuntime) -> None:
    """Non-JSON data, unknown or no recipients, an empty type and a TTL that is not
    positive are refused before anything is sent."""
    receiver = await start(rt, "receiver")
    cyclic: dict[str, Any] = {}
    cyclic["itself"] = cyclic
    for data in ({1, 2}, float("nan"), object(), {"key": b"bytes"}, cyclic):
        with pytest.raises(ValidationError, match="JSON"):
            await rt.send_message(receiver, "bad", data)
    with pytest.raises(NotFoundError, match="no-such-agent"):
        await rt.send_message("no-such-agent", "hello")
    with pytest.raises(NotFoundError, match="no-such-agent"):
        await rt.send_message([receiver, "no-such-agent"], "hello")  # nothing goes out
    with pytest.raises(NotFoundError, match="no-such-agent"):
        await rt.request("no-such-agent", "ask", timeout_seconds=0.1)
    with pytest.raises(ValidationError, match="at least one"):
        await rt.send_message([], "hello")
    with pytest.raises(ValidationError, match="message_type"):
        await rt.send_message(receiver, "")
    for ttl in (0, -1.0):
        with pytest.raises(ValidationError):
            await rt.send_message(receiver, "hello", ttl_seconds=ttl)
    assert rt.get_metrics().messages_sent == 0
    assert types(await received_until_sentinel(rt, receiver)) == [SENTINEL]


async def test_bad_broadcasts_and_publishes_are_refused_with_nobody_listening(
    rt: AgentRuntime,
) -> None:
    """R-04: a broadcast or publish checks its arguments even when no agent would get it:
    the same call must not pass or fail depending on who is listening."""
    with pytest.raises(ValidationError, match="message_type"):
        await rt.broadcast("", {"x": 1})
    with pytest.raises(ValidationError, match="JSON"):
        await rt.broadcast("hello", {"x": object()})
    with pytest.raises(ValidationError, match="ttl_seconds"):
        await rt.publish("news", "hello", ttl_seconds=-1)
    assert await rt.broadcast("hello", {"x": 1}) == []
    assert await rt.publish("news", "hello") == []


async def test_a_request_type_leaves_room_for_its_reply_type(rt: AgentRuntime) -> None:
    """R-04: a request's message_type is at most 250 characters, so the default reply
    type (``<type>.reply``) fits the 256-character limit; a longer one is refused at once
    instead of timing out because no reply can be sent."""
    receiver = await start(rt, "receiver")
    with pytest.raises(ValidationError, match="at most 250"):
        await rt.request(receiver, "q" * 251, timeout_seconds=1)
    assert rt.get_metrics().messages_sent == 0


async def test_bad_messages_fail_the_agents_task(rt: AgentRuntime) -> None:
    """The same refusals reach an agent's code: the task fails with the error's name."""
    sender = await start(rt, "sender")
    receiver = await start(rt, "receiver")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"to": "no-such-agent"}, "NotFoundError"),
        ({"to": []}, "ValidationError"),
        ({"to": receiver, "ttl": -1}, "ValidationError"),
    ]
    for op, name in cases:
        error = await failed(rt, sender, {"op": "send", "type": "bad", **op})
        assert error.startswith(f"{name}: "), (op, error)
    assert types(await received_until_sentinel(rt, receiver)) == [SENTINEL]


async def test_non_json_data_from_an_agent_is_a_validation_error(rt: AgentRuntime) -> None:
    """An agent sending data that is not JSON gets ValidationError, as from the runtime."""
    sender = await start(rt, "sender")
    receiver = await start(rt, "receiver")
    error = await failed(
        rt, sender, {"op": "send", "to": receiver, "type": "bad", "non_json": True}
    )
    assert error.startswith("ValidationError: message data must be JSON-serialisable"), error


async def test_agent_code_catches_the_documented_error_classes(rt: AgentRuntime) -> None:
    """``except WaitTimeoutError`` (and the other errors AgentContext documents) works in
    agent code in both isolation modes: a worker gets the classes, not a RemoteAgentError."""
    sender = await start(rt, "sender")
    responder = await start(rt, "responder", ResponderAgent)
    got = await run(
        rt,
        sender,
        {"op": "receive", "timeout": 0.05, "catch": True},
        {"op": "request", "to": responder, "type": IGNORED, "timeout": 0.05, "catch": True},
        {"op": "send", "to": "no-such-agent", "type": "x", "catch": True},
        {"op": "send", "to": [], "type": "x", "catch": True},
        {"op": "send", "to": responder, "type": "x", "non_json": True, "catch": True},
        {"op": "send", "to": responder, "type": "x", "filler": MAX_PAYLOAD_BYTES, "catch": True},
    )
    assert [(r["error"], r["remote_type"]) for r in got] == [
        ("WaitTimeoutError", None),
        ("WaitTimeoutError", None),
        ("NotFoundError", None),
        ("ValidationError", None),
        ("ValidationError", None),
        ("MessageTooLargeError", None),
    ]


async def test_messages_to_a_stopped_agent_wait_for_its_next_start(rt: AgentRuntime) -> None:
    """Messages sent to a stopped agent (by the runtime or an agent) wait in its mailbox
    and are received, in order, once it runs again."""
    sender = await start(rt, "sender")
    receiver = await start(rt, "receiver")
    assert (await rt.stop_agent(receiver)).status is AgentStatus.STOPPED
    first = await rt.send_message(receiver, "while-stopped", {"i": 0})
    [second] = await run(rt, sender, {"op": "send", "to": receiver, "type": "while-stopped"})
    assert (await rt.start_agent(receiver)).status is AgentStatus.RUNNING
    got = await received_until_sentinel(rt, receiver)
    assert [m["message_id"] for m in got[:-1]] == [*first, *second]


async def test_on_message_agent_gets_messages_across_a_restart(
    rt: AgentRuntime, journal: Path
) -> None:
    """An on_message agent that is stopped gets what was sent meanwhile after it starts
    again, and what is sent after that."""
    responder = await start(rt, "responder", ResponderAgent, journal)
    [before] = await rt.send_message(responder, "before")
    await wait_until(lambda: handled(journal, "before"), what="'before' is handled")
    assert (await rt.stop_agent(responder)).status is AgentStatus.STOPPED
    [meanwhile] = await rt.send_message(responder, "meanwhile")
    assert (await rt.start_agent(responder)).status is AgentStatus.RUNNING
    await wait_until(lambda: handled(journal, "meanwhile"), what="'meanwhile' is handled")
    [after] = await rt.send_message(responder, "after")
    await wait_until(lambda: handled(journal, "after"), what="'after' is handled")
    assert [m["message_id"] for m in handled(journal)] == [before, meanwhile, after]


async def test_on_message_agent_restarted_with_nothing_sent_meanwhile(
    rt: AgentRuntime, journal: Path
) -> None:
    """Stop and start an on_message agent, then send: the message is handled."""
    responder = await start(rt, "responder", ResponderAgent, journal)
    assert (await rt.stop_agent(responder)).status is AgentStatus.STOPPED
    assert (await rt.start_agent(responder)).status is AgentStatus.RUNNING
    [after] = await rt.send_message(responder, "after")
    await wait_until(lambda: handled(journal, "after"), what="'after' is handled")
    assert [m["message_id"] for m in handled(journal)] == [after]


async def test_a_sync_on_message_runs_off_the_loop_in_order(
    rt: AgentRuntime, journal: Path
) -> None:
    """A plain ``def on_message`` gets every message, in the order sent, and runs in a
    thread of its own: it cannot block the runtime's loop."""
    handler = await start(rt, "sync-handler", SyncHandlerAgent, journal)
    first = await rt.send_message(handler, "one", {"n": 1})
    second = await rt.send_message(handler, "two", {"n": 2})
    await wait_until(lambda: len(handled(journal)) == 2, what="both messages are handled")
    got = records(journal, "on_message")
    assert [r["message"]["message_id"] for r in got] == first + second
    assert [r["message"]["data"] for r in got] == [{"n": 1}, {"n": 2}]
    assert all(r["off_loop"] for r in got)


async def test_a_reply_racing_its_requesters_cancel_goes_to_its_mailbox(
    rt: AgentRuntime, isolation: str
) -> None:
    """A reply that reaches a request in the moment its requester gives up (its task is
    cancelled) is not lost: it waits in the requester's mailbox, as a later reply does."""
    asker = await start(rt, "asker", ScriptAgent)
    answerer = await rt.register_agent("answerer", ResponderAgent)  # not started
    task_id = await submit(
        rt, asker, {"op": "request", "to": answerer, "type": "q", "timeout": WAIT}
    )
    request = await rt.messenger.receive(answerer, WAIT)  # the test answers for it
    replied: list[str] = []

    def answer() -> None:
        if not replied:
            replied.append(rt.messenger.reply(answerer, request, {"late": True}))

    if isolation == "process":
        # answer right as the runtime tells the worker to cancel the task
        live = process_host(rt, asker)._live
        assert live is not None  # the agent's worker runs
        channel: Any = live.channel
        notify = channel.notify

        def answer_at_the_cancel(op: str, **payload: Any) -> None:
            notify(op, **payload)
            if op == "cancel":
                answer()

        channel.notify = answer_at_the_cancel
        cancelled = await rt.cancel_task(task_id)
    else:
        # the same loop turn inline: the cancel is under way, then the reply comes
        cancelling = asyncio.ensure_future(rt.cancel_task(task_id))
        await asyncio.sleep(0)
        answer()
        cancelled = await cancelling
    assert cancelled.status is TaskStatus.CANCELLED
    got = await rt.messenger.bus.take(asker, WAIT)
    assert [got.message_id] == replied


async def test_topics_given_as_one_string_are_refused(rt: AgentRuntime) -> None:
    """``topics="prices"`` would be six one-letter topics: it is refused, saying what to
    write instead."""
    with pytest.raises(ValidationError, match=r"\['prices'\]"):
        await rt.register_agent("sub", ScriptAgent, topics="prices")


async def test_expired_messages_do_not_pile_up_in_a_mailbox(rt: AgentRuntime) -> None:
    """An agent that never receives does not keep its expired messages in memory: its
    mailbox holds at most a bounded number of gone letters beside the waiting ones."""
    idle = await rt.register_agent("idle", ScriptAgent)  # never started: never receives
    for batch in range(1, 5):
        for _ in range(200):
            await rt.send_message(idle, "t", {"n": batch}, ttl_seconds=0.01)
        await wait_until(
            lambda b=batch: len(rt.list_dead_letters(kind="message")) == 200 * b,  # type: ignore[misc]
            what=f"batch {batch} to expire",
        )
    assert rt.messenger.bus.pending(idle) == 0
    assert len(rt.messenger.bus._mailboxes[idle].letters) <= 200 + 64  # type: ignore[attr-defined]


async def test_cancelled_receive_does_not_swallow_the_next_message(
    rt: AgentRuntime, journal: Path
) -> None:
    """A task cancelled while it waits in ``context.receive`` takes no message with it:
    the next message goes to the next receive."""
    receiver = await start(rt, "receiver", ScriptAgent, journal)
    waiting = await submit(rt, receiver, {"op": "receive", "timeout": WAIT})
    await wait_until(lambda: records(journal, "op", task_id=waiting), what="receive called")
    assert (await rt.cancel_task(waiting)).status is TaskStatus.CANCELLED
    [message] = await rt.send_message(receiver, "after-cancel")
    [[got]] = await run(rt, receiver, {"op": "receive", "timeout": 2.0})
    assert got["message_id"] == message


# ---------------------------------------------------------------------- 6. events, metrics
async def test_events_and_metrics(rt: AgentRuntime, journal: Path) -> None:
    """MESSAGE_SENT is recorded for each message (by its sender), MESSAGE_RECEIVED when its
    recipient takes it; metrics count them and time their delivery."""
    sender = await start(rt, "sender")
    receiver = await start(rt, "receiver")
    responder = await start(rt, "responder", ResponderAgent, journal)
    metrics = rt.get_metrics()
    assert (metrics.messages_sent, metrics.messages_delivered) == (0, 0)
    assert metrics.message_latency_mean_seconds is None
    assert metrics.message_latency_p95_seconds is None

    runtime_ids = [(await rt.send_message(receiver, "r", {"i": i}))[0] for i in range(5)]
    [agent_ids] = await run(rt, sender, {"op": "send", "to": receiver, "type": "a", "count": 2})
    metrics = rt.get_metrics()
    assert (metrics.messages_sent, metrics.messages_delivered) == (7, 0)
    [got] = await run(rt, receiver, {"op": "receive", "count": 7})
    assert [m["message_id"] for m in got] == runtime_ids + agent_ids

    sent = await rt.query_events(event_type=EventType.MESSAGE_SENT, limit=None)
    assert [e.details["message_id"] for e in sent] == runtime_ids + agent_ids
    assert [e.agent_id for e in sent] == [None] * 5 + [sender] * 2
    assert {e.details["recipient_id"] for e in sent} == {receiver}
    assert [e.details["message_type"] for e in sent] == ["r"] * 5 + ["a"] * 2
    received = await rt.query_events(event_type=EventType.MESSAGE_RECEIVED, limit=None)
    assert [e.details["message_id"] for e in received] == runtime_ids + agent_ids
    assert {e.agent_id for e in received} == {receiver}

    metrics = rt.get_metrics()
    assert (metrics.messages_sent, metrics.messages_delivered) == (7, 7)
    mean, p95 = metrics.message_latency_mean_seconds, metrics.message_latency_p95_seconds
    assert mean is not None
    assert p95 is not None
    assert 0 <= mean <= WAIT
    assert 0 <= p95 <= WAIT

    answer = await rt.request(responder, "ask", timeout_seconds=WAIT)  # a request, a reply
    metrics = rt.get_metrics()
    assert (metrics.messages_sent, metrics.messages_delivered) == (9, 9)
    received = await rt.query_events(event_type=EventType.MESSAGE_RECEIVED, limit=None)
    assert received[-2].agent_id == responder
    assert received[-2].details["message_id"] == answer.correlation_id
    assert received[-1].details["message_id"] == answer.message_id


def nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ... {}}}``, ``depth`` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_deeply_nested_data_is_kept_delivered_and_dead_lettered(
    make_config: Callable[..., RuntimeConfig], isolation: str
) -> None:
    """Data nested 600 levels deep is JSON like any other (the send accepts what ``json``
    encodes): a message carrying it waits in a stopped agent's mailbox, survives a
    runtime restart and is received whole; one whose TTL ends becomes a dead letter that
    list_dead_letters shows (its copy recursed, and failed past ~490 levels)."""
    deep = nested(600)
    async with open_runtime(make_config, isolation) as rt:
        receiver = await start(rt, "receiver")
        assert (await rt.stop_agent(receiver)).status is AgentStatus.STOPPED
        [kept] = await rt.send_message(receiver, "deep", deep)
        [expiring] = await rt.send_message(receiver, "deep-ttl", deep, ttl_seconds=0.05)
        await wait_until(
            lambda: bool(rt.list_dead_letters(kind="message")), what="the TTL message expired"
        )
        [letter] = rt.list_dead_letters(kind="message")
        assert letter.ref_id == expiring
        assert letter.payload["data"] == deep

    async with open_runtime(make_config, isolation) as again:
        assert await start(again, "receiver") == receiver  # registered again by name
        got = await received_until_sentinel(again, receiver)
        assert [m["message_id"] for m in got[:-1]] == [kept]
        assert got[0]["data"] == deep


class CountingBus(MemoryBus):
    """The bus a plugin author writes from docs/plugins.md: the built-in one, counting
    what is posted, handed both of the messenger's callbacks."""

    def __init__(self, on_expired: Any, on_returned: Any) -> None:
        super().__init__(on_expired, on_returned)
        self.posted = 0

    def post(self, messages: list[AgentMessage]) -> list[AgentMessage]:
        waiting = super().post(messages)
        self.posted += len(messages)
        return waiting


class CountingBusPlugin:
    miminions_plugin_name = "counting_bus"

    @hookimpl
    def miminions_make_bus(self, runtime: AgentRuntime) -> CountingBus:
        return CountingBus(runtime.messenger.message_expired, runtime.messenger.message_returned)


@pytest.mark.parametrize("bus", ["built-in", "documented-subclass"])
async def test_a_paused_recipients_message_keeps_its_ttl_across_a_restart(
    make_config: Callable[..., RuntimeConfig], isolation: str, bus: str
) -> None:
    """A message's TTL does not count while its recipient is paused, also while no runtime
    runs: stopped paused and started again after longer than the TTL, the agent gets the
    message once resumed (the stored copy carries the time it had left)."""
    plugins = [CountingBusPlugin()] if bus == "documented-subclass" else []
    config = make_config(default_isolation=isolation)
    async with started_runtime(config, plugins) as rt:
        napper = await start(rt, "napper")
        [kept] = await rt.send_message(napper, "memo", {"n": 1}, ttl_seconds=0.3)
        await rt.pause_agent(napper, timeout_seconds=WAIT)
    await asyncio.sleep(0.5)  # longer than the TTL, all of it while the agent is paused
    async with started_runtime(config, plugins) as again:
        assert await again.register_agent("napper", ScriptAgent) == napper  # paused still
        assert (await again.resume_agent(napper)).status is AgentStatus.RUNNING
        got = await received_until_sentinel(again, napper)
        assert [m["message_id"] for m in got[:-1]] == [kept]
        assert got[0]["data"] == {"n": 1}


async def test_a_graceful_stop_lets_the_handler_in_progress_finish(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """A graceful stop lets an on_message handler in progress finish within the stop's
    timeout, as it does the running task, and takes no further message: the message
    being handled is handled once, not cut off and lost (it was cancelled at once: not
    finished, not back in the mailbox, not a dead letter)."""
    journal, gate = tmp_path / "journal.jsonl", tmp_path / "gate"

    def seen(hook: str) -> list[str]:
        return [r["type"] for r in read_journal(journal) if r["hook"] == hook]

    async with open_runtime(make_config, isolation) as rt:
        agent = await rt.register_agent(
            "handler", GatedHandlerAgent, config={"journal": str(journal), "gate": str(gate)}
        )
        await rt.start_agent(agent)
        await rt.send_message(agent, "job")
        await wait_until(lambda: seen("began") == ["job"], what="the handler began")
        await rt.send_message(agent, "next")  # waits in the mailbox for the next start
        stopping = asyncio.ensure_future(rt.stop_agent(agent, timeout_seconds=WAIT))
        await wait_until(
            lambda: rt.get_agent_status(agent).status is AgentStatus.STOPPING,
            what="the stop began",
        )
        gate.touch()  # the handler may finish now, well within the stop's timeout
        assert (await stopping).status is AgentStatus.STOPPED
        assert seen("finished") == ["job"]
        assert rt.messenger.bus.pending(agent) == 1
        await rt.start_agent(agent)
        await wait_until(lambda: "next" in seen("finished"), what="the next message handled")
        assert seen("finished") == ["job", "next"]
        assert rt.list_dead_letters(kind="message") == []


async def test_a_request_keeps_its_place_among_the_senders_messages(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """F-06, per-sender order: a request an agent made before a send reaches the recipient
    before it (a process agent's send, read with the request in one batch of frames and
    carried out at once, overtook the request, posted on a later turn of the loop)."""
    journal = tmp_path / "journal.jsonl"
    async with open_runtime(make_config, isolation) as rt:
        receiver = await rt.register_agent(
            "receiver", ReplyingJournalAgent, config={"journal": str(journal)}
        )
        sender = await rt.register_agent("sender", RequestThenSendAgent)
        await rt.start_agent(receiver)
        await rt.start_agent(sender)
        task = await rt.wait_for_task(
            await rt.submit_task("go", {"to": receiver, "n": 5}, agent_id=sender), WAIT
        )
        assert task.status is TaskStatus.COMPLETED, task.error_message

        def handled() -> list[tuple[str, int]]:
            return [(r["type"], r["data"]) for r in read_journal(journal) if r["hook"] == "msg"]

        # (The last send may be handled after the task ended: it did not wait for it.)
        await wait_until(lambda: len(handled()) == 10, what="all ten messages handled")
        assert handled() == [pair for index in range(5) for pair in (("q", index), ("m", index))]


async def test_tasks_draining_at_shutdown_still_get_their_messages_handled(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """While a graceful rt.stop() lets running tasks finish, the other agents still
    handle their messages: a task asking another agent twice gets both replies (after the
    first, the asked agent took no more messages, and the second request timed out)."""
    async with open_runtime(make_config, "inline", shutdown_timeout_seconds=WAIT) as rt:
        server = await rt.register_agent("server", PongAgent)
        client = await rt.register_agent("client", AskWhileStoppingAgent)
        await rt.start_agent(server)
        await rt.start_agent(client)
        task_id = await rt.submit_task("ask", {"server": server}, agent_id=client)
        await wait_until(lambda: rt.get_task_status(task_id).started_at is not None)
        await rt.stop(timeout_seconds=WAIT)
        task = rt.get_task_status(task_id)  # read from memory, also once stopped
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == [{"pong": 1}, {"pong": 2}]


async def test_a_request_a_process_agent_gives_up_at_once_leaves_no_reply_expected(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """A process agent's request given up at once (its cancel read with the request, in
    one batch of frames) is no longer expected: the reply, when it comes, goes to the
    requester's mailbox (a stale expectation swallowed it, and stayed for good)."""
    go, done = tmp_path / "go", tmp_path / "done"
    async with open_runtime(make_config, "inline") as rt:
        replier = await rt.register_agent("replier", SilentAgent)
        requester = await rt.register_agent("requester", GiveUpAtOnceAgent, isolation="process")
        await rt.start_agent(requester)
        task_id = await rt.submit_task(
            "ask", {"go": str(go), "done": str(done), "to": replier}, agent_id=requester
        )
        await wait_until(lambda: rt.get_task_status(task_id).status is TaskStatus.RUNNING)
        # The loop is held while the worker writes its request and its cancel: the runtime
        # then reads both frames in one batch, as it does whenever it is busy.
        go.touch()
        deadline = time.monotonic() + WAIT
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # noqa: ASYNC251 - blocking the loop is the point
        task = await rt.wait_for_task(task_id, WAIT)
        assert task.status is TaskStatus.COMPLETED, task.error_message
        request = await rt.messenger.receive(replier, WAIT)
        assert request.sender_id == requester
        rt.messenger.reply(replier, request, {"answer": 42})
        assert rt.messenger.bus.pending(requester) == 1  # the reply nobody waits for


class _SteppedBack(datetime):
    """The wall clock, stepped back by ``offset`` (an NTP correction, a VM resumed)."""

    offset = timedelta(0)

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) - cls.offset


async def test_stored_messages_keep_their_mailbox_order_across_a_restart(
    make_config: Callable[..., RuntimeConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """F-06: a mailbox read back by the next run keeps its order, also when the wall clock
    stepped back between two sends (they were sorted by send time: swapped)."""
    monkeypatch.setattr(messaging, "datetime", _SteppedBack)
    async with open_runtime(make_config, "inline") as rt:
        agent_id = await rt.register_agent("reader", ScriptAgent)
        await rt.send_message(agent_id, "first")
        _SteppedBack.offset = timedelta(seconds=5)
        await rt.send_message(agent_id, "second")
        _SteppedBack.offset = timedelta(0)
        await rt.send_message(agent_id, "third")
    async with open_runtime(make_config, "inline") as again:
        agent_id = await again.register_agent("reader", ScriptAgent)
        await again.start_agent(agent_id)
        received = await received_until_sentinel(again, agent_id)
        assert types(received)[:-1] == ["first", "second", "third"]


@pytest.mark.parametrize("resumed", [False, True])
async def test_messages_whose_ttl_a_pause_froze_keep_their_order_across_a_restart(
    make_config: Callable[..., RuntimeConfig], resumed: bool
) -> None:
    """Messages with a time to live, stored again as a pause freezes (and a resume thaws)
    it, keep their places: they came back reversed, ahead of older ones without one."""
    async with open_runtime(make_config, "inline") as rt:
        agent_id = await rt.register_agent("reader", ScriptAgent)
        await rt.start_agent(agent_id)
        await rt.send_message(agent_id, "no ttl")
        for kind in ("first", "second", "third"):
            await rt.send_message(agent_id, kind, ttl_seconds=600)
        await rt.pause_agent(agent_id)
        if resumed:
            await rt.resume_agent(agent_id)
    async with open_runtime(make_config, "inline") as again:
        agent_id = await again.register_agent("reader", ScriptAgent)
        if resumed:
            await again.start_agent(agent_id)
        else:
            assert again.get_agent_status(agent_id).status is AgentStatus.PAUSED
            await again.resume_agent(agent_id)
        received = await received_until_sentinel(again, agent_id)
        assert types(received)[:-1] == ["no ttl", "first", "second", "third"]
