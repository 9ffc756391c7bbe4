"""Built-in message bus: per-agent mailboxes in the runtime's memory (F-06).

Each mailbox is a FIFO of letters; a ``take`` waiting on an empty mailbox is a future the
next ``post`` resolves directly, so delivery costs no polling and no extra loop turn. TTLs
are deadlines in one heap served by a single loop timer (shared with nothing else); a
paused recipient's deadlines are frozen (F-25). Messages expire into the runtime's
``message_expired`` handling (an event and a dead letter, F-28).

Process agents use the same mailboxes: their worker asks the runtime for the next message
over its socket, and the runtime takes it from here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from miminions.kernel.clock import Deadline, Deadlines
from miminions.kernel.errors import (
    NotFoundError,
    QueueFullError,
    RuntimeNotRunningError,
    WaitTimeoutError,
)
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.models import AgentMessage

if TYPE_CHECKING:
    from collections.abc import Callable

    from miminions.kernel.runtime import AgentRuntime


class _Letter(Deadline):
    """A message in a mailbox; also the deadline of its TTL."""

    __slots__ = ("bus", "gone", "message")

    def __init__(self, bus: MemoryBus, message: AgentMessage) -> None:
        super().__init__()
        self.bus = bus
        self.message = message
        self.gone = False  # taken or expired: skipped when reached

    def on_expiry(self) -> None:
        """The TTL ran out before anybody took the message."""
        self.bus._expire(self)


class _Mailbox:
    __slots__ = ("capacity", "count", "frozen", "letters", "waiters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.letters: deque[_Letter] = deque()
        self.count = 0  # letters not gone
        self.frozen = False  # its agent is paused: TTLs do not count
        self.waiters: deque[asyncio.Future[AgentMessage]] = deque()


class MemoryBus:
    """The built-in :class:`~miminions.kernel.interfaces.Bus`.

    ``on_expired`` and ``on_returned`` are ``runtime.messenger.message_expired`` and
    ``message_returned`` (see the Bus contract): both are required, since a bus that does
    not report a frozen TTL leaves a paused agent's stored messages to expire at a restart.
    """

    def __init__(
        self,
        on_expired: Callable[[AgentMessage], None],
        on_returned: Callable[[AgentMessage], None],
    ) -> None:
        self._on_returned = on_returned
        self._loop = asyncio.get_running_loop()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._replies: dict[str, asyncio.Future[AgentMessage]] = {}
        self._deadlines = Deadlines(self._loop)
        self._on_expired = on_expired
        self._closed = False

    def open_mailbox(self, agent_id: str, capacity: int) -> None:
        """Create the agent's mailbox (kept as it is when it exists)."""
        if agent_id not in self._mailboxes:
            self._mailboxes[agent_id] = _Mailbox(capacity)

    def _box(self, agent_id: str) -> _Mailbox:
        try:
            return self._mailboxes[agent_id]
        except KeyError:
            raise NotFoundError(f"no agent with id {agent_id!r} has a mailbox") from None

    def post(self, messages: list[AgentMessage]) -> list[AgentMessage]:
        """Deliver all of ``messages`` or none (a full mailbox raises QueueFullError);
        return those that wait in a mailbox."""
        if self._closed:
            raise RuntimeNotRunningError("the message bus is closed")
        if len(messages) == 1:
            # The common case, on the latency path: one message to a receiver waiting for
            # it. A receiver waits only at an empty mailbox (see put_back), so the message
            # overtakes none and needs no room.
            message = messages[0]
            box = self._box(message.recipient_id or "")
            if box.waiters and not box.frozen and _hand_over(box, message):
                return []
        wanted: dict[str, int] = {}
        for message in messages:
            to = message.recipient_id or ""  # None (the runtime) has no mailbox: NotFound
            wanted[to] = wanted.get(to, 0) + 1
        for agent_id, count in wanted.items():
            box = self._box(agent_id)
            free = box.capacity - box.count
            if count > free:
                raise QueueFullError(
                    f"the mailbox of agent {agent_id!r} is full ({box.count} of "
                    f"{box.capacity} messages waiting); nothing was sent — retry later or "
                    "raise ResourceLimits.message_queue_max_size"
                )
        queued = []
        for message in messages:
            box = self._mailboxes[message.recipient_id or ""]
            # A receiver waiting is handed the message directly, unless its agent is
            # paused: then the message waits in the mailbox (stored, its TTL frozen) like
            # any other until the agent resumes (see ``thaw``).
            if not box.frozen and _hand_over(box, message):
                continue
            queued.append(message)
            letter = _Letter(self, message)
            if len(box.letters) > 2 * box.count + _SLACK:
                _compact(box)
            box.letters.append(letter)
            box.count += 1
            self._start_ttl(box, letter)
        return queued

    def _start_ttl(self, box: _Mailbox, letter: _Letter, now: datetime | None = None) -> None:
        """Arm a letter's TTL: from ``expires_at``, or from what was left when its
        recipient paused (``ttl_remaining_seconds``: stored, so it survives a restart)."""
        message = letter.message
        if message.ttl_remaining_seconds is not None:
            ttl = message.ttl_remaining_seconds
        elif message.expires_at is not None:
            # the wall clock is read only for a letter with a deadline
            ttl = (message.expires_at - (now or datetime.now(UTC))).total_seconds()
        else:
            return
        self._deadlines.start(letter, max(ttl, 0.0))
        if box.frozen:
            self._freeze_letter(letter)

    async def take(self, agent_id: str, timeout_seconds: float | None) -> AgentMessage:
        """The oldest waiting message, waiting up to ``timeout_seconds`` for one."""
        box = self._box(agent_id)
        letter = self._next_letter(box)
        if letter is not None:
            return letter.message
        if self._closed:
            raise RuntimeNotRunningError("the message bus is closed")
        waiter: asyncio.Future[AgentMessage] = self._loop.create_future()
        box.waiters.append(waiter)
        try:
            if timeout_seconds is None:
                return await waiter
            async with asyncio.timeout(timeout_seconds):
                return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # handed over in the moment its receiver gave up: back in front (and, as it
                # was never stored on its way past, stored now)
                message = waiter.result()
                self.put_back(message)
                self._on_returned(message)
            raise
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                # handed over in the same loop turn as the timeout fired: it is delivered
                return waiter.result()
            raise WaitTimeoutError(
                f"no message for agent {agent_id!r} within {timeout_seconds} s"
            ) from None
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in box.waiters:
                box.waiters.remove(waiter)

    def _next_letter(self, box: _Mailbox) -> _Letter | None:
        """Take the oldest deliverable letter out of ``box`` (expiring due ones)."""
        while box.letters:
            letter = box.letters.popleft()
            if letter.gone:
                continue
            if letter.when is not None and letter.when <= self._loop.time():
                self._expire(letter)  # due, its timer has not fired yet: never deliver it
                continue
            letter.gone = True
            box.count -= 1
            self._deadlines.clear(letter)
            return letter
        return None

    def put_back(self, message: AgentMessage) -> None:
        """Return a taken message to the front of its mailbox (its receiver vanished
        before it got it), ignoring the capacity: it had its place already. A receiver
        still waiting there gets it at once: a mailbox with a waiting receiver stays empty."""
        box = self._mailboxes.get(message.recipient_id or "")
        if box is None or self._closed:
            return
        now = datetime.now(UTC)
        due = message.expires_at is not None and message.expires_at <= now
        if not box.frozen and not due and _hand_over(box, message):
            return  # another receiver still waits: it is next in line, so it gets it
        letter = _Letter(self, message)
        box.letters.appendleft(letter)
        box.count += 1
        self._start_ttl(box, letter, now)

    def pending(self, agent_id: str) -> int:
        """Messages waiting in the agent's mailbox."""
        return self._box(agent_id).count

    def expect_reply(self, correlation_id: str) -> asyncio.Future[AgentMessage]:
        """A future the reply with ``correlation_id`` resolves."""
        future: asyncio.Future[AgentMessage] = self._loop.create_future()
        self._replies[correlation_id] = future
        return future

    def forget_reply(self, correlation_id: str) -> None:
        """Nobody waits for this reply any more."""
        self._replies.pop(correlation_id, None)

    def resolve_reply(self, message: AgentMessage) -> bool:
        """Hand a reply to its waiting request; False when none waits."""
        future = self._replies.pop(message.correlation_id or "", None)
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def freeze(self, agent_id: str) -> None:
        """Stop the TTLs of the agent's messages (it is paused)."""
        box = self._box(agent_id)
        box.frozen = True
        for letter in box.letters:
            if not letter.gone:
                self._freeze_letter(letter)

    def _freeze_letter(self, letter: _Letter) -> None:
        if letter.when is None and letter.message.ttl_remaining_seconds is None:
            return  # no TTL
        self._deadlines.freeze(letter, "paused")
        remaining = letter.remaining
        if remaining is not None and letter.message.ttl_remaining_seconds != remaining:
            # what is left is what counts now, also for the stored copy (a restart)
            letter.message.ttl_remaining_seconds = remaining
            letter.message.expires_at = None
            self._on_returned(letter.message)

    def thaw(self, agent_id: str) -> None:
        """Let the TTLs of the agent's messages run again."""
        box = self._box(agent_id)
        box.frozen = False
        now = datetime.now(UTC)
        for letter in box.letters:
            if letter.gone:
                continue
            self._deadlines.thaw(letter, "paused")
            remaining = letter.message.ttl_remaining_seconds
            if remaining is not None:
                letter.message.ttl_remaining_seconds = None
                letter.message.expires_at = now + timedelta(seconds=remaining)
                self._on_returned(letter.message)
        # Receivers that waited through the pause get what arrived meanwhile, in order.
        while box.waiters:
            if box.waiters[0].done():
                box.waiters.popleft()
                continue
            waiting = self._next_letter(box)
            if waiting is None:
                break
            box.waiters.popleft().set_result(waiting.message)

    def close(self) -> None:
        """Stop expiring and wake waiting receivers with an error."""
        self._closed = True
        self._deadlines.close()
        for box in self._mailboxes.values():
            for waiter in box.waiters:
                if not waiter.done():
                    waiter.set_exception(RuntimeNotRunningError("the runtime stopped"))
            box.waiters.clear()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(RuntimeNotRunningError("the runtime stopped"))
        self._replies.clear()

    def _expire(self, letter: _Letter) -> None:
        if letter.gone:
            return
        letter.gone = True
        box = self._mailboxes.get(letter.message.recipient_id or "")
        if box is not None:
            box.count -= 1
        self._on_expired(letter.message)


@hookimpl(trylast=True)  # built-in: another bus plugin wins
def miminions_make_bus(runtime: AgentRuntime) -> MemoryBus:
    """Provide the built-in in-memory bus."""
    return MemoryBus(runtime.messenger.message_expired, runtime.messenger.message_returned)


#: Gone letters (taken or expired) a mailbox may hold beyond twice its waiting ones before
#: they are swept out: an agent that never receives must not keep expired messages for good.
_SLACK = 64


def _compact(box: _Mailbox) -> None:
    """Drop the letters that are gone (expired; taken ones leave from the front)."""
    box.letters = deque(letter for letter in box.letters if not letter.gone)


def _hand_over(box: _Mailbox, message: AgentMessage) -> bool:
    """Give ``message`` to the first receiver still waiting at ``box``; False if none."""
    while box.waiters:
        waiter = box.waiters.popleft()
        if not waiter.done():
            waiter.set_result(message)
            return True
    return False
