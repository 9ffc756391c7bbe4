"""What an agent is: :class:`BaseAgent`, :class:`AgentProtocol`, function agents, and the
:class:`AgentContext` every agent gets as ``self.context``.

Three ways to write an agent (F-22):

- subclass :class:`BaseAgent` and implement ``execute_task``;
- any class with an ``execute_task(task)`` method (it satisfies :class:`AgentProtocol`);
- a plain function ``async def fn(task, context) -> dict`` (or a sync ``def``).

Synchronous ``execute_task`` methods and hooks run in a worker thread so they never block the
runtime's loop. Agent classes are instantiated with no arguments; their registration
``config`` is ``self.context.config`` (``self.config`` on a BaseAgent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from miminions.kernel.agent_thread import current_agent_thread
from miminions.kernel.errors import (
    AgentExitError,
    InvalidStateError,
    MiminionsError,
    ValidationError,
)
from miminions.kernel.models import AgentMessage, JSONObject, Task, message_to_json
from miminions.kernel.task_input import error_text
from miminions.kernel.tracing import current_carrier, scope_carrier
from miminions.kernel.usage import check_usage
from miminions.kernel.validation import check_seconds

_T = TypeVar("_T")

#: The agent's context and the task whose code runs in this context (set by the agent's
#: runner for each task; the agent's thread and the calls it makes inherit it): a
#: checkpoint is that task's. (Other agents started from a task inherit it too: the
#: context tells whose it is.)
RUNNING_TASK: contextvars.ContextVar[tuple[AgentContext, Task] | None] = contextvars.ContextVar(
    "miminions_running_task", default=None
)


class ContextChannel(Protocol):
    """How a context reaches the runtime: implemented by each agent host."""

    async def safe_point(self) -> None:
        """Return at once, or wait here while the agent is paused."""
        ...

    def save_checkpoint(self, task_id: str, state: Any) -> Awaitable[None]:
        """Durably record ``state`` as the latest checkpoint of ``task_id``."""
        ...

    @property
    def stopping(self) -> bool:
        """True once the agent was asked to stop."""
        ...

    def report_usage(self, tokens: int, cost: float) -> None:
        """Add self-reported usage to the agent's (and its group's) totals."""
        ...

    def runtime_call(self, op: str, payload: dict[str, Any]) -> Awaitable[Any]:
        """Carry out a messaging call (``send``, ``receive``, ...) in the runtime."""
        ...


class AgentContext:
    """The agent's handle on the runtime: who it is, its config, checkpoints and pause points.

    Every ``await context.<call>`` is a *safe point*: when the agent has been paused, the call
    waits there until it is resumed, so a paused agent's task halts at its next context call.

    Synchronous agent code (a ``def`` that runs in the agent's thread) makes the same calls
    with :meth:`call_sync`: ``context.call_sync(context.kv.set("k", 1))``. The calls are
    carried out on the agent's own event loop whichever loop awaits them.
    """

    def __init__(
        self,
        *,
        agent_id: str,
        name: str,
        group: str | None,
        config: JSONObject,
        channel: ContextChannel,
    ) -> None:
        self.agent_id = agent_id
        self.name = name
        self.group = group
        self.config = config
        self.logger = logging.getLogger(f"miminions.agent.{name}")
        self.current_task: Task | None = None
        self.last_checkpoint: Any = None
        self._channel = channel
        # The start of the agent this context is of (a channel counting them): code of an
        # earlier start, still running in its thread, sees is_stopping for good.
        self._generation = getattr(channel, "generation", None)
        # The agent's loop: calls awaited on another one (asyncio.run in a sync agent's
        # thread) are carried out there (see on_loop).
        self._loop = _running_loop()
        #: The shared key-value store (see :class:`AgentKV`).
        self.kv = AgentKV(channel, self._loop)

    @property
    def is_stopping(self) -> bool:
        """True once the agent was asked to stop: finish or checkpoint the current task.
        Stays true for code of a start that was stopped, also once the agent started again
        (a sync task given up on, still running in its thread)."""
        channel = self._channel
        return channel.stopping or (
            self._generation is not None
            and getattr(channel, "generation", self._generation) != self._generation
        )

    def call_sync(self, call: Awaitable[_T], timeout_seconds: float | None = None) -> _T:
        """For synchronous agent code (a ``def`` in the agent's thread): carry out a context
        call, ``context.call_sync(context.checkpoint({"step": 3}))``, and return its result.

        The calling thread waits; the call runs on the agent's loop, a safe point as when
        awaited. Raises InvalidStateError on the agent's loop itself (``await`` it there),
        and TimeoutError after ``timeout_seconds`` (None: as long as it takes).
        """
        loop = self._loop
        try:
            if not inspect.isawaitable(call):
                raise ValidationError(
                    "call_sync() takes a context call, e.g. "
                    f"context.call_sync(context.kv.get('k')), got {type(call).__name__}"
                )
            timeout_seconds = check_seconds(timeout_seconds)
            if loop is None or _running_loop() is loop:
                raise InvalidStateError(
                    "call_sync() is for synchronous code in the agent's thread; on the "
                    "agent's event loop, await the call instead"
                )
        except MiminionsError:
            if inspect.iscoroutine(call):
                call.close()
            raise
        sync_call: _SyncCall[_T] = _SyncCall(self._orphaned)
        thread = current_agent_thread()
        # Counted as waiting before the loop gets the call: it may halt the agent there at
        # once, and its sync on_pause must then run in this wait (see wait_serving).
        with thread.waiting() if thread is not None else contextlib.nullcontext():
            try:
                loop.call_soon_threadsafe(sync_call.begin, call)
            except RuntimeError:  # the loop is closed
                if inspect.iscoroutine(call):
                    call.close()
                raise InvalidStateError("the agent's event loop has ended") from None
            return sync_call.wait(loop, timeout_seconds)

    def _orphaned(self, result: Any) -> None:
        """A call_sync call ended with ``result`` after its thread gave up on it: a message
        a receive got goes back to the mailbox (on the agent's loop)."""
        if isinstance(result, AgentMessage):
            giving_back = asyncio.ensure_future(
                self._channel.runtime_call("return_message", {"message": message_to_json(result)})
            )
            _ORPHANS.add(giving_back)
            giving_back.add_done_callback(_ORPHANS.discard)

    async def checkpoint(self, state: Any = None) -> None:
        """A safe point; with ``state``, also save it as the current task's checkpoint.

        The saved state is JSON. If the task is interrupted (crash, shutdown) and runs again,
        the next attempt finds it in ``context.last_checkpoint``.
        """
        if (loop := _off_loop(self._loop)) is not None:
            return await on_loop(loop, self.checkpoint(state))
        running = RUNNING_TASK.get()
        task = running[1] if running is not None and running[0] is self else self.current_task
        if task is not None and task is not self.current_task:
            # Synchronous code of a task given up on (timed out, cancelled), still running
            # in the agent's thread: the agent has moved on; this is not its checkpoint.
            raise InvalidStateError(
                f"task {task.task_id} has ended (timed out, cancelled or given back) while "
                "this code went on: its checkpoint is not saved"
            )
        await self._channel.safe_point()
        if state is None:
            return
        task = self.current_task
        if task is None:
            raise InvalidStateError("checkpoint(state) is only possible while running a task")
        await self._channel.save_checkpoint(task.task_id, state)
        self.last_checkpoint = state

    async def report_usage(self, tokens: int = 0, cost: float = 0.0) -> None:
        """Report what the agent consumed (LLM tokens, money), and a safe point.

        Totals count against the agent's ``usage_budget`` and its group's budget; when a
        budget is spent the runtime pauses the agent or the group (F-27), and the task halts
        at its next safe point.
        """
        if (loop := _off_loop(self._loop)) is not None:
            return await on_loop(loop, self.report_usage(tokens, cost))
        tokens, cost = check_usage(tokens, cost)
        self._channel.report_usage(tokens, cost)
        await self._channel.safe_point()

    # ------------------------------------------------------------------ messaging (F-06)
    async def send(
        self,
        recipients: str | Iterable[str],
        message_type: str,
        data: Any = None,
        ttl_seconds: float | None = None,
    ) -> list[str]:
        """Send ``data`` (JSON, at most 10 MB) to one agent id or several; returns the
        message ids. A full mailbox raises QueueFullError and nothing is sent."""
        return await self._send(  # type: ignore[no-any-return]
            "send",
            recipients=recipients,
            message_type=message_type,
            data=data,
            ttl_seconds=ttl_seconds,
        )

    async def send_to_group(
        self, group: str, message_type: str, data: Any = None, ttl_seconds: float | None = None
    ) -> list[str]:
        """Send to every agent of ``group`` (F-18)."""
        return await self._send(  # type: ignore[no-any-return]
            "send_to_group",
            group=group,
            message_type=message_type,
            data=data,
            ttl_seconds=ttl_seconds,
        )

    async def broadcast(
        self, message_type: str, data: Any = None, ttl_seconds: float | None = None
    ) -> list[str]:
        """Send to every running or paused agent but this one."""
        return await self._send(  # type: ignore[no-any-return]
            "broadcast", message_type=message_type, data=data, ttl_seconds=ttl_seconds
        )

    async def publish(
        self, topic: str, message_type: str, data: Any = None, ttl_seconds: float | None = None
    ) -> list[str]:
        """Send to the agents subscribed to ``topic``."""
        return await self._send(  # type: ignore[no-any-return]
            "publish", topic=topic, message_type=message_type, data=data, ttl_seconds=ttl_seconds
        )

    async def subscribe(self, topic: str) -> None:
        """Receive what is published on ``topic`` from now on."""
        await self._call("subscribe", topic=topic)

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``."""
        await self._call("unsubscribe", topic=topic)

    async def receive(self, timeout_seconds: float | None = None) -> AgentMessage:
        """The next message of this agent's mailbox, waiting up to ``timeout_seconds``
        (None: as long as it takes); raises WaitTimeoutError. Agents with an ``on_message``
        handler get their messages there instead."""
        return as_message(await self._call("receive", timeout_seconds=timeout_seconds))

    async def request(
        self,
        recipient: str,
        message_type: str,
        data: Any = None,
        timeout_seconds: float | None = 30.0,
    ) -> AgentMessage:
        """Send a request and return the recipient's reply; raises WaitTimeoutError."""
        reply = await self._send(
            "request",
            recipient=recipient,
            message_type=message_type,
            data=data,
            timeout_seconds=timeout_seconds,
        )
        return as_message(reply)

    async def reply(
        self, message: AgentMessage, data: Any = None, message_type: str | None = None
    ) -> str:
        """Answer a request ``message``; its requester's ``request`` returns the reply.
        The reply belongs to the request's trace: inside the ``on_message`` handling that
        request, the current one (a span the agent made there included); elsewhere (after
        ``receive()``), the request's own."""
        if not isinstance(message, AgentMessage):
            raise ValidationError(
                "reply() answers a message this agent received (an AgentMessage), got "
                f"{type(message).__name__}"
            )
        payload: dict[str, Any] = {
            "request": message_to_json(message),
            "data": data,
            "message_type": message_type,
        }
        own = message.trace_context
        carrier = current_carrier() if own is None or scope_carrier() == own else own
        if carrier is not None:
            payload["trace_context"] = carrier
        return await self._call("reply", **payload)  # type: ignore[no-any-return]

    async def _send(self, op: str, **payload: Any) -> Any:
        """A call that creates messages: they carry the current trace."""
        carrier = current_carrier()
        if carrier is not None:
            payload["trace_context"] = carrier
        return await self._call(op, **payload)

    async def _call(self, op: str, **payload: Any) -> Any:
        if (loop := _off_loop(self._loop)) is not None:
            return await on_loop(loop, self._call(op, **payload))
        await self._channel.safe_point()
        return await self._channel.runtime_call(op, payload)


class AgentKV:
    """``context.kv``: the runtime's shared key-value store, seen from an agent (F-16).

    The same store as ``rt.kv``, for inline and process agents alike: values are JSON, every
    write is durable before it returns and visible to every other agent at once. Every call
    is a safe point. ``namespace`` separates data (e.g. one per group).
    """

    def __init__(
        self, channel: ContextChannel, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._channel = channel
        self._loop = loop  # the agent's (see AgentContext)

    async def _call(self, op: str, **payload: Any) -> Any:
        if (loop := _off_loop(self._loop)) is not None:
            return await on_loop(loop, self._call(op, **payload))
        await self._channel.safe_point()
        return await self._channel.runtime_call(op, payload)

    async def get(self, key: str, default: Any = None, namespace: str = "") -> Any:
        """The value of ``key``, or ``default`` (itself: it never leaves the agent)."""
        value = await self._call("kv_get", key=key, namespace=namespace)
        return default if value is None else value  # (a stored value is never None)

    async def keys(self, prefix: str = "", namespace: str = "") -> list[str]:
        """The keys starting with ``prefix``, sorted."""
        return await self._call("kv_keys", prefix=prefix, namespace=namespace)  # type: ignore[no-any-return]

    async def set(self, key: str, value: Any, namespace: str = "") -> int:
        """Store ``value`` (JSON) under ``key``; returns its new version."""
        return await self._call("kv_set", key=key, value=value, namespace=namespace)  # type: ignore[no-any-return]

    async def delete(self, key: str, namespace: str = "") -> bool:
        """Remove ``key``; False if it was not there."""
        return await self._call("kv_delete", key=key, namespace=namespace)  # type: ignore[no-any-return]

    async def compare_and_set(
        self, key: str, expected: Any, value: Any, namespace: str = ""
    ) -> bool:
        """Set ``key`` to ``value`` only if it holds ``expected`` (None: absent)."""
        return await self._call(  # type: ignore[no-any-return]
            "kv_cas", key=key, expected=expected, value=value, namespace=namespace
        )

    async def watch(self, prefix: str = "", namespace: str = "") -> AsyncIterator[dict[str, Any]]:
        """Yield every later change under ``prefix`` as ``{"namespace", "key", "value",
        "version"}`` (value None: deleted) until the iteration is closed. The watch opens
        as the iteration starts: to see every change after a read, use :meth:`open_watch`."""
        watch = await self.open_watch(prefix, namespace)
        try:
            while (change := await watch.next()) is not None:
                yield change
        finally:
            await watch.close()

    async def open_watch(self, prefix: str = "", namespace: str = "") -> AgentKVWatch:
        """Open a watch now: it sees every change under ``prefix`` made from this moment,
        so reading a key's value after this misses none of its later changes. Iterate it
        (``async for``), or ``await watch.next(timeout_seconds)``; close it with ``await
        watch.close()`` or ``async with``."""
        watch_id = await self._call("kv_watch", prefix=prefix, namespace=namespace)
        return AgentKVWatch(self, watch_id, self._loop or asyncio.get_running_loop())

    async def _runtime_call(self, op: str, payload: dict[str, Any]) -> Any:
        """A call without a safe point (a watch's next change), on the agent's loop."""
        if (loop := _off_loop(self._loop)) is not None:
            return await on_loop(loop, self._runtime_call(op, payload))
        return await self._channel.runtime_call(op, payload)


class AgentKVWatch:
    """A key-value watch an agent opened (:meth:`AgentKV.open_watch`): the later changes
    under its prefix, as ``{"namespace", "key", "value", "version"}`` dicts, in order.

    Asking for the next change is a safe point (a pause halts the task there); waiting for
    one is not, as with ``receive``. A ``next`` given up on (cancelled, ``call_sync``'s
    timeout) leaves the watch open; a change it was being handed goes back to it. It closes
    when closed, when dropped (the task holding it ended) or when the agent stops.
    """

    def __init__(self, kv: AgentKV, watch_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self._kv = kv
        self._watch_id = watch_id
        self._loop = loop  # the agent's, where a dropped watch is closed
        self._closed = False
        # Changes a next() got for a caller that had given up on it (call_sync): the next
        # ones, ahead of those still with the runtime.
        self._kept: deque[dict[str, Any]] = deque()

    def __del__(self) -> None:
        # Dropped unclosed (its task returned holding it): closed on the agent's loop, as
        # an async generator left unfinished is, rather than kept queueing every change
        # under its prefix until the agent stops.
        if not self._closed and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(_close_dropped_watch, self._kv, self._watch_id)

    async def next(self, timeout_seconds: float | None = None) -> dict[str, Any] | None:
        """The next change, or None after ``timeout_seconds`` or once the watch is closed."""
        if self._closed:
            return None
        kv = self._kv
        if (loop := _off_loop(kv._loop)) is not None:
            return await on_loop(loop, self.next(timeout_seconds))
        await kv._channel.safe_point()
        if self._kept:
            return self._kept.popleft()
        change: dict[str, Any] | None = await kv._channel.runtime_call(
            "kv_next", {"watch_id": self._watch_id, "timeout_seconds": timeout_seconds}
        )
        if change is not None and (sync_call := _SYNC_CALL.get()) is not None:
            sync_call.returns_taken(change, self._kept.appendleft)
        return change

    async def close(self) -> None:
        """End the watch (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        self._kept.clear()
        with contextlib.suppress(Exception):
            await self._kv._runtime_call("kv_unwatch", {"watch_id": self._watch_id})

    def __aiter__(self) -> AgentKVWatch:
        return self

    async def __anext__(self) -> dict[str, Any]:
        change = await self.next()
        if change is None:
            raise StopAsyncIteration
        return change

    async def __aenter__(self) -> AgentKVWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


#: Closes of watches dropped unclosed, kept until done.
_CLOSING_WATCHES: set[asyncio.Future[Any]] = set()


def _close_dropped_watch(kv: AgentKV, watch_id: str) -> None:
    closing = asyncio.ensure_future(kv._runtime_call("kv_unwatch", {"watch_id": watch_id}))
    _CLOSING_WATCHES.add(closing)
    closing.add_done_callback(_closed_dropped_watch)


def _closed_dropped_watch(closing: asyncio.Future[Any]) -> None:
    _CLOSING_WATCHES.discard(closing)
    if not closing.cancelled():
        closing.exception()  # retrieved: the agent may have ended meanwhile


#: The call_sync call a task on the agent's loop carries out, if it is one.
_SYNC_CALL: contextvars.ContextVar[_SyncCall[Any] | None] = contextvars.ContextVar(
    "miminions_sync_call", default=None
)
#: How long call_sync waits for a call it gave up on to end on the agent's loop.
_CANCEL_WAIT_SECONDS = 5.0
#: Messages going back to their mailbox after a call_sync gave up on the receive that got
#: them (kept until done).
_ORPHANS: set[asyncio.Future[Any]] = set()


class _SyncCall(Generic[_T]):
    """One ``call_sync`` call: a task on the agent's loop whose end goes to the waiting
    thread, or, once that thread gave up on it, to ``orphaned`` (nothing is dropped)."""

    def __init__(self, orphaned: Callable[[Any], None]) -> None:
        self.outcome: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._orphaned = orphaned
        self._lock = threading.Lock()  # who takes the end: the thread or orphaned
        self._given_up = False
        self._task: asyncio.Task[_T] | None = None
        # What the call took and how to give it back, if its result is that (see
        # returns_taken): given back there rather than to ``orphaned``.
        self._taken: tuple[Any, Callable[[Any], None]] | None = None

    def begin(self, call: Awaitable[_T]) -> None:
        """On the loop, in the caller's context variables (call_soon_threadsafe keeps them)."""
        self._task = asyncio.ensure_future(self._carry_out(call))
        self._task.add_done_callback(self._ended)

    async def _carry_out(self, call: Awaitable[_T]) -> _T:
        # (In this task's own copy of the caller's context, and taken back as it ends: the
        # task's context holding this call, which holds the task, was a reference cycle
        # keeping the call's result, an open watch, until the cyclic collector ran.)
        token = _SYNC_CALL.set(self)
        try:
            return await call
        finally:
            _SYNC_CALL.reset(token)

    def returns_taken(self, value: Any, give_back: Callable[[Any], None]) -> None:
        """Called on the loop by what the call awaits: ``value``, if it is the call's
        result, was taken from where ``give_back`` puts it back, should the caller have
        given up on it (a watch's change)."""
        self._taken = (value, give_back)

    def _hand_on(self, result: Any) -> None:
        """On the loop: ``result`` of a call its caller gave up on goes back where it came
        from."""
        taken = self._taken
        if taken is not None and taken[0] is result:
            taken[1](result)
        else:
            self._orphaned(result)

    def wait(self, loop: asyncio.AbstractEventLoop, timeout_seconds: float | None) -> _T:
        """In the calling thread: the call's result (or its own error), or TimeoutError
        after ``timeout_seconds``. The call is then cancelled on the loop and its own end
        awaited, as with asyncio.wait_for: a call that ended meanwhile (a receive handed
        its message) is returned; one the busy loop ends later hands what it got to
        ``orphaned``. Interrupted here (KeyboardInterrupt), the call is given up alike."""
        outcome = self.outcome
        timed_out = False
        try:
            if not _wait(outcome, timeout_seconds):
                timed_out = True
                loop.call_soon_threadsafe(self._cancel)
                _wait(outcome, _CANCEL_WAIT_SECONDS)
        except BaseException:
            self._abandon(loop)
            raise
        if outcome.done():
            if timed_out and outcome.cancelled():
                raise TimeoutError(f"the call took longer than {timeout_seconds} s")
            return outcome.result()  # its result, or its own error (ended as it timed out too)
        with self._lock:  # the loop is busy: what the call still brings is not lost
            self._given_up = not outcome.done()
        if self._given_up:
            raise TimeoutError(f"the call took longer than {timeout_seconds} s")
        return outcome.result()

    def _abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """This thread stops waiting for a reason of its own: the call ends, and what it
        got goes to ``orphaned``."""
        outcome = self.outcome
        with self._lock:
            self._given_up = not outcome.done()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs there
            if self._given_up:
                loop.call_soon_threadsafe(self._cancel)
            elif not outcome.cancelled() and outcome.exception() is None:
                loop.call_soon_threadsafe(self._hand_on, outcome.result())

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _ended(self, task: asyncio.Task[_T]) -> None:
        with self._lock:
            if not self._given_up:
                if task.cancelled():
                    self.outcome.cancel()
                elif (error := task.exception()) is not None:
                    self.outcome.set_exception(error)
                else:
                    self.outcome.set_result(task.result())
                return
        if not task.cancelled() and task.exception() is None:
            self._hand_on(task.result())


def _wait(outcome: concurrent.futures.Future[Any], timeout: float | None) -> bool:
    """Wait for ``outcome`` up to ``timeout`` seconds; whether it is done. In an agent's
    thread, the agent's lifecycle hooks given to it meanwhile run here (see
    :meth:`AgentThread.wait_serving`): a sync task halted at a safe point holds the thread."""
    thread = current_agent_thread()
    if thread is not None:
        return thread.wait_serving(outcome, timeout)
    done, _ = concurrent.futures.wait([outcome], timeout)
    return bool(done)


def _off_loop(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop | None:
    """The agent's ``loop`` when the caller runs on another one (a call awaited with
    ``asyncio.run`` in a sync agent's thread: it is carried out there), else None."""
    return loop if loop is not None and _running_loop() is not loop else None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def on_loop(loop: asyncio.AbstractEventLoop, call: Awaitable[_T]) -> _T:
    """Await ``call`` on ``loop`` (the agent's) from another loop: a context call made by
    synchronous agent code (``asyncio.run`` in its thread). It runs in the caller's context
    variables, so the runtime knows it for the agent's task (a pause halts it there)."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(call), loop))


async def _awaited(call: Awaitable[_T]) -> _T:
    return await call


def as_message(value: Any) -> AgentMessage:
    """A message from the runtime: the model itself (inline) or its JSON (process)."""
    return value if isinstance(value, AgentMessage) else AgentMessage.model_validate(value)


@runtime_checkable
class AgentProtocol(Protocol):
    """Anything with ``execute_task`` is an agent; lifecycle hooks are optional.

    Optional: ``on_start()``, ``on_stop()``, ``on_pause() -> dict`` (the state to keep),
    ``on_resume(state)``, ``on_error(error, task)``; each may be ``async def`` or ``def``.
    """

    def execute_task(self, task: Task) -> Any:
        """Do the work of ``task`` and return a JSON-serialisable result."""
        ...


class BaseAgent:
    """Convenient base class for agents: override ``execute_task`` and any hooks you need."""

    context: AgentContext

    @property
    def config(self) -> JSONObject:
        """The ``config`` given at registration."""
        return self.context.config

    async def execute_task(self, task: Task) -> Any:
        """Do the work of ``task`` and return a JSON-serialisable result (usually a dict)."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute_task")

    async def on_start(self) -> None:
        """Called once when the agent starts, before its first task."""

    async def on_stop(self) -> None:
        """Called once when the agent stops, after its last task."""

    async def on_pause(self) -> JSONObject:
        """Called when the agent pauses; return the state ``on_resume`` should get back."""
        return {}

    async def on_resume(self, state: JSONObject) -> None:
        """Called on resume with exactly what ``on_pause`` returned (also after a restart)."""

    async def on_error(self, error: BaseException, task: Task | None) -> None:
        """Called when a task of this agent failed or timed out (``task`` is a copy)."""


class FunctionAgent(BaseAgent):
    """Adapts ``async def fn(task, context)`` to the agent interface."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    async def execute_task(self, task: Task) -> Any:
        """Await the wrapped coroutine function."""
        return await self._fn(task, self.context)


class SyncFunctionAgent(BaseAgent):
    """Adapts a plain ``def fn(task, context)``; its host runs it in the agent's thread."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def execute_task(self, task: Task) -> Any:
        """Call the wrapped function (the host calls this in a worker thread)."""
        return self._fn(task, self.context)


async def call_agent_code(
    fn: Callable[..., Any], *args: Any, executor: concurrent.futures.Executor | None = None
) -> Any:
    """Call agent code without blocking the loop: await coroutines, run sync calls in
    ``executor`` (a thread; the loop's default executor when None).

    ``SystemExit`` the code raises (and ``KeyboardInterrupt`` raised in the thread, where
    no Ctrl-C lands) becomes :class:`AgentExitError`: an agent's ``sys.exit()`` fails its
    call, as any error does, instead of ending the program and every other agent."""
    try:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        loop = asyncio.get_running_loop()
        # In the caller's context variables (as asyncio.to_thread does): the code sees the
        # current trace (miminions.kernel.tracing) like async agent code does.
        context = contextvars.copy_context()
        try:
            result = await loop.run_in_executor(executor, functools.partial(context.run, fn, *args))
        except KeyboardInterrupt as exc:
            raise agent_exit_error(exc) from exc
        if inspect.isawaitable(result):
            return await result
        return result
    except SystemExit as exc:
        raise agent_exit_error(exc) from exc


def agent_exit_error(exc: BaseException) -> AgentExitError:
    """The error agent code's ``SystemExit`` (or its thread's ``KeyboardInterrupt``) fails
    its call with, naming it as a process agent's would (``"SystemExit: 2"``)."""
    return AgentExitError(error_text(exc), type(exc).__name__)


async def call_hook(
    agent: object, hook: str, *args: Any, executor: concurrent.futures.Executor | None = None
) -> Any:
    """Call an optional lifecycle hook of ``agent`` if it has one; return its result."""
    fn = getattr(agent, hook, None)
    if fn is None:
        return None
    return await call_agent_code(fn, *args, executor=executor)


def import_path(obj: object) -> str | None:
    """``module:qualname`` of a class or function when it can be imported back, else None.

    ``__main__`` counts: a worker process loads the main script by its file path (as
    multiprocessing does), which is why such a script needs a main guard.
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname:
        return None
    return f"{module}:{qualname}"


# Set while a worker process runs the user's main script to find an agent defined there.
_loading_main_in_worker = False


def check_not_loading_main_in_worker() -> None:
    """Refuse to start a runtime from a main script a worker is importing (no main guard)."""
    if _loading_main_in_worker:
        raise InvalidStateError(
            "the main script started a runtime while an agent worker process was importing "
            "it to find an agent defined there: put the script's top-level code under "
            "'if __name__ == \"__main__\":' (or define agents in a separate module)"
        )


@contextlib.contextmanager
def loading_main_in_worker() -> Iterator[None]:
    """Mark the import of the main script in a worker (see above)."""
    global _loading_main_in_worker
    _loading_main_in_worker = True
    try:
        yield
    finally:
        _loading_main_in_worker = False


def classify_agent(agent: object) -> tuple[str, str | None]:
    """Return (kind, import path) of something passed to ``register_agent``.

    kind is ``"class"``, ``"function"`` or ``"instance"``; anything else is rejected.
    """
    if inspect.isclass(agent):
        if not callable(getattr(agent, "execute_task", None)):
            raise ValidationError(
                f"agent class {agent.__qualname__} has no execute_task method; subclass "
                "miminions.BaseAgent or define execute_task(self, task)"
            )
        return "class", import_path(agent)
    if inspect.isfunction(agent) or inspect.iscoroutinefunction(agent):
        return "function", import_path(agent)
    if isinstance(agent, AgentProtocol):
        return "instance", import_path(type(agent))
    raise ValidationError(
        f"cannot register {agent!r} as an agent: pass a BaseAgent subclass, an object with an "
        "execute_task(task) method, or a function fn(task, context)"
    )


def has_own_constructor(agent: object) -> bool:
    """True when building ``agent`` (a class) runs code of its own: an ``__init__`` or
    ``__new__`` other than ``object``'s."""
    return inspect.isclass(agent) and (
        agent.__init__ is not object.__init__ or agent.__new__ is not object.__new__
    )


def instantiate_agent(agent: object, kind: str) -> Any:
    """Build the agent object a host runs, from what was registered."""
    if kind == "class" and inspect.isclass(agent):
        return agent()
    if kind == "function" and callable(agent):
        return (
            FunctionAgent(agent) if inspect.iscoroutinefunction(agent) else SyncFunctionAgent(agent)
        )
    return agent
