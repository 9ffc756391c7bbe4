"""Messages handed over at the edge of a timeout or a pause are neither lost nor expired.

The timeout races are made deterministic on the standard asyncio loop: the test blocks the
loop past the receiver's timeout, then yields once, so in the next loop turn its own step
runs first (it hands the message over) and the due timeout right after it, before the
receiver wakes: the receiver sees the timeout and the message at the same moment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from miminions import (
    AgentMessage,
    AgentStatus,
    BaseAgent,
    EventType,
    RestartPolicy,
    RuntimeConfig,
    TaskStatus,
)
from miminions.plugins.memory_bus import MemoryBus
from miminions.testing import started_runtime
from tests.support.journal_agents import read_journal
from tests.support.messaging_agents import SENTINEL, ResponderAgent, ScriptAgent
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

SHORT_TIMEOUT = 0.05  # seconds: the receiver's timeout the test lets pass
WAIT = 10.0


async def _past_the_timeout() -> None:
    """Keep the loop busy past :data:`SHORT_TIMEOUT`, then let one loop turn begin."""
    time.sleep(SHORT_TIMEOUT * 2)  # noqa: ASYNC251 - blocking on purpose: the timeout falls due
    await asyncio.sleep(0)


async def test_a_message_handed_over_as_the_receive_times_out_is_received() -> None:
    expired: list[AgentMessage] = []
    bus = MemoryBus(expired.append, on_returned=lambda message: None)
    bus.open_mailbox("a", 10)
    receiving = asyncio.ensure_future(bus.take("a", SHORT_TIMEOUT))
    await asyncio.sleep(0)  # the receiver waits now
    message = AgentMessage(
        recipient_id="a", message_id="m1", message_type="ping", created_at=datetime.now(UTC)
    )

    await _past_the_timeout()
    assert bus.post([message]) == []  # handed to the waiting receiver, not queued

    assert await receiving is message
    assert bus.pending("a") == 0
    assert expired == []


async def test_a_reply_arriving_as_the_request_times_out_is_returned(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    async with started_runtime(make_config()) as rt:
        agent_id = await rt.register_agent("asked", ResponderAgent)  # not started: its
        # mailbox keeps the request, and the test answers it in the agent's name
        requesting = asyncio.ensure_future(
            rt.request(agent_id, "question", {"q": 1}, timeout_seconds=SHORT_TIMEOUT)
        )
        request = await rt.messenger.bus.take(agent_id, WAIT)

        await _past_the_timeout()
        rt.messenger.reply(agent_id, request, {"a": 1})

        reply = await requesting
        assert (reply.correlation_id, reply.data) == (request.message_id, {"a": 1})


async def test_messages_for_a_paused_on_message_agent_wait_with_their_ttl_frozen(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """A paused agent with ``on_message`` (a worker keeps a receive open for it) gets
    messages sent during the pause after it resumes, in order, although the pause outlasted
    their TTL; meanwhile they wait in its mailbox."""
    journal = tmp_path / "journal.jsonl"
    async with started_runtime(make_config(default_isolation=isolation)) as rt:
        paused = await rt.register_agent("paused", ResponderAgent, config={"journal": str(journal)})
        assert (await rt.start_agent(paused)).status is AgentStatus.RUNNING
        await rt.send_message(paused, "warm-up")
        await wait_until(lambda: _handled(journal) == ["warm-up"], within=WAIT)

        assert (await rt.pause_agent(paused, timeout_seconds=WAIT)).status is AgentStatus.PAUSED
        await rt.send_message(paused, "first", ttl_seconds=0.3)
        await rt.send_message(paused, "second", ttl_seconds=0.3)
        # the control: the same TTL in the mailbox of an agent that is not started
        stopped = await rt.register_agent("stopped", ResponderAgent)
        [expiring] = await rt.send_message(stopped, "expiring", ttl_seconds=0.3)

        async def expired() -> set[str]:
            events = await rt.query_events(event_type=EventType.MESSAGE_EXPIRED, limit=None)
            return {event.details["message_id"] for event in events}

        async def control_expired() -> bool:
            return expiring in await expired()

        await wait_until(control_expired, "the control message expired", WAIT)
        assert _handled(journal) == ["warm-up"]  # nothing handled while paused

        assert (await rt.resume_agent(paused)).status is AgentStatus.RUNNING
        await wait_until(lambda: _handled(journal) == ["warm-up", "first", "second"], within=WAIT)
        assert [d.ref_id for d in rt.list_dead_letters(kind="message")] == [expiring]


def _handled(journal: Path) -> list[str]:
    if not journal.exists():
        return []
    return [
        record["message"]["message_type"]
        for record in read_journal(journal)
        if record["hook"] == "on_message"
    ]


async def test_a_message_returned_to_its_mailbox_is_counted_delivered_once(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """What a host does when a received message did not reach the agent's code (its worker
    went, or it paused as the message came): the message is back in the mailbox, and only
    the receipt that reaches the agent counts."""
    async with started_runtime(make_config()) as rt:
        agent_id = await rt.register_agent("receiver", ResponderAgent)  # not started
        [message_id] = await rt.send_message(agent_id, "hello", {"n": 1})
        taken = await rt.agent_call(agent_id, "receive", {"timeout_seconds": WAIT})
        await rt.agent_call(agent_id, "return_message", {"message": taken.model_dump(mode="json")})
        assert rt.get_metrics().messages_delivered == 0

        again = await rt.agent_call(agent_id, "receive", {"timeout_seconds": WAIT})

        assert (again.message_id, again.data) == (message_id, {"n": 1})
        assert rt.get_metrics().messages_delivered == 1
        received = await rt.query_events(event_type=EventType.MESSAGE_RECEIVED, limit=None)
        assert [e.details.get("redelivered", False) for e in received] == [False, True]


class KillRequesterThenReply(BaseAgent):
    """Inline: on a request, SIGKILLs the requesting worker (its pid is the data), then
    replies in the same loop turn (before the runtime saw the death)."""

    replied: list[str] = []

    async def on_message(self, message: AgentMessage) -> None:
        if message.correlation_id is not None and not message.is_reply:
            os.kill(message.data["pid"], signal.SIGKILL)
            KillRequesterThenReply.replied.append(await self.context.reply(message, {"n": 42}))

    async def execute_task(self, task: object) -> None:
        return None


async def test_a_reply_to_a_worker_that_died_goes_to_the_requesters_mailbox(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-28: a reply handed to a process agent whose worker died before it read it goes
    back to the agent's mailbox, as a late reply does (it was written to the dead worker's
    connection, and lost), and its next worker receives it."""
    KillRequesterThenReply.replied.clear()
    fast = RestartPolicy(max_restarts=3, backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    async with started_runtime(make_config(default_isolation="process", restart=fast)) as rt:
        replier = await rt.register_agent("replier", KillRequesterThenReply, isolation="inline")
        await rt.start_agent(replier)
        asker = await rt.register_agent("asker", ScriptAgent)
        await rt.start_agent(asker)
        pid = rt.get_agent_status(asker).process_id
        ask = {"op": "request", "to": replier, "type": "q", "data": {"pid": pid}, "timeout": WAIT}
        task_id = await rt.submit_task("script", {"ops": [ask]}, agent_id=asker, max_retries=0)
        assert (await rt.wait_for_task(task_id, WAIT)).status is TaskStatus.FAILED  # killed
        assert len(KillRequesterThenReply.replied) == 1
        await wait_until(
            lambda: (
                rt.get_agent_status(asker).status is AgentStatus.RUNNING
                and rt.get_agent_status(asker).restart_count == 1
            ),
            "the asker's restart",
        )
        await rt.send_message(asker, SENTINEL)
        ops = [{"op": "receive_until", "timeout": WAIT}]
        done = await rt.wait_for_task(
            await rt.submit_task("script", {"ops": ops}, agent_id=asker), WAIT
        )
        assert done.status is TaskStatus.COMPLETED, done.error_message
        assert isinstance(done.output_data, dict)
        received = done.output_data["results"][0]
        assert [m["message_type"] for m in received] == ["q.reply", SENTINEL]
        assert received[0]["message_id"] == KillRequesterThenReply.replied[0]
