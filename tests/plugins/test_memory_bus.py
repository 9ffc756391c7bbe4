"""The built-in message bus (``memory_bus``) on its own: what a receiver gets when another
one gives a message back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from miminions import AgentMessage, RuntimeNotRunningError
from miminions.plugins.memory_bus import MemoryBus

WAIT = 5.0  # bound of every wait for a receiver


def message(message_id: str, expires_at: datetime | None = None) -> AgentMessage:
    return AgentMessage(
        message_id=message_id,
        sender_id=None,
        recipient_id="a",
        message_type="ping",
        created_at=datetime.now(UTC),
        expires_at=expires_at,
    )


async def two_receivers(bus: MemoryBus) -> tuple[asyncio.Task[AgentMessage], ...]:
    """Two receivers waiting at agent ``a``'s mailbox."""
    receivers = tuple(asyncio.ensure_future(bus.take("a", None)) for _ in range(2))
    await asyncio.sleep(0)  # one loop turn: both have reached their wait
    assert len(bus._mailboxes["a"].waiters) == 2
    return receivers


async def test_a_message_given_back_goes_to_the_receiver_still_waiting() -> None:
    """A receiver cancelled as its message came gives it back; another receiver waiting at
    the same mailbox gets it (it does not sit in the mailbox while a receiver waits), and
    the message sent after it comes after it."""
    returned: list[AgentMessage] = []
    bus = MemoryBus(on_expired=lambda m: None, on_returned=returned.append)
    bus.open_mailbox("a", 10)
    first, second = await two_receivers(bus)
    one = message("m1")
    assert bus.post([one]) == []  # handed to the first receiver
    first.cancel()  # ... which gives up in the same loop turn
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, WAIT) is one
    assert returned == [one]  # the runtime is told (it keeps the message durable meanwhile)
    assert bus.pending("a") == 0
    two = message("m2")
    bus.post([two])
    assert await asyncio.wait_for(bus.take("a", WAIT), WAIT) is two
    bus.close()


async def test_a_message_given_back_past_its_ttl_expires_instead() -> None:
    """A message given back after its TTL ran out is not handed to the waiting receiver:
    it expires into the runtime's hands."""
    expired: list[AgentMessage] = []
    gone = asyncio.Event()

    def on_expired(expiring: AgentMessage) -> None:
        expired.append(expiring)
        gone.set()

    bus = MemoryBus(on_expired=on_expired, on_returned=lambda message: None)
    bus.open_mailbox("a", 10)
    first, second = await two_receivers(bus)
    late = message("m1", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    bus.put_back(late)
    await asyncio.wait_for(gone.wait(), WAIT)
    assert expired == [late]
    assert not first.done()
    assert not second.done()
    bus.close()  # the receivers still waiting are told the runtime stopped
    for receiver in (first, second):
        with pytest.raises(RuntimeNotRunningError):
            await receiver
