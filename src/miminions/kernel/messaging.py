"""Messages between agents: the rules (F-06). The bus plugin keeps the mailboxes.

The :class:`Messenger` checks and builds every message — recipients must be registered,
data must be JSON of at most :data:`MAX_PAYLOAD_BYTES`, a TTL must be positive — and
records MESSAGE_SENT / MESSAGE_RECEIVED / MESSAGE_EXPIRED. Ways to address:

- ``send`` to one id or several (multicast);
- ``broadcast`` to every running or paused agent but the sender;
- ``publish`` to the subscribers of a topic (declared at registration with ``topics=``,
  as a ``topics`` attribute of the agent class, or with ``context.subscribe``);
- ``request`` / ``reply``: the reply carries the request's id as its ``correlation_id``
  and goes straight to the waiting requester, not through a mailbox.

Messages to a stopped agent wait in its mailbox until it starts again or they expire.
Mailboxes are durable: each posted message is stored (meta key ``mailbox:<id>``) with the
next group commit and removed once received or expired, so undelivered messages come back
when a runtime on the same database registers their recipient again.
Agents reach these calls through their context; process agents through their worker's
socket, with the same operations (:meth:`Messenger.handle`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from miminions.kernel.errors import (
    InvalidStateError,
    MessageTooLargeError,
    ValidationError,
    WaitTimeoutError,
    shown,
)
from miminions.kernel.ids import time_ordered_id
from miminions.kernel.interfaces import Bus
from miminions.kernel.jsonutil import copy_json
from miminions.kernel.models import (
    AgentMessage,
    AgentStatus,
    DeadLetter,
    EventType,
    JSONObject,
    Severity,
    fast_construct,
    message_to_json,
)
from miminions.kernel.task_input import to_json_value
from miminions.kernel.tracing import Carrier, check_carrier
from miminions.kernel.validation import MAX_NAME, check_name, check_seconds

if TYPE_CHECKING:
    from miminions.kernel.runtime import AgentRuntime

MAILBOX_PREFIX = "mailbox:"
#: The field of a stored message that gives its place in its mailbox (see Messenger._keep).
_ORDER = "mailbox_order"
_log = logging.getLogger("miminions.messaging")
#: The largest message payload, as JSON text (R-04).
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
#: What a reply's default message type adds to its request's.
REPLY_SUFFIX = ".reply"
_LATENCY_SAMPLES = 1000


def new_message_id() -> str:
    """A new message id: unique and roughly time-ordered (see :mod:`miminions.kernel.ids`)."""
    return time_ordered_id("m")


class PendingReply:
    """The wait for a request's reply (see :meth:`Messenger.begin_request`): await it, or
    ``close()`` it to give the reply up without waiting (one left unawaited would stay
    expected for good, and take the reply from the requester's mailbox)."""

    def __init__(
        self, wait: Coroutine[Any, Any, AgentMessage], give_up: Callable[[], None]
    ) -> None:
        self._wait = wait
        self._give_up = give_up
        self._started = False

    def __await__(self) -> Generator[Any, None, AgentMessage]:
        self._started = True
        return self._wait.__await__()

    def close(self) -> None:
        """Give the reply up (nothing happens once the wait began: it cleans up itself)."""
        if not self._started:
            self._started = True
            self._wait.close()
            self._give_up()


class Messenger:
    """The runtime's messaging front door (see the module docstring)."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self._rt = runtime
        self._bus: Bus | None = None
        self.topics: dict[str, set[str]] = {}
        self.sent = 0
        self.delivered = 0
        self.expired = 0
        self.latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        # By recipient, from earlier runs, with their places (see _keep).
        self._stored: dict[str, list[tuple[int, AgentMessage]]] = {}
        # The messages with a stored copy (to remove later), and their places.
        self._kept: dict[str, int] = {}
        # ids of messages taken, then returned to their mailbox before the agent's code got
        # them: their next receipt is a redelivery
        self._returned: set[str] = set()
        # Where a stored message goes in its mailbox when read back by a later run: sent
        # ones after every other (counting up), ones put back to the front before every
        # other (counting down). The wall clock cannot tell (it may step back).
        self._last_order = 0
        self._first_order = 0

    @property
    def bus(self) -> Bus:
        """The bus plugin's object."""
        if self._bus is None:
            raise ValidationError("the runtime has no message bus (it is not started)")
        return self._bus

    def attach(self, bus: Bus) -> None:
        """Use ``bus`` (called once at start)."""
        self._bus = bus

    async def load(self) -> None:
        """Read back the messages earlier runs left undelivered (F-28: nothing dropped)."""
        stored = await self._rt.store.load_meta_prefix(MAILBOX_PREFIX)
        ordered: list[tuple[int, AgentMessage]] = []
        for key, value in stored.items():
            try:
                fields = dict(value)
                order = fields.pop(_ORDER, 0)  # (none: stored by an older version)
                if isinstance(order, bool) or not isinstance(order, int):
                    raise ValueError(f"its {_ORDER!r} is not an int: {order!r}")
                ordered.append((order, AgentMessage.model_validate(fields)))
            except (TypeError, ValueError) as exc:
                _log.error("ignoring unreadable stored message %s: %s", key, exc)
        ordered.sort(key=lambda item: (item[0], item[1].created_at, item[1].message_id))
        if ordered:
            self._first_order = min(0, ordered[0][0])
            self._last_order = max(0, ordered[-1][0])
        for order, message in ordered:
            if message.recipient_id is not None:
                self._stored.setdefault(message.recipient_id, []).append((order, message))

    # ------------------------------------------------------------------ agents
    def agent_registered(self, agent_id: str, topics: Iterable[str]) -> None:
        """Give a registered agent its mailbox (with what earlier runs left in it) and its
        declared topic subscriptions."""
        bus = self.bus
        bus.open_mailbox(agent_id, self._rt.config.limits.message_queue_max_size)
        for order, message in reversed(self._stored.pop(agent_id, [])):
            bus.put_back(message)  # in front, oldest first; they had their place already
            self._kept[message.message_id] = order  # stored by an earlier run
        for topic in topics:
            self.subscribe(agent_id, topic)

    def subscribe(self, agent_id: str, topic: str) -> None:
        """Deliver messages published on ``topic`` to the agent."""
        check_name(topic, "topic")
        self.topics.setdefault(topic, set()).add(agent_id)

    def unsubscribe(self, agent_id: str, topic: str) -> None:
        """Stop delivering ``topic`` to the agent."""
        check_name(topic, "topic")
        members = self.topics.get(topic)
        if members is not None:
            members.discard(agent_id)

    # ------------------------------------------------------------------ sending
    def send(
        self,
        sender: str | None,
        recipients: str | Sequence[str],
        message_type: str,
        data: Any = None,
        ttl_seconds: float | None = None,
        trace_context: Carrier | None = None,
    ) -> list[str]:
        """Send to one agent or several; returns the message ids, one per recipient. Every
        message of these methods carries ``trace_context`` (the sender's trace)."""
        if isinstance(recipients, str):
            ids = [recipients]
        elif isinstance(recipients, bytes | bytearray):
            raise ValidationError("recipients must be agent ids (strings), got bytes: decode them")
        elif isinstance(recipients, Iterable):
            ids = list(recipients)
            if not all(isinstance(agent_id, str) for agent_id in ids):
                raise ValidationError(
                    f"recipients must be agent ids (strings), got {shown(recipients)}"
                )
        else:
            raise ValidationError(
                f"recipients must be an agent id or a list of agent ids, got {shown(recipients)}"
            )
        if not ids:
            raise ValidationError("recipients must name at least one agent id")
        for agent_id in ids:
            self._rt.agent_book.get(agent_id)  # NotFoundError names the unknown id
        return self._post(
            self._build(sender, ids, message_type, data, ttl_seconds, trace_context=trace_context)
        )

    def send_to_group(
        self,
        sender: str | None,
        group: str,
        message_type: str,
        data: Any = None,
        ttl: float | None = None,
        trace_context: Carrier | None = None,
    ) -> list[str]:
        """Send to every agent of ``group`` (the sender too, if it belongs to it)."""
        check_name(group, "group")
        ids = [slot.agent_id for slot in self._rt.agent_book.in_group(group)]
        return self._post(
            self._build(sender, ids, message_type, data, ttl, trace_context=trace_context)
        )

    async def requeue(self, letter: DeadLetter, ttl_seconds: float | None) -> str:
        """Send a dead-lettered message again (a new id, the TTL given)."""
        if letter.requeued_at is not None:
            raise InvalidStateError(f"dead letter {letter.dead_letter_id!r} was re-queued already")
        old = AgentMessage.model_validate(letter.payload)
        if old.recipient_id is None:
            raise InvalidStateError("a reply to the runtime cannot be sent again")
        (message_id,) = self.send(
            old.sender_id,
            old.recipient_id,
            old.message_type,
            old.data,
            ttl_seconds,
            trace_context=old.trace_context,
        )
        letter.requeued_at = datetime.now(UTC)
        await self._rt.store.put_dead_letter(letter)
        return message_id

    def broadcast(
        self,
        sender: str | None,
        message_type: str,
        data: Any = None,
        ttl: float | None = None,
        trace_context: Carrier | None = None,
    ) -> list[str]:
        """Send to every running or paused agent except the sender."""
        ids = [
            slot.agent_id
            for slot in self._rt.agent_book.slots.values()
            if slot.status in (AgentStatus.RUNNING, AgentStatus.PAUSED) and slot.agent_id != sender
        ]
        # Built (so checked) even for nobody: bad arguments raise whoever is listening.
        messages = self._build(sender, ids, message_type, data, ttl, trace_context=trace_context)
        return self._post(messages) if messages else []

    def publish(
        self,
        sender: str | None,
        topic: str,
        message_type: str,
        data: Any = None,
        ttl: float | None = None,
        trace_context: Carrier | None = None,
    ) -> list[str]:
        """Send to the subscribers of ``topic`` (not to the sender itself)."""
        check_name(topic, "topic")
        ids = sorted(a for a in self.topics.get(topic, ()) if a != sender)
        messages = self._build(
            sender, ids, message_type, data, ttl, topic=topic, trace_context=trace_context
        )
        return self._post(messages) if messages else []

    def begin_request(
        self,
        sender: str | None,
        recipient: str,
        message_type: str,
        data: Any = None,
        timeout_seconds: float | None = 30.0,
        trace_context: Carrier | None = None,
    ) -> PendingReply:
        """Send a request, and return the wait for the reply matched by correlation id (the
        request expires with the wait: ``timeout_seconds`` is also its TTL). The request is
        checked and posted now, in the order of the sender's other calls (a send made
        after it comes after it); the wait must be awaited or closed (until then the
        reply is expected)."""
        timeout_seconds = check_seconds(timeout_seconds, positive=True)
        self._rt.agent_book.get(recipient)
        if isinstance(message_type, str) and len(message_type) > MAX_NAME - len(REPLY_SUFFIX):
            raise ValidationError(
                f"a request's message_type must be at most {MAX_NAME - len(REPLY_SUFFIX)} "
                f"characters: its default reply type adds {REPLY_SUFFIX!r}"
            )
        (message,) = self._build(
            sender, [recipient], message_type, data, timeout_seconds, trace_context=trace_context
        )
        message.correlation_id = message.message_id
        reply = self.bus.expect_reply(message.message_id)
        try:
            self._post([message])
        except BaseException:
            self.bus.forget_reply(message.message_id)
            raise
        return PendingReply(
            self._reply_to(sender, message, reply, timeout_seconds),
            partial(self._gave_up_before_waiting, sender, message.message_id, reply),
        )

    def _gave_up_before_waiting(
        self, sender: str | None, message_id: str, reply: Awaitable[AgentMessage]
    ) -> None:
        """A request's wait was dropped before it began: its reply is no longer expected,
        and one that came already goes to the requester's mailbox."""
        self.bus.forget_reply(message_id)
        self._keep_reply_of_one_who_gave_up(sender, reply)

    def _keep_reply_of_one_who_gave_up(
        self, sender: str | None, reply: Awaitable[AgentMessage]
    ) -> None:
        """A reply that came as its requesting agent gave up goes to that agent's mailbox,
        as one that comes after (it is not lost)."""
        if (
            sender is not None
            and isinstance(reply, asyncio.Future)
            and reply.done()
            and not reply.cancelled()
        ):
            self.put_back(reply.result())

    async def _reply_to(
        self,
        sender: str | None,
        message: AgentMessage,
        reply: Awaitable[AgentMessage],
        timeout_seconds: float | None,
    ) -> AgentMessage:
        """Wait for the reply to ``message``, posted by :meth:`begin_request`."""
        message_type, recipient = message.message_type, message.recipient_id
        try:
            if timeout_seconds is None:
                return await reply
            async with asyncio.timeout(timeout_seconds):
                return await reply
        except asyncio.CancelledError:
            # (A reply that came in the same loop turn as the requester gave up is kept.)
            self._keep_reply_of_one_who_gave_up(sender, reply)
            raise
        except TimeoutError:
            if isinstance(reply, asyncio.Future) and reply.done() and not reply.cancelled():
                # the reply came in the same loop turn as the timeout fired: it is delivered
                delivered: AgentMessage = reply.result()
                return delivered
            raise WaitTimeoutError(
                f"no reply to {message_type!r} from agent {recipient!r} within {timeout_seconds} s"
            ) from None
        finally:
            self.bus.forget_reply(message.message_id)

    def reply(
        self,
        sender: str | None,
        request: AgentMessage,
        data: Any = None,
        message_type: str | None = None,
        trace_context: Carrier | None = None,
    ) -> str:
        """Answer ``request``: its requester's ``request`` returns this message."""
        if request.correlation_id is None or request.is_reply:
            raise ValidationError(
                f"message {request.message_id!r} is not a request (send it with request())"
            )
        recipient = request.sender_id
        kind = message_type or request.message_type + REPLY_SUFFIX
        # recipient None: the runtime asked (as a sender, None stands for the runtime too)
        (message,) = self._build(sender, [recipient], kind, data, None, trace_context=trace_context)
        message.correlation_id = request.correlation_id
        message.is_reply = True
        if self.bus.resolve_reply(message):
            self._sent([message])
            self._received(message)
            return message.message_id
        if recipient is None:  # the runtime asked and gave up waiting
            raise WaitTimeoutError(f"request {request.message_id!r} is no longer waited for")
        return self._post([message])[0]

    # ------------------------------------------------------------------ receiving
    async def receive(self, agent_id: str, timeout_seconds: float | None) -> AgentMessage:
        """The agent's next message, waiting up to ``timeout_seconds`` (None: forever)."""
        timeout_seconds = check_seconds(timeout_seconds)
        message = await self.bus.take(agent_id, timeout_seconds)
        self._received(message)
        self._forget_stored(message)
        return message

    def put_back(self, message: AgentMessage) -> None:
        """A received message did not reach the agent's code after all (its worker went, or
        it paused): back to the front of its mailbox, stored again (its stored copy went
        when it was taken). It no longer counts as delivered; its next receipt does, and its
        MESSAGE_RECEIVED event then says ``redelivered``."""
        self.bus.put_back(message)
        self.message_returned(message)
        if self.delivered > 0:
            self.delivered -= 1
        self._returned.add(message.message_id)

    def message_returned(self, message: AgentMessage) -> None:
        """A message is back in a mailbox after all, or changed there (its time to live
        frozen or thawed): keep it durable (the bus calls this for one it put back or
        changed itself)."""
        self._keep(message, front=True)

    def message_expired(self, message: AgentMessage) -> None:
        """Called by the bus when a message's TTL ran out: event and dead letter (F-28)."""
        self.expired += 1
        self._returned.discard(message.message_id)
        self._forget_stored(message)
        self._rt.events.emit(
            EventType.MESSAGE_EXPIRED,
            severity=Severity.WARNING,
            agent_id=message.recipient_id,
            details={"message_id": message.message_id, "message_type": message.message_type},
        )
        letter = DeadLetter(
            dead_letter_id="message:" + message.message_id,
            kind="message",
            ref_id=message.message_id,
            reason="expired before its recipient received it",
            payload=message_to_json(message),
            created_at=datetime.now(UTC),
        )
        self._rt.task_book.record_dead_letter(letter)

    # ------------------------------------------------------------------ for hosts
    async def handle(self, agent_id: str, op: str, payload: dict[str, Any]) -> Any:
        """Carry out a messaging call an agent made through its context."""
        if op in IMMEDIATE_CALLS:
            return self.handle_now(agent_id, op, payload)
        if op == "receive":
            return await self.receive(agent_id, payload.get("timeout_seconds"))
        if op == "request":
            return await self.begin_call(agent_id, op, payload)
        raise ValidationError(f"unknown messaging call {op!r}")

    def begin_call(self, agent_id: str, op: str, payload: dict[str, Any]) -> Awaitable[Any]:
        """Start a messaging call an agent made (see :meth:`handle`): what must follow the
        order of the agent's calls is done now (a request is posted, as a send is), the
        rest is returned to be awaited."""
        if op != "request":
            return self.handle(agent_id, op, payload)
        return self.begin_request(
            agent_id,
            _arg(payload, "recipient"),
            _arg(payload, "message_type"),
            payload.get("data"),
            payload.get("timeout_seconds", 30.0),
            trace_context=check_carrier(payload.get("trace_context")),
        )

    def handle_now(self, agent_id: str, op: str, payload: dict[str, Any]) -> Any:
        """Carry out one of the :data:`IMMEDIATE_CALLS` an agent made (they never wait)."""
        get = partial(_arg, payload)
        # The agent's trace; it may come from a worker process, so it is checked.
        carrier = check_carrier(payload.get("trace_context"))
        if op == "send":
            return self.send(
                agent_id,
                get("recipients"),
                get("message_type"),
                get("data"),
                get("ttl_seconds"),
                trace_context=carrier,
            )
        if op == "send_to_group":
            return self.send_to_group(
                agent_id,
                get("group"),
                get("message_type"),
                get("data"),
                get("ttl_seconds"),
                trace_context=carrier,
            )
        if op == "broadcast":
            return self.broadcast(
                agent_id, get("message_type"), get("data"), get("ttl_seconds"), carrier
            )
        if op == "publish":
            return self.publish(
                agent_id,
                get("topic"),
                get("message_type"),
                get("data"),
                get("ttl_seconds"),
                trace_context=carrier,
            )
        if op == "subscribe":
            return self.subscribe(agent_id, get("topic"))
        if op == "unsubscribe":
            return self.unsubscribe(agent_id, get("topic"))
        if op == "return_message":
            # The agent took a message it could not handle after all (its receive was
            # cancelled as the message came, or it was paused): front of its mailbox again.
            message = get("message")
            if not isinstance(message, AgentMessage):
                message = AgentMessage.model_validate(message)
            if message.recipient_id != agent_id:
                raise ValidationError("an agent can only return messages sent to it")
            self.put_back(message)
            return None
        if op == "reply":
            request = get("request")
            if not isinstance(request, AgentMessage):
                request = AgentMessage.model_validate(request)
            return self.reply(
                agent_id, request, get("data"), get("message_type"), trace_context=carrier
            )
        raise ValidationError(f"unknown messaging call {op!r}")

    # ------------------------------------------------------------------ internals
    def _build(
        self,
        sender: str | None,
        recipients: Sequence[str | None],
        message_type: str,
        data: Any,
        ttl_seconds: float | None,
        *,
        topic: str | None = None,
        trace_context: Carrier | None = None,
    ) -> list[AgentMessage]:
        check_name(message_type, "message_type")
        data = _payload(data)
        ttl = check_seconds(ttl_seconds, "ttl_seconds", positive=True)
        messages = [
            fast_construct(
                AgentMessage,
                {
                    "message_id": new_message_id(),
                    "sender_id": sender,
                    "recipient_id": recipient,
                    "message_type": message_type,
                    # one copy per recipient: a receiver changing its data touches no other
                    "data": data if index == 0 else copy_json(data),
                    "topic": topic,
                    "correlation_id": None,
                    "is_reply": False,
                    "created_at": None,  # stamped below
                    "expires_at": None,
                    "ttl_remaining_seconds": None,
                    "trace_context": trace_context,
                },
            )
            for index, recipient in enumerate(recipients)
        ]
        # Stamped once made, as they leave for the bus: a delivery's latency (and a TTL)
        # counts from there, not from the sender's validation and copying.
        now = datetime.now(UTC)
        expires = None if ttl is None else now + timedelta(seconds=ttl)
        for message in messages:
            values = message.__dict__
            values["created_at"] = now
            values["expires_at"] = expires
        return messages

    def _post(self, messages: list[AgentMessage]) -> list[str]:
        queued = self.bus.post(messages)
        # A message handed straight to a waiting receiver is never stored: only those that
        # wait in a mailbox must survive a restart.
        for message in queued:
            self._keep(message)
        self._sent(messages)
        return [message.message_id for message in messages]

    def _keep(self, message: AgentMessage, *, front: bool = False) -> None:
        """Store a message that waits in a mailbox (so it survives a restart), with its
        place there: behind the others, or (``front``: put back) ahead of them. One stored
        already (its time to live changed) keeps its place."""
        order = self._kept.get(message.message_id)
        if order is None:
            if front:
                self._first_order = order = self._first_order - 1
            else:
                self._last_order = order = self._last_order + 1
            self._kept[message.message_id] = order
        stored = message_to_json(message)
        stored[_ORDER] = order
        self._rt.store.put_meta(MAILBOX_PREFIX + message.message_id, stored)

    def _forget_stored(self, message: AgentMessage) -> None:
        """Remove the stored copy of a message that left its mailbox, if it has one (one
        handed straight to a waiting receiver never had)."""
        if self._kept.pop(message.message_id, None) is not None:
            self._rt.store.delete_meta(MAILBOX_PREFIX + message.message_id)

    def _sent(self, messages: list[AgentMessage]) -> None:
        self.sent += len(messages)
        # The receiver may be waiting for these messages: it goes first, the log just after.
        # Their fields are taken now: a receiver may change the message it was handed.
        sent = [(m.sender_id, m.message_id, m.message_type, m.recipient_id) for m in messages]
        self._rt.events.emit_soon(_sent_events, sent, len(sent))

    def _received(self, message: AgentMessage) -> None:
        self.delivered += 1
        latency = (datetime.now(UTC) - message.created_at).total_seconds()
        redelivered = bool(self._returned) and message.message_id in self._returned
        if redelivered:
            # One sample per message: its first receipt gave it (as the event did to any
            # monitor counting them).
            self._returned.discard(message.message_id)
        else:
            self.latencies.append(latency)
        # After the receiver's handling, which is waiting for the message.
        receipt = (
            message.recipient_id,
            message.message_id,
            message.message_type,
            latency,
            redelivered,
        )
        self._rt.events.emit_soon(_received_events, receipt, 1)

    def latency_summary(self) -> tuple[float | None, float | None]:
        """Mean and p95 delivery latency (seconds) over recent messages."""
        samples = sorted(self.latencies)
        if not samples:
            return None, None
        p95 = samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)]
        return sum(samples) / len(samples), p95


def _sent_events(
    sent: list[tuple[str | None, str, str, str | None]],
) -> Iterator[tuple[EventType, str | None, JSONObject]]:
    """The MESSAGE_SENT events of messages sent, given as ``(sender_id, message_id,
    message_type, recipient_id)`` (see :meth:`EventLog.emit_soon`)."""
    for sender_id, message_id, message_type, recipient_id in sent:
        details: JSONObject = {
            "message_id": message_id,
            "message_type": message_type,
            "recipient_id": recipient_id,
        }
        yield EventType.MESSAGE_SENT, sender_id, details


def _received_events(
    receipt: tuple[str | None, str, str, float, bool],
) -> Iterator[tuple[EventType, str | None, JSONObject]]:
    """The MESSAGE_RECEIVED event of a receipt, ``(recipient_id, message_id, message_type,
    latency_seconds, redelivered)`` (see :meth:`EventLog.emit_soon`)."""
    recipient_id, message_id, message_type, latency, redelivered = receipt
    details: JSONObject = {
        "message_id": message_id,
        "message_type": message_type,
        "latency_seconds": latency,
    }
    if redelivered:
        details["redelivered"] = True
    yield EventType.MESSAGE_RECEIVED, recipient_id, details


def _arg(payload: dict[str, Any], name: str, default: Any = None) -> Any:
    """An argument of a call an agent made (checked where it is used)."""
    return payload.get(name, default)


def _payload(data: Any) -> Any:
    """An independent JSON copy of ``data``; too big, not JSON or not UTF-8 raises."""
    if data is None:
        return None
    return to_json_value(
        data, "message data", max_bytes=MAX_PAYLOAD_BYTES, too_large=MessageTooLargeError
    )


#: Messaging calls that never wait (:meth:`Messenger.handle_now` carries them out).
IMMEDIATE_CALLS = frozenset(
    {
        "send",
        "send_to_group",
        "broadcast",
        "publish",
        "subscribe",
        "unsubscribe",
        "return_message",
        "reply",
    }
)

__all__ = ["IMMEDIATE_CALLS", "MAX_PAYLOAD_BYTES", "Messenger", "new_message_id"]
