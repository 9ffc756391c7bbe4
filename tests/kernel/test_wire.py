"""The frame channel between the runtime and a worker: requests, replies, cancellation and
the reply of a request whose requester gave up (two channels over a socket pair)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from miminions.kernel import wire
from miminions.kernel.errors import NotFoundError, RemoteAgentError
from miminions.kernel.models import Task
from miminions.kernel.wire import (
    ChannelClosedError,
    FrameChannel,
    encode_frame,
    task_from_wire,
    task_to_wire,
)

WAIT = 5.0


@dataclass
class Server:
    """The answering end: ``echo`` replies at once, ``slow`` waits for ``release``."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def handle(self, frame: dict[str, Any]) -> Any:
        if frame["op"] == "echo":
            return frame["value"]
        if frame["op"] == "missing":
            raise NotFoundError("no such thing")
        if frame["op"] == "slow":
            return self._slow(frame["value"])
        if frame["op"] == "selfcancel":
            return self._selfcancel()
        if frame["op"] == "cancelself":
            return self._cancelself()
        raise AssertionError(frame)

    async def _selfcancel(self) -> None:
        raise asyncio.CancelledError  # nobody cancelled it

    async def _cancelself(self) -> None:
        this = asyncio.current_task()
        assert this is not None
        this.cancel()  # its own doing: neither end of the channel asked
        await asyncio.sleep(0)

    async def _slow(self, value: Any) -> Any:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return value


@dataclass
class Pair:
    client: FrameChannel
    server: FrameChannel
    answering: Server


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    answering = Server()
    _, client = await loop.create_connection(lambda: FrameChannel(_no_requests), sock=a)
    _, server = await loop.create_connection(lambda: FrameChannel(answering.handle), sock=b)
    yield Pair(client, server, answering)
    client.close()
    server.close()
    await asyncio.wait_for(asyncio.gather(client.closed, server.closed), WAIT)


def _no_requests(frame: dict[str, Any]) -> None:
    raise AssertionError(f"the client got a request: {frame}")


async def test_request_gets_its_reply_or_error(pair: Pair) -> None:
    assert await asyncio.wait_for(pair.client.request("echo", value={"a": [1, 2]}), WAIT) == {
        "a": [1, 2]
    }
    with pytest.raises(RemoteAgentError, match="no such thing") as info:
        await asyncio.wait_for(pair.client.request("missing"), WAIT)
    assert info.value.remote_type == "NotFoundError"


@pytest.mark.parametrize("op", ["selfcancel", "cancelself"])
async def test_work_raising_cancelled_error_itself_is_answered_with_that_error(
    pair: Pair, op: str
) -> None:
    """Work that raises CancelledError while neither end of the channel cancelled it (it
    raised it, or cancelled the task it runs in) answers that error: its requester waited
    for an answer for good."""
    with pytest.raises(RemoteAgentError) as info:
        await asyncio.wait_for(pair.client.request(op), WAIT)
    assert info.value.remote_type == "CancelledError"
    assert pair.server._handling == {}


async def test_cancelling_a_call_cancels_the_work_at_the_other_end(pair: Pair) -> None:
    call = asyncio.ensure_future(pair.client.call("slow", value=1))
    await asyncio.wait_for(pair.answering.started.wait(), WAIT)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(pair.answering.cancelled.wait(), WAIT)


async def _cancelled_requester(
    channel: FrameChannel, op: str, value: Any
) -> tuple[asyncio.Task[Any], int, asyncio.Future[Any], asyncio.Future[asyncio.Future[Any]]]:
    """A task awaiting a request that reclaims the reply's outcome once it is cancelled."""
    request_id, reply = channel.start_request(op, value=value)
    reclaimed: asyncio.Future[asyncio.Future[Any]] = asyncio.get_running_loop().create_future()

    async def requester() -> Any:
        try:
            return await reply
        except asyncio.CancelledError:
            reclaimed.set_result(channel.reclaim(request_id, reply))
            raise

    task = asyncio.ensure_future(requester())
    await asyncio.sleep(0)  # the task now awaits the reply
    return task, request_id, reply, reclaimed


async def test_a_reply_arriving_while_its_requester_is_cancelled_is_reclaimed(pair: Pair) -> None:
    """The reply comes in the same turn of the loop as the cancellation: not lost."""
    task, request_id, reply, reclaimed = await _cancelled_requester(pair.client, "echo", 0)
    task.cancel()  # cancels the reply future with it
    assert reply.cancelled()
    pair.client.data_received(encode_frame({"re": request_id, "value": "late"}))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(reclaimed.result(), WAIT) == "late"


async def test_a_reply_coming_after_the_cancellation_settles_the_reclaimed_future(
    pair: Pair,
) -> None:
    task, _, _, reclaimed = await _cancelled_requester(pair.client, "slow", "done")
    await asyncio.wait_for(pair.answering.started.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    outcome = reclaimed.result()
    assert not outcome.done()
    pair.answering.release.set()  # no cancel notice was sent: the work finishes
    assert await asyncio.wait_for(outcome, WAIT) == "done"


async def test_a_reply_that_settled_first_is_its_own_outcome(pair: Pair) -> None:
    request_id, reply = pair.client.start_request("echo", value="first")
    assert await asyncio.wait_for(asyncio.shield(reply), WAIT) == "first"
    assert pair.client.reclaim(request_id, reply) is reply


async def test_reclaiming_after_the_connection_is_lost_fails_clearly(pair: Pair) -> None:
    task, _, _, reclaimed = await _cancelled_requester(pair.client, "slow", 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pair.server.abort()
    await asyncio.wait_for(pair.client.closed, WAIT)
    with pytest.raises(ChannelClosedError):
        await asyncio.wait_for(reclaimed.result(), WAIT)


class CapturingTransport(asyncio.Transport):
    """Keeps what a channel writes, decoded, and says when something came."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[dict[str, Any]] = []
        self.wrote = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        while data:
            size = int.from_bytes(data[:4], "big")
            self.frames.append(json.loads(data[4 : 4 + size]))
            data = data[4 + size :]
        self.wrote.set()

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def test_a_request_cancelled_before_its_work_starts_is_answered() -> None:
    """A request and its cancel read together: the work never runs, the requester is told
    it was cancelled, and nothing is left behind."""
    answering = Server()
    channel = FrameChannel(answering.handle)
    transport = CapturingTransport()
    channel.connection_made(transport)
    channel.data_received(
        encode_frame({"op": "slow", "id": 7, "value": 1}) + encode_frame({"op": "cancel", "run": 7})
    )
    await asyncio.wait_for(transport.wrote.wait(), WAIT)
    [reply] = transport.frames
    assert reply["re"] == 7
    assert reply["error"]["type"] == "CancelledError"
    assert not answering.started.is_set()
    assert channel._handling == {}


@pytest.mark.parametrize("started", [False, True], ids=["before-its-work-starts", "while-it-runs"])
async def test_work_cancelled_by_its_own_end_is_answered_with_the_error_given(
    started: bool,
) -> None:
    """cancel_work cancels a request's work and answers the error it was given, whether
    the work had started or not (a worker giving back a run it has not begun); work that
    has ended cannot be cancelled."""
    answering = Server()
    channel = FrameChannel(answering.handle)
    transport = CapturingTransport()
    channel.connection_made(transport)
    channel.data_received(encode_frame({"op": "slow", "id": 7, "value": 1}))
    if started:
        await asyncio.wait_for(answering.started.wait(), WAIT)
    assert channel.cancel_work(7, NotFoundError("taken back"))
    await asyncio.wait_for(transport.wrote.wait(), WAIT)
    [reply] = transport.frames
    assert reply["re"] == 7
    assert reply["error"]["type"] == "NotFoundError"
    assert reply["error"]["message"] == "taken back"
    assert answering.started.is_set() is started
    assert channel._handling == {}
    assert not channel.cancel_work(7, NotFoundError("again"))  # it has ended
    assert not channel.cancel_work(99, NotFoundError("never"))  # no such request


class AbortableTransport(CapturingTransport):
    """A capturing transport that records an abort."""

    aborted = False

    def abort(self) -> None:
        self.aborted = True


async def test_a_frame_nested_too_deep_closes_the_channel_cleanly() -> None:
    """A peer may nest a value deeper than this interpreter decodes (it raised its own
    recursion limit): the frame is a protocol violation that closes the channel, not an
    exception escaping into the event loop."""
    channel = FrameChannel(Server().handle)
    transport = AbortableTransport()
    channel.connection_made(transport)
    depth = 200_000
    body = ("[" * depth + "]" * depth).encode()
    channel.data_received(len(body).to_bytes(4, "big") + body)
    assert transport.aborted
    await asyncio.wait_for(channel.closed, WAIT)


@pytest.mark.parametrize(
    "frame",
    [b'{"re":[1]}', b'{"re":"1"}', b'{"op":"x","id":{}}', b'{"op":"cancel","run":[2]}'],
)
async def test_a_frame_with_ids_of_the_wrong_type_closes_the_channel_cleanly(
    frame: bytes,
) -> None:
    """A reply or request id that is not an int (an unhashable list, say) is a protocol
    violation that closes the channel, not a TypeError escaping into the event loop."""
    channel = FrameChannel(Server().handle)
    transport = AbortableTransport()
    channel.connection_made(transport)
    channel.data_received(len(frame).to_bytes(4, "big") + frame)
    assert transport.aborted
    await asyncio.wait_for(channel.closed, WAIT)


def test_every_task_field_that_may_be_none_defaults_to_none() -> None:
    """task_to_wire leaves None values out and the worker's model fills them back in:
    that is only right while no field that may be None has another default."""
    for name, info in Task.model_fields.items():
        if info.is_required() or info.default_factory is not None:
            continue
        try:
            Task.model_validate(
                {"task_id": "t", "name": "n", "created_at": datetime.now(UTC), name: None}
            )
        except pydantic.ValidationError:
            continue  # None is not a value of this field
        assert info.default is None, f"{name} may be None but defaults to {info.default!r}"


def test_a_task_travels_whole_with_its_none_fields_left_out() -> None:
    now = datetime.now(UTC)
    running = Task.model_validate(
        {
            "task_id": "t1",
            "name": "n",
            "created_at": now,
            "started_at": now,
            "status": "running",
            "assigned_agent_id": "a1",
            "input_data": {"x": [1, None]},
            "dependencies": ["t0"],
            "timeout_seconds": 2.5,
        }
    )
    wire = task_to_wire(running)
    assert None not in wire.values()
    assert wire["input_data"] == {"x": [1, None]}  # None inside a value stays
    back = task_from_wire(json.loads(json.dumps(wire)))
    assert back == running
    fresh = Task.model_validate({"task_id": "t2", "name": "n", "created_at": now})
    assert task_from_wire(json.loads(json.dumps(task_to_wire(fresh)))) == fresh


@pytest.mark.parametrize("told", [None, "ask for less at a time"])
async def test_a_reply_too_large_for_a_frame_says_what_the_channel_was_told(
    monkeypatch: pytest.MonkeyPatch, told: str | None
) -> None:
    """A reply too large for a frame is answered with FrameTooLargeError: the encoder's own
    advice (for data an agent sends: its result, its state) unless the channel was given
    what to say (the runtime's end, whose replies answer an agent's context calls: a task
    result once got advice about key prefixes)."""
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", 1000)
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    _, client = await loop.create_connection(lambda: FrameChannel(_no_requests), sock=a)
    _, server = await loop.create_connection(
        lambda: FrameChannel(lambda frame: "x" * 2000, reply_too_large=told), sock=b
    )
    try:
        with pytest.raises(RemoteAgentError) as info:
            await asyncio.wait_for(client.request("listing"), WAIT)
        assert info.value.remote_type == "FrameTooLargeError"
        assert str(info.value) == (told or str(info.value))
        if told is None:
            assert "return or send a reference" in str(info.value)
    finally:
        client.close()
        server.close()
        await asyncio.wait_for(asyncio.gather(client.closed, server.closed), WAIT)
