"""The wire between the runtime and an agent's worker process: JSON frames over a socket.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON, always an
object. Three kinds travel, in both directions:

- a *request* ``{"op": ..., "id": n, ...}`` expects one *reply* ``{"re": n, "value": ...}``
  or ``{"re": n, "error": {"type", "message", "traceback"}}``;
- a *notice* ``{"op": ...}`` (no id) expects nothing.

The notice ``{"op": "cancel", "run": n}`` is the channel's own: it cancels the work the
receiving end is doing for its request ``n`` (the requester stopped waiting). When the
connection ends, all such work is cancelled.

:class:`FrameChannel` is the asyncio protocol both ends speak. A frame sent after a quiet
moment (:data:`QUIET_SECONDS` since the last write) leaves at once; while frames keep
coming, those sent during one loop iteration leave together in one ``write`` at its end, so
many small frames cost one system call, not many. Nothing
here is pickled: whatever arrives is parsed as JSON and checked before it is used (R-06).
"""

from __future__ import annotations

import asyncio
import asyncio.trsock
import inspect
import itertools
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

from miminions.kernel import errors
from miminions.kernel.errors import (
    FrameTooLargeError,
    MiminionsError,
    RemoteAgentError,
)
from miminions.kernel.jsonutil import make_encoder
from miminions.kernel.models import Task
from miminions.kernel.task_input import error_text
from miminions.kernel.validation import check_utf8, escape_non_utf8

logger = logging.getLogger("miminions.wire")

HEADER_BYTES = 4
#: The largest frame: a task result or input bigger than this fails with a clear error at
#: the sending end (the receiving runtime would need several times it in memory).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: A frame sent this long after the previous write leaves at once, not at the end of the
#: loop turn with the others.
QUIET_SECONDS = 0.001

Frame = dict[str, Any]
Handler = Callable[[Frame], Any]  # a reply's value, or an awaitable of it

_encode = make_encoder(allow_nan=False)


class ChannelClosedError(MiminionsError, ConnectionError):
    """The other end of a frame channel went away (its process exited or was killed)."""


class ProtocolViolationError(MiminionsError):
    """A frame that is not valid JSON, not an object, too large or nested too deep to
    decode arrived."""


def encode_frame(frame: Frame) -> bytes:
    """One frame: length header + compact JSON. Raises ValueError/TypeError for non-JSON,
    ValidationError for a string with no UTF-8 form or a frame too large."""
    text = _encode(frame)
    try:
        body = text.encode()
    except UnicodeEncodeError:
        check_utf8(text, "data sent between the runtime and a worker")  # raises, and says why
        raise
    if len(body) > MAX_FRAME_BYTES:
        raise FrameTooLargeError(
            f"{len(body):,} bytes of JSON exceed the {MAX_FRAME_BYTES:,} bytes a frame between "
            "the runtime and a worker may carry: return or send a reference (a file path, a "
            "key in the key-value store) instead"
        )
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def error_to_wire(error: BaseException) -> Frame:
    """What travels for an exception: its type name, message and formatted traceback. An
    error that came from the other side (a RemoteAgentError going back to the worker's
    ``on_error``) keeps the traceback of where it was raised, not of its way back."""
    remote = getattr(error, "remote_traceback", None)
    text = remote if isinstance(remote, str) and remote else None
    return {
        "type": escape_non_utf8(getattr(error, "remote_type", None) or type(error).__name__),
        "message": error_text(error),
        "traceback": escape_non_utf8(text or "".join(traceback.format_exception(error))),
    }


def _ends_loop(error: BaseException) -> bool:
    """Whether ``error``, raised by a request's work, ends the event loop that ran it
    (SystemExit, KeyboardInterrupt; a cancellation does not)."""
    return not isinstance(error, Exception | asyncio.CancelledError)


def error_from_wire(data: Any) -> RemoteAgentError:
    """Rebuild an error sent by :func:`error_to_wire` (checked; never trusted blindly: a
    string with no UTF-8 form, valid JSON as ``\\ud800``, is escaped, as it is stored)."""
    if not isinstance(data, dict):
        return RemoteAgentError("ProtocolViolationError", f"malformed error {data!r}")
    return RemoteAgentError(
        escape_non_utf8(str(data.get("type") or "Exception")),
        escape_non_utf8(str(data.get("message") or "")),
        escape_non_utf8(str(data.get("traceback") or "")),
    )


def kernel_error_from_wire(data: Any) -> BaseException:
    """Like :func:`error_from_wire`, but an error of miminions' own hierarchy comes back as
    that class (``QueueFullError``, ``WaitTimeoutError``, ...), so agent code in a worker
    catches what the docs name. Only classes of :mod:`miminions.kernel.errors` by exact
    name: nothing is imported or built from what arrives beyond that."""
    remote = error_from_wire(data)
    if remote.remote_type in ("SystemExit", "KeyboardInterrupt"):
        # agent code's sys.exit(), sent as what it raised: the agent's on_error gets it as
        # an inline agent's does
        return errors.AgentExitError(str(remote), remote.remote_type)
    cls = getattr(errors, remote.remote_type, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, MiminionsError)
        and cls.__module__ == errors.__name__
        and cls is not RemoteAgentError
    ):
        try:
            return cls(str(remote))
        except TypeError:  # a constructor with other arguments
            return remote
    return remote


def task_to_wire(task: Task) -> Frame:
    """A task as JSON: enums as their values, timestamps as UTC unix seconds, and fields
    that are None left out (every field of a task that may be None defaults to None, so
    :func:`task_from_wire` gets them back): a typical task's frame is half as long, and
    encoding it is a part of every task a process agent runs."""
    fields = {key: value for key, value in task.__dict__.items() if value is not None}
    for key in ("created_at", "started_at", "completed_at"):
        value = fields.get(key)
        if value is not None:
            fields[key] = value.timestamp()
    fields["status"] = fields["status"].value
    return fields


def task_from_wire(data: Any) -> Task:
    """Rebuild (and validate) a task sent by :func:`task_to_wire`."""
    if not isinstance(data, dict):
        raise ProtocolViolationError(f"a task must be a JSON object, got {type(data).__name__}")
    fields = dict(data)
    for key in ("created_at", "started_at", "completed_at"):
        value = fields.get(key)
        if isinstance(value, (int, float)):
            fields[key] = datetime.fromtimestamp(value, UTC)
    return Task.model_validate(fields)


class FrameChannel(asyncio.Protocol):
    """One end of the wire (see the module docstring).

    ``handler`` is called with every request and notice; for a request, what it returns
    (or what its awaitable resolves to) is sent back as the reply, and what it raises as an
    error reply. ``on_lost`` is called once when the connection ends.
    """

    def __init__(
        self,
        handler: Handler,
        on_lost: Callable[[BaseException | None], None] | None = None,
        error_factory: Callable[[Any], BaseException] = error_from_wire,
        *,
        reply_too_large: str | None = None,
    ) -> None:
        self._handler = handler
        self._error_factory = error_factory
        # What a reply too large for a frame answers instead (None: the encoder's own
        # error, whose advice is for data the agent sends: results, states, messages).
        self._reply_too_large = reply_too_large
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closed_error: BaseException | None = None
        self._handling: dict[int, asyncio.Future[Any]] = {}  # work for requests, by id
        # Requests whose cancel the peer asked for: only those are answered "cancelled". Work
        # cancelled here for another reason (its loop is shutting down, as after a
        # SystemExit) gets no answer: the peer learns from the closed connection that it
        # never ended, rather than taking "cancelled" for the work's own outcome.
        self._cancel_asked: set[int] = set()
        # Work cancelled by this end with the error to answer instead (see cancel_work).
        self._cancel_answers: dict[int, BaseException] = {}
        self._loop_ending = False  # see cancelled_here
        self._loop = asyncio.get_running_loop()
        self._last_write = float("-inf")  # time.monotonic() of the last write
        # Replies that came for a requester being cancelled, until the loop's next turn.
        self._orphans: dict[int, Frame] = {}
        self.closed = self._loop.create_future()
        #: The other end answered a request with an error that ended its loop (its error
        #: says ``ends: true``, see :meth:`_reply_error`): it begins nothing more.
        self.peer_ending = False
        #: Ids of the requests that had no answer when the connection was lost, oldest first.
        self.unanswered: list[int] = []
        self._drained: asyncio.Future[None] | None = None  # see drain()

    # ------------------------------------------------------------------ sending
    def request(self, op: str, **payload: Any) -> asyncio.Future[Any]:
        """Send a request; the future resolves with the reply's value or raises its error."""
        return self.start_request(op, **payload)[1]

    def start_request(self, op: str, **payload: Any) -> tuple[int, asyncio.Future[Any]]:
        """Like :meth:`request`, also returning the request id (to send a cancel for it)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request_id = next(self._ids)
        if self._closed_error is not None:
            future.set_exception(self._lost_error())
            return request_id, future
        payload["op"] = op
        payload["id"] = request_id
        self._send(payload)
        self._pending[request_id] = future
        return request_id, future

    async def call(self, op: str, **payload: Any) -> Any:
        """A request whose cancellation cancels the work at the other end too."""
        request_id, reply = self.start_request(op, **payload)
        try:
            return await reply
        except asyncio.CancelledError:
            self.reclaim(request_id, reply).add_done_callback(retrieve)
            self.notify("cancel", run=request_id)
            raise

    def reclaim(self, request_id: int, reply: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """The outcome of a request whose requester was cancelled while awaiting ``reply``
        (which cancelled ``reply``): ``reply`` itself if it had settled first, else a new
        future settled by the reply still to come, or by the one that came while the
        requester was being cancelled. Call it as the cancellation reaches the requester.

        This is how a requester that gives up still sees what the other end did (waits
        for it, hands back what it brought) without awaiting through ``asyncio.shield``,
        which would cost every reply an extra turn of the loop.
        """
        if not reply.cancelled():
            return reply
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        frame = self._orphans.pop(request_id, None)
        if frame is not None:
            self._settle(future, frame)
        elif request_id in self._pending:
            self._pending[request_id] = future
        else:
            future.set_exception(
                self._lost_error()
                if self._closed_error is not None
                else ChannelClosedError(f"request {request_id} has no reply to wait for")
            )
        return future

    def notify(self, op: str, **payload: Any) -> None:
        """Send a notice (no reply); silently dropped once the channel is closed."""
        if self._closed_error is None:
            payload["op"] = op
            self._send(payload)

    def flush_now(self) -> None:
        """Hand what is queued to the transport now instead of at the end of this loop turn."""
        self._write_out()

    async def drain(self) -> None:
        """Return once everything written so far has left this process (is in the
        socket): a write the transport had to buffer would be lost with the process.
        Returns at once if nothing is buffered, or the connection is lost."""
        transport = self._transport
        if transport is None or self._closed_error is not None:
            return
        if transport.get_write_buffer_size() == 0:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        # Below this the transport calls resume_writing: only once all of it is out.
        transport.set_write_buffer_limits(high=0)
        await asyncio.shield(self._drained)

    def resume_writing(self) -> None:
        """The transport's buffer emptied (with the limits :meth:`drain` sets)."""
        self._release_drain()

    def _release_drain(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def close(self) -> None:
        """Flush what is queued and close the connection."""
        self._write_out()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping queued frames."""
        if self._transport is not None:
            self._transport.abort()

    def _send(self, frame: Frame) -> None:
        self._out.append(encode_frame(frame))
        if not self._flush_scheduled:
            # A frame after a quiet moment leaves at once (latency); while frames keep coming,
            # those of one loop turn leave together at its end (throughput).
            if time.monotonic() - self._last_write >= QUIET_SECONDS:
                self._write_out()
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write_out()

    def _write_out(self) -> None:
        if not self._out:
            return
        if self._transport is None or self._transport.is_closing():
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._transport.write(data)
        # time.monotonic, not the loop's clock: uvloop's moves in whole milliseconds
        self._last_write = time.monotonic()

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # A stream transport; not an isinstance check: uvloop's implement asyncio.Transport
        # without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Split the stream into frames and handle each."""
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        try:
            while end - start >= HEADER_BYTES:
                size = int.from_bytes(buffer[start : start + HEADER_BYTES], "big")
                if size > MAX_FRAME_BYTES:
                    raise ProtocolViolationError(f"frame length {size} exceeds the limit")
                if end - start - HEADER_BYTES < size:
                    break
                body = bytes(buffer[start + HEADER_BYTES : start + HEADER_BYTES + size])
                start += HEADER_BYTES + size
                self._dispatch(_decode(body))
        except ProtocolViolationError as exc:
            logger.error("closing a frame channel: %s", exc)
            del buffer[:]
            self._fail(exc)
            if self._transport is not None:
                self._transport.abort()
            return
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every pending request and tell the owner. When a write found the other
        end gone, what it sent before it went (a reply) is read first."""
        if isinstance(exc, BrokenPipeError | ConnectionResetError):
            self._read_what_is_left()
        self._fail(exc)

    def _read_what_is_left(self) -> None:
        """Read, and handle, what waits unread in the socket of a connection a failed
        write ended: the transport stops reading at once, and a reply sent just before the
        other end died would be lost with it (the task it ended taken for the one running
        when it died). Only on asyncio's own transport, whose socket stays open until
        this connection_lost returns."""
        transport = self._transport
        sock = None if transport is None else transport.get_extra_info("socket")
        if not isinstance(sock, asyncio.trsock.TransportSocket):
            return
        try:
            with sock.dup() as own:
                own.setblocking(False)
                while self._closed_error is None:
                    data = own.recv(1 << 16)
                    if not data:
                        return
                    self.data_received(data)
        except OSError:  # nothing more to read (BlockingIOError), or it cannot be read
            return

    # ------------------------------------------------------------------ internals
    def _fail(self, exc: BaseException | None) -> None:
        if self._closed_error is not None:
            return
        self._closed_error = exc or ChannelClosedError("the connection was closed")
        pending, self._pending = self._pending, {}
        self.unanswered = list(pending)
        self._release_drain()
        for future in pending.values():
            if not future.done():
                future.set_exception(self._lost_error())
        handling, self._handling = self._handling, {}
        for work in handling.values():
            work.cancel()  # nobody is left to take its result
        if not self.closed.done():
            self.closed.set_result(None)
        if self._on_lost is not None:
            self._on_lost(exc)

    def _settle(self, future: asyncio.Future[Any], frame: Frame) -> None:
        if "error" in frame:
            error = frame["error"]
            if isinstance(error, dict) and error.get("ends") is True:
                self.peer_ending = True
            future.set_exception(self._error_factory(error))
        else:
            future.set_result(frame.get("value"))

    def _lost_error(self) -> ChannelClosedError:
        return ChannelClosedError(f"the other end is gone ({self._closed_error})")

    def _dispatch(self, frame: Frame) -> None:
        reply_to = frame.get("re")
        request_id = frame.get("id")
        # (Two checks, not a loop over them: this runs for every frame.)
        if reply_to is not None and type(reply_to) is not int:
            raise ProtocolViolationError(f"a frame's 're' is not an int: {frame!r:.200}")
        if request_id is not None and type(request_id) is not int:
            raise ProtocolViolationError(f"a frame's 'id' is not an int: {frame!r:.200}")
        if reply_to is not None:
            future = self._pending.pop(reply_to, None)
            if future is None:
                return
            if future.done():
                # Its requester gave up waiting. If that is happening right now, it may
                # still reclaim() the reply on this turn of the loop.
                self._orphans[reply_to] = frame
                asyncio.get_running_loop().call_soon(self._orphans.pop, reply_to, None)
                return
            self._settle(future, frame)
            return
        op = frame.get("op")
        if not isinstance(op, str):
            raise ProtocolViolationError(f"a frame without an op: {frame!r:.200}")
        if op == "cancel" and request_id is None:
            run = frame.get("run", -1)
            if type(run) is not int:
                raise ProtocolViolationError(f"a cancel's 'run' is not an int: {frame!r:.200}")
            work = self._handling.get(run)
            if work is not None:
                self._cancel_asked.add(run)
                work.cancel()
            return
        try:
            result = self._handler(frame)
        except Exception as exc:
            if request_id is not None:
                self._reply_error(request_id, exc)
            else:
                logger.exception("handling notice %r failed", frame["op"])
            return
        if request_id is None:
            if result is not None:
                asyncio.ensure_future(result).add_done_callback(self._notice_done)
        elif asyncio.isfuture(result):
            # Work already running on its own: its outcome is the reply. (A done callback:
            # an exception that ends the loop, SystemExit, is still reported from there.)
            self._handling[request_id] = result
            result.add_done_callback(partial(self._work_done, request_id))
        elif inspect.isawaitable(result):
            answer = asyncio.ensure_future(self._answer(request_id, result))
            self._handling[request_id] = answer
            # A cancel arriving before the answer's first step never lets it run: reply then.
            answer.add_done_callback(partial(self._answer_done, request_id, result))
        else:
            self._reply(request_id, result)

    async def _answer(self, request_id: int, work: Awaitable[Any]) -> None:
        """Await a request's work and reply in the same step as it ends (a done callback
        would hold the reply back for another turn of the loop)."""
        try:
            value = await work
        except asyncio.CancelledError as exc:
            self._handling.pop(request_id, None)
            if not self.cancelled_here(request_id):
                # Neither the requester nor this end cancelled the work: it raised
                # CancelledError itself (or its own code cancelled the task it runs in).
                # That is its error, and the requester, who waits for an answer, gets it.
                self._reply_error(request_id, exc)
                return
            self._reply_cancelled(request_id)
            raise
        except BaseException as exc:  # SystemExit too: the requester learns why, then it goes on
            self._handling.pop(request_id, None)
            self._forget_cancel(request_id)
            self._reply_error(request_id, exc)
            if isinstance(exc, Exception):
                return
            self._loop_ending = True  # the work still running is cancelled with the loop
            raise
        self._handling.pop(request_id, None)
        self._forget_cancel(request_id)
        self._reply(request_id, value)

    def _answer_done(
        self, request_id: int, work: Awaitable[Any], answer: asyncio.Future[Any]
    ) -> None:
        if self._handling.get(request_id) is not answer:
            return  # _answer ran and replied (it forgets itself on every way out)
        del self._handling[request_id]
        close = getattr(work, "close", None)  # a coroutine, or work that cleans up so
        if callable(close):
            close()  # never started
        self._reply_cancelled(request_id)

    def _work_done(self, request_id: int, work: asyncio.Future[Any]) -> None:
        self._handling.pop(request_id, None)
        if work.cancelled():
            self._reply_cancelled(request_id)
            return
        self._forget_cancel(request_id)
        if (error := work.exception()) is not None:
            self._reply_error(request_id, error)
        else:
            self._reply(request_id, work.result())

    @staticmethod
    def _notice_done(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            logger.error("handling a notice failed: %s", error)

    def _reply(self, request_id: int, value: Any) -> None:
        if self._closed_error is not None:
            return
        try:
            self._send({"re": request_id, "value": value})
        except FrameTooLargeError as exc:
            told = self._reply_too_large
            self._reply_error(request_id, exc if told is None else FrameTooLargeError(told))
        except (TypeError, ValueError) as exc:
            self._reply_error(request_id, exc)

    def cancel_work(self, request_id: int, answer: BaseException) -> bool:
        """Cancel the work this end does for request ``request_id`` and answer ``answer``
        (an error) for it, whether its work had begun or not; False if there is no such
        work (it has ended: its reply has been sent, or never will be)."""
        work = self._handling.get(request_id)
        if work is None or work.done():
            return False
        self._cancel_answers[request_id] = answer
        work.cancel()
        return True

    def cancelled_here(self, request_id: int) -> bool:
        """Whether the work of request ``request_id``, if cancelled, was cancelled by the
        channel's side of things: the peer asked (a ``cancel`` notice), this end gave it
        up (:meth:`cancel_work`), the connection is gone, or a loop-ending error of other
        work ends this end's loop. Otherwise a CancelledError out of the work is its own
        doing (its code raised it, or cancelled the task it runs in)."""
        return (
            request_id in self._cancel_asked
            or request_id in self._cancel_answers
            or self._closed_error is not None
            or self._loop_ending
        )

    def cancel_asked(self, request_id: int) -> bool:
        """Whether the peer asked to cancel the work of request ``request_id`` (a
        ``cancel`` notice for it was read)."""
        return request_id in self._cancel_asked

    def _reply_cancelled(self, request_id: int) -> None:
        """Answer "cancelled", if the peer asked for that (see ``_cancel_asked``), or the
        answer :meth:`cancel_work` was given."""
        answer = self._cancel_answers.pop(request_id, None) if self._cancel_answers else None
        if answer is not None:
            self._cancel_asked.discard(request_id)
            self._reply_error(request_id, answer)
            return
        if request_id in self._cancel_asked:
            self._cancel_asked.discard(request_id)
            self._reply_error(request_id, asyncio.CancelledError("the handler was cancelled"))

    def _forget_cancel(self, request_id: int) -> None:
        """The work ended some other way than by the cancel the peer may have asked for."""
        if self._cancel_asked:
            self._cancel_asked.discard(request_id)
        if self._cancel_answers:
            self._cancel_answers.pop(request_id, None)

    def _reply_error(self, request_id: int, error: BaseException) -> None:
        if self._closed_error is not None:
            return
        try:
            data = error_to_wire(error)
            if _ends_loop(error):
                # nothing sent after the request this answers begins: the peer must not
                # blame a later request for this end (``peer_ending``)
                data["ends"] = True
            self._send({"re": request_id, "error": data})
        except Exception as exc:
            # an error whose text cannot travel (far too big, or its traceback cannot be
            # made): its type must, or the request would wait for an answer forever
            logger.error("sending an error reply failed (%s): %r", exc, error)
            summary = {"type": type(error).__name__, "message": "", "traceback": ""}
            self._send({"re": request_id, "error": summary})


def retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a settled request nobody waits for any more as seen (no "never
    retrieved" warning); for ``add_done_callback``."""
    if future.done() and not future.cancelled():
        future.exception()


def _decode(body: bytes) -> Frame:
    try:
        frame = json.loads(body)
    except ValueError as exc:
        raise ProtocolViolationError(f"a frame is not JSON: {exc}") from None
    except RecursionError:  # nested deeper than this interpreter decodes (a peer may go deeper)
        raise ProtocolViolationError("a frame nests too deep to decode") from None
    if not isinstance(frame, dict):
        raise ProtocolViolationError(f"a frame must be a JSON object, got {type(frame).__name__}")
    return frame


__all__ = [
    "ChannelClosedError",
    "FrameChannel",
    "FrameTooLargeError",
    "ProtocolViolationError",
    "encode_frame",
    "error_from_wire",
    "error_to_wire",
    "retrieve",
    "task_from_wire",
    "task_to_wire",
]
