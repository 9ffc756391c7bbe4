"""Running one agent object: its lifecycle hooks, its tasks and its cooperative pause.

:class:`AgentRunner` is what every host builds on: the ``inline`` host runs it on the
runtime's loop, a ``process`` worker runs it on the worker's own loop. It is also the
agent's :class:`~miminions.kernel.agent.ContextChannel`: each ``await context.<call>`` is a
safe point that waits while the runner is paused.

Synchronous agent code runs in the agent's own thread, one call at a time, so the loop
(and, in a worker, its heartbeat) stays responsive. Such code cannot be interrupted
mid-call, only abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from miminions.kernel.agent import (
    RUNNING_TASK,
    AgentContext,
    ContextChannel,
    agent_exit_error,
    as_message,
    call_agent_code,
    call_hook,
    has_own_constructor,
    instantiate_agent,
)
from miminions.kernel.agent_thread import AgentThread
from miminions.kernel.errors import HookTimeoutError, InvalidStateError
from miminions.kernel.models import AgentMessage, Task, message_to_json
from miminions.kernel.tracing import trace_scope

SaveCheckpoint = Callable[[str, Any], Awaitable[None]]
ReportUsage = Callable[[int, float], None]
RuntimeCall = Callable[[str, dict[str, Any]], Awaitable[Any]]
MakeContext = Callable[[ContextChannel], AgentContext]


#: The runner whose task's code runs in this context (see :meth:`AgentRunner.safe_point`).
_TASK_OF: contextvars.ContextVar[AgentRunner | None] = contextvars.ContextVar(
    "miminions_task_of", default=None
)


#: The on_message handling running in this context (a token of one message's handling):
#: the handler's own code, its thread (a sync handler) and the context calls that thread
#: makes with call_sync. Work the handler leaves behind keeps an ended handling's token.
_HANDLER_OF: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "miminions_handler_of", default=None
)


#: The lifecycle hook call running in this context (a token of :meth:`AgentRunner.hook`):
#: its context calls pass the gate while it runs (``on_pause`` runs with the gate closed,
#: ``on_resume`` before it opens).
_HOOK_CALL: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "miminions_hook_call", default=None
)


class AgentRunner:
    """Builds and drives one agent object (see the module docstring)."""

    def __init__(
        self,
        name: str,
        kind: str,
        registered: object,
        *,
        make_context: MakeContext,
        save_checkpoint: SaveCheckpoint,
        report_usage: ReportUsage,
        runtime_call: RuntimeCall,
        message_taken: Callable[[str], None] | None = None,
        task_halted: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        #: Told the id of each message ``on_message`` is about to handle (a worker tells
        #: the runtime, which until then may take the message back; see process_host).
        self._message_taken = message_taken
        #: Told the id of the running task when a pause finds it halted at a safe point
        #: (the runtime stops its timeout then, not only once on_pause has returned).
        self._task_halted = task_halted
        self._kind = kind
        self._registered = registered
        self._make_context = make_context
        self._save_checkpoint = save_checkpoint
        self._report_usage = report_usage
        self._runtime_call = runtime_call
        self._inbox: asyncio.Task[None] | None = None
        self._task_runner: asyncio.Task[Any] | None = None  # the coroutine running a task
        self._agent: Any = None
        self._execute: Callable[[Task], Awaitable[Any]] = _not_started
        self.context: AgentContext | None = None
        self._gate = asyncio.Event()
        self._gate.set()
        self._halted = asyncio.Event()
        self._halted_waiting = 0  # coroutines of the running task waiting at the gate
        self._hook_calls: set[object] = set()  # tokens of the hooks in progress (safe_point)
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set while no ``on_message`` handler runs, or while the one that runs waits at
        #: a safe point: a pause waits for it as for the task.
        self._handler_quiet = asyncio.Event()
        self._handler_quiet.set()
        self._delivery_ending = False  # set by stop(): the delivery takes no more messages
        # Set while no on_message handler holds a message, halted at a safe point or not.
        self._handler_done = asyncio.Event()
        self._handler_done.set()
        self._returns: set[asyncio.Future[Any]] = set()  # messages a stop gives back
        # Set while no on_error runs: a pause or a stop waits for it (see notify_error).
        self._errors_running = 0
        self._error_quiet = asyncio.Event()
        self._error_quiet.set()
        self._stopping = False
        #: Counts the agent's starts: a context of an earlier one is stopping for good.
        self.generation = 0
        self._thread: AgentThread | None = None
        self._sync_calls = 0  # sync agent code running in the agent's thread right now
        self._handling: object | None = None  # the token of the on_message handling under way
        self._handler_begun = True  # the handler under way has begun (a sync one may wait)

    # --------------------------------------------------------------- ContextChannel
    @property
    def stopping(self) -> bool:
        """True once the agent was asked to stop."""
        return self._stopping

    async def safe_point(self) -> None:
        """Wait here while the agent is paused. The running task and an ``on_message``
        handler reaching it count as halted for a pause; other code just waits, except
        the agent's own lifecycle hooks (``on_pause`` may save its state through the
        context while the task it paused waits)."""
        if self._gate.is_set() or _HOOK_CALL.get() in self._hook_calls:
            return
        current = asyncio.current_task()
        # The task's own coroutine, or one it started (asyncio.gather, wait_for on 3.11):
        # those carry the context the task ran in. One of them at a safe point halts the
        # task for a pause; the others halt at theirs.
        is_task = current is self._task_runner or (
            self._task_runner is not None and _TASK_OF.get() is self
        )
        handling = self._handling
        is_handler = (
            handling is not None and (current is self._inbox or _HANDLER_OF.get() is handling)
        ) and not self._handler_quiet.is_set()
        if is_task:
            self._halted_waiting += 1
            self._halted.set()
        if is_handler:
            self._handler_quiet.set()
        try:
            await self._gate.wait()
        finally:
            if is_task:
                self._halted_waiting -= 1
                if not self._halted_waiting:
                    self._halted.clear()
            if is_handler and self._handling is handling:  # (not if it ended meanwhile)
                self._handler_quiet.clear()

    def save_checkpoint(self, task_id: str, state: Any) -> Awaitable[None]:
        """Durably record a task checkpoint (through whatever reaches the runtime)."""
        return self._save_checkpoint(task_id, state)

    def report_usage(self, tokens: int, cost: float) -> None:
        """Pass self-reported usage on to the runtime."""
        self._report_usage(tokens, cost)

    def runtime_call(self, op: str, payload: dict[str, Any]) -> Awaitable[Any]:
        """Carry out a messaging call in the runtime."""
        return self._runtime_call(op, payload)

    # --------------------------------------------------------------- lifecycle
    @property
    def idle(self) -> bool:
        """True while no task runs."""
        return self._idle.is_set()

    async def start(self, resume_state: Any = None) -> None:
        """Build the agent, run ``on_start``, then ``on_resume(resume_state)`` if given."""
        self.generation += 1
        self._stopping = False
        self._delivery_ending = False
        self._gate.set()
        self._agent = await self._build_agent()
        execute = self._agent.execute_task
        # Decided once per start, not per task: async code is awaited directly; sync code
        # runs in this agent's own thread, one call at a time (an abandoned call that is
        # still running delays the next one instead of running beside it).
        if inspect.iscoroutinefunction(execute):
            self._execute = execute
        else:
            self._execute = partial(
                call_agent_code, self._counted(execute), executor=self._own_thread()
            )
        self.context = self._make_context(self)
        # objects with __slots__ can still use the context passed to function agents
        with contextlib.suppress(AttributeError):
            self._agent.context = self.context
        await self.hook("on_start")
        if resume_state is not None:
            await self.hook("on_resume", resume_state)
        on_message = getattr(self._agent, "on_message", None)
        if callable(on_message):
            # Decided once per start, as for execute_task (it is on the delivery path): an
            # async handler is awaited directly; a sync one runs in the agent's thread, as
            # every sync hook does.
            sync = not inspect.iscoroutinefunction(on_message)
            handle: Callable[[AgentMessage], Awaitable[Any]] = (
                partial(call_agent_code, self._noted_begun(on_message), executor=self._own_thread())
                if sync
                else on_message
            )
            self._inbox = asyncio.ensure_future(self._deliver_messages(handle, sync=sync))

    async def _deliver_messages(
        self, handle: Callable[[AgentMessage], Awaitable[Any]], *, sync: bool
    ) -> None:
        """Hand each message to ``on_message`` (``handle``), one at a time, beside any
        running task (a handler that raises is logged; the next message still comes)."""
        context = self.context
        assert context is not None
        while True:
            await self._gate.wait()  # a paused agent takes no message
            if self._delivery_ending:
                return  # an agent being stopped neither (the one it handled, it finished)
            message = as_message(
                await self._runtime_call("receive", {"timeout_seconds": None, "inbox": True})
            )
            if not self._gate.is_set():
                # Paused while this receive waited: the message goes back to the (durable)
                # mailbox, where its TTL is frozen, until the agent resumes.
                await self._runtime_call("return_message", {"message": message_to_json(message)})
                continue
            if self._message_taken is not None:
                self._message_taken(message.message_id)
            self._handler_quiet.clear()
            self._handler_done.clear()
            self._handler_begun = not sync  # a sync one notes it in the thread
            # This task's own context: what the handler starts (its thread) inherits it.
            self._handling = object()
            _HANDLER_OF.set(self._handling)
            try:
                if message.trace_context is None:
                    await handle(message)
                else:
                    with trace_scope(message.trace_context):  # the handling is in its trace
                        await handle(message)
            except (Exception, SystemExit):  # sys.exit() too: the handler's failure
                context.logger.exception("on_message failed for %s", message.message_id)
            except asyncio.CancelledError:
                this = asyncio.current_task()
                if self._delivery_ending:
                    # A stop cut the handler off (past its timeout, or a forced stop): the
                    # message goes back to the (durable) mailbox for the next start, not
                    # lost, as a task interrupted by a stop goes back to the queue.
                    returning = self._runtime_call(
                        "return_message", {"message": message_to_json(message)}
                    )
                    giving_back = asyncio.ensure_future(returning)
                    self._returns.add(giving_back)
                    giving_back.add_done_callback(self._returned)
                    raise
                if self._stopping or this is None or this.cancelling():
                    raise  # the delivery itself is cancelled (a stop, the loop ending)
                # Nobody cancelled the delivery: the handler raised CancelledError itself
                # (it awaited something another part of the program cancelled). A failure
                # of the handler like any other: the next message still comes.
                context.logger.exception("on_message failed for %s", message.message_id)
            finally:
                self._handling = None
                self._handler_quiet.set()
                self._handler_done.set()

    def _returned(self, giving_back: asyncio.Future[Any]) -> None:
        self._returns.discard(giving_back)
        if not giving_back.cancelled() and giving_back.exception() is not None:
            logging.getLogger("miminions.messaging").warning(
                "agent %r could not give back the message its stop cut off: %s",
                self.name,
                giving_back.exception(),
            )

    async def run(self, task: Task, checkpoint: Any = None) -> Any:
        """Run one task (a sync ``execute_task`` runs in the agent's thread)."""
        context = self.context
        if context is None or self._agent is None:
            raise InvalidStateError(f"agent {self.name!r} is not started")
        context.current_task = task
        context.last_checkpoint = checkpoint
        self._idle.clear()
        self._task_runner = asyncio.current_task()
        task_of = _TASK_OF.set(self)  # inherited by the coroutines the task starts
        running = RUNNING_TASK.set((context, task))
        try:
            if task.trace_context is None:
                return await self._execute(task)
            with trace_scope(task.trace_context):  # what the agent does is in the task's trace
                return await self._execute(task)
        except SystemExit as exc:  # sys.exit() in the agent's code: its failure, not the end
            raise agent_exit_error(exc) from exc
        finally:
            _TASK_OF.reset(task_of)
            RUNNING_TASK.reset(running)
            self._task_runner = None
            context.current_task = None
            self._idle.set()

    async def halt(self) -> None:
        """Close the gate and return once the running task, and an ``on_message`` handler
        in progress, halted at a safe point or ended.

        If the wait is abandoned (cancelled) the gate opens again, so a task never stays
        halted without a pause to show for it.
        """
        self._gate.clear()
        try:
            if not self._idle.is_set():
                halted = asyncio.ensure_future(self._halted.wait())
                idle = asyncio.ensure_future(self._idle.wait())
                try:
                    await asyncio.wait({halted, idle}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    halted.cancel()
                    idle.cancel()
                task = None if self.context is None else self.context.current_task
                if self._halted.is_set() and task is not None and self._task_halted is not None:
                    self._task_halted(task.task_id)  # its timeout stops counting (F-25)
            # An on_message handler in progress halts too (its next context call) or ends:
            # a paused agent runs none of its code, and a process agent's worker is then
            # stopped, which must not catch a message half handled. (A sync one queued
            # behind the agent's sync task, halted in its thread, has not begun: it begins
            # once that call ends, after the resume.)
            if self._handler_begun or not (self._halted.is_set() and self.sync_call_running):
                await self._handler_quiet.wait()
            # So does an on_error in progress (it ends: hooks have no safe points).
            await self._error_quiet.wait()
        except BaseException:
            self._gate.set()
            raise

    async def pause(self) -> Any:
        """Halt (see :meth:`halt`), then run ``on_pause`` and return its state.

        If ``on_pause`` fails the gate opens again.
        """
        await self.halt()
        try:
            state = await self.hook("on_pause")
        except BaseException:
            self._gate.set()
            raise
        return state if state is not None else {}

    async def resume(self, state: Any) -> None:
        """Run ``on_resume(state)`` and open the gate."""
        await self.hook("on_resume", state)
        self._gate.set()

    def request_stop(self) -> None:
        """From now on ``context.is_stopping`` is true: the task should finish or checkpoint."""
        self._stopping = True

    async def stop(self, timeout_seconds: float) -> None:
        """Run ``on_stop`` within ``timeout_seconds`` and drop the agent."""
        self._stopping = True
        # Not at request_stop(): while the runtime drains at shutdown, its tasks may still
        # talk to this agent (a request waiting for its reply).
        self._delivery_ending = True
        self._gate.set()
        hook = "on_message"
        try:
            async with asyncio.timeout(timeout_seconds) as limit:
                # An on_message handler in progress finishes first (halted at a safe
                # point, it goes on: the gate is open), and the delivery then takes no
                # other message (see _deliver_messages).
                await self._handler_done.wait()
                if self._inbox is not None:
                    self._inbox.cancel()
                    self._inbox = None
                hook = "on_error"
                await self._error_quiet.wait()  # an on_error in progress ends too
                hook = "on_stop"
                await self.hook("on_stop")
        except TimeoutError:
            if not limit.expired():
                raise  # on_stop raised it itself: its own failure
            raise HookTimeoutError(f"{hook} did not finish within {timeout_seconds} s") from None
        finally:
            self.release()

    def release(self) -> None:
        """Drop the agent without running any hook (a message its handler held goes back
        to the mailbox: see _deliver_messages)."""
        self._stopping = True
        self._delivery_ending = True
        self._gate.set()
        if self._inbox is not None:
            self._inbox.cancel()
            self._inbox = None
        self._agent = None
        if self._thread is not None:
            if self._thread.busy:
                # A sync call (a task, a hook, a handler, the agent's constructor) that
                # ignored its cancel still runs: its thread is kept, so
                # the agent's calls after a new start wait behind it instead of running
                # beside it (one call at a time, across starts too).
                self._thread.drop_queued()
            else:
                # nothing waits for a thread shut down (a daemon thread), the interpreter
                # neither
                self._thread.shutdown(wait=False, cancel_futures=True)
                self._thread = None

    @property
    def sync_call_running(self) -> bool:
        """True while the agent's synchronous ``execute_task`` runs in its thread (a
        cancelled task's thread cannot be interrupted, only abandoned)."""
        return self._sync_calls > 0

    def _counted(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self._sync_calls += 1
            try:
                return fn(*args)
            finally:
                self._sync_calls -= 1

        return call

    async def notify_error(self, error: BaseException, task: Any) -> None:
        """Run ``on_error(error, task)``; a pause or a stop of the agent waits for it to
        end (it is the agent's code, which a paused or stopped agent does not run)."""
        self._errors_running += 1
        self._error_quiet.clear()
        try:
            await self.hook("on_error", error, task)
        finally:
            self._errors_running -= 1
            if not self._errors_running:
                self._error_quiet.set()

    async def hook(self, name: str, *args: Any) -> Any:
        """Call the agent's optional lifecycle hook ``name`` (sync hooks in its thread);
        its context calls are no safe points (see :meth:`safe_point`)."""
        # The call's own token, inherited by tasks the hook starts: it lets them through
        # only while this call runs (a loop on_start started halts at its safe points
        # afterwards, also while another hook runs).
        call = object()
        token = _HOOK_CALL.set(call)
        self._hook_calls.add(call)
        try:
            # A sync on_pause / on_resume of a halted agent runs in the agent's thread within
            # a call of it waiting there for a context call (a task halted at a safe point:
            # it waits for the resume the hook makes); other hooks, and these otherwise,
            # after the call running there.
            thread = self._own_thread()
            within_wait = name in ("on_pause", "on_resume") and not self._gate.is_set()
            return await call_hook(
                self._agent, name, *args, executor=thread.meanwhile if within_wait else thread
            )
        finally:
            self._hook_calls.discard(call)
            _HOOK_CALL.reset(token)

    async def _build_agent(self) -> Any:
        """The agent object, from what was registered.

        A class with a synchronous ``execute_task`` is built in the agent's thread, like
        the rest of its code (a slow constructor does not hold up the loop). A class with
        an async one is built on the loop, where its ``__init__`` may create loop-bound
        objects (clients, queues, tasks), as async code expects.
        """
        registered, kind = self._registered, self._kind
        if (
            kind == "class"
            and has_own_constructor(registered)
            and not inspect.iscoroutinefunction(getattr(registered, "execute_task", None))
        ):
            return await call_agent_code(
                instantiate_agent, registered, kind, executor=self._own_thread()
            )
        try:
            return instantiate_agent(registered, kind)
        except SystemExit as exc:  # sys.exit() in its constructor: a failed start
            raise agent_exit_error(exc) from exc

    def _noted_begun(self, on_message: Callable[..., Any]) -> Callable[..., Any]:
        """A sync ``on_message`` that notes, in the agent's thread, that it has begun."""

        def handle(message: AgentMessage) -> Any:
            self._handler_begun = True
            return on_message(message)

        return handle

    def _own_thread(self) -> AgentThread:
        if self._thread is None:
            self._thread = AgentThread(f"miminions-{self.name}")
        return self._thread


async def _not_started(task: Task) -> Any:
    raise InvalidStateError("the agent is not started")
