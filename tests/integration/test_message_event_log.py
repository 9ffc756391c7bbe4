"""The message events of the event log (MESSAGE_SENT, MESSAGE_RECEIVED) are built after
the receiver got its message (off the delivery's latency): they must still say what was
sent and received, in order, whatever the receiver does with the message meanwhile."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentMessage, AgentRuntime, BaseAgent, EventType, Task
from miminions.kernel.events import EventLog
from miminions.kernel.models import EventRecord
from miminions.kernel.plugins import build_plugin_manager

WAIT = 10.0


class Scribbler(BaseAgent):
    """Changes every message it is handed, in place, as soon as it gets it."""

    async def on_start(self) -> None:
        self.seen: list[str] = []
        self.got = asyncio.Event()

    async def on_message(self, message: AgentMessage) -> None:
        self.seen.append(message.message_id)
        message.message_id = "scribbled"
        message.message_type = "scribbled"
        message.recipient_id = "scribbled"
        message.sender_id = "scribbled"
        self.got.set()

    async def execute_task(self, task: Task) -> None:
        return None


async def test_a_receiver_changing_its_message_does_not_change_the_logged_events(
    tmp_path: Path,
) -> None:
    async with AgentRuntime(str(tmp_path / "a.db")) as rt:
        agent = Scribbler()
        receiver = await rt.register_agent("scribbler", agent, isolation="inline")
        await rt.start_agent(receiver)
        [message_id] = await rt.send_message(receiver, "note", {"n": 1})
        await asyncio.wait_for(agent.got.wait(), WAIT)
        assert agent.seen == [message_id]

        [sent] = await rt.query_events(event_type=EventType.MESSAGE_SENT)
        assert sent.agent_id is None  # the runtime sent it
        assert sent.details == {
            "message_id": message_id,
            "message_type": "note",
            "recipient_id": receiver,
        }
        [received] = await rt.query_events(event_type=EventType.MESSAGE_RECEIVED)
        assert received.agent_id == receiver
        assert received.details["message_id"] == message_id
        assert received.details["message_type"] == "note"
        assert received.event_id is not None
        assert sent.event_id is not None
        assert received.event_id > sent.event_id


class _Events:
    """A store that keeps the events it is given (all EventLog needs)."""

    def __init__(self) -> None:
        self.records: list[EventRecord] = []

    def put_event(self, record: EventRecord) -> None:
        self.records.append(record)


async def test_deferred_events_keep_their_order_and_a_failing_builder_loses_only_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _Events()
    log = EventLog(store, build_plugin_manager())  # type: ignore[arg-type]

    def one(name: str) -> list[tuple[EventType, str | None, dict[str, Any]]]:
        return [(EventType.MESSAGE_SENT, name, {"n": name})]

    def broken(_: object) -> list[tuple[EventType, str | None, dict[str, Any]]]:
        raise RuntimeError("builder bug")

    log.emit_soon(one, "first", 1)
    log.emit_soon(broken, None, 1)
    log.emit_soon(one, "third", 1)
    assert store.records == []  # nothing is built or stored before the loop turns
    with caplog.at_level(logging.ERROR, logger="miminions.events"):
        log.emit(EventType.QUEUE_PAUSED)  # an event emitted now comes after the held ones
    log.drain()  # nothing left
    assert [(r.event_type, r.agent_id) for r in store.records] == [
        (EventType.MESSAGE_SENT, "first"),
        (EventType.MESSAGE_SENT, "third"),
        (EventType.QUEUE_PAUSED, None),
    ]
    assert "builder bug" in caplog.text
