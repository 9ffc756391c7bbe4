"""Built-in ``process`` isolation, the default: each agent runs in its own worker process.

The runtime side of a worker (:class:`ProcessHost`) speaks JSON frames over a socket pair
(:mod:`miminions.kernel.wire`); the worker side is :mod:`miminions.plugins.process_worker`.
What this buys over ``inline`` (F-07, F-15, F-17):

- a crash of the agent (exception, ``os._exit``, segfault, SIGKILL) fails only its task,
  which is retried per its policy; the agent is restarted per the runtime's restart policy;
- a worker that stops answering heartbeats, or whose task ignores a cancel or timeout, is
  killed and restarted;
- memory (RSS) and CPU time are watched and capped (soft limit: warning and ``on_error``;
  hard limit: the worker is stopped with RESOURCE_LIMIT_EXCEEDED);
- a paused agent's worker is stopped with SIGSTOP once its task reached a safe point, so it
  uses no CPU until resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator
from functools import partial
from typing import TYPE_CHECKING, Any

from miminions.kernel.errors import (
    AgentCrashedError,
    HookTimeoutError,
    HostEndedError,
    InvalidStateError,
    RemoteAgentError,
    ResourceLimitExceeded,
    ResourceLimitWarning,
    TaskNotStartedError,
    ValidationError,
)
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.interfaces import RUN_GIVEN_UP, RUN_STOPPED_AT_ONCE
from miminions.kernel.messaging import IMMEDIATE_CALLS
from miminions.kernel.models import (
    AgentMessage,
    AgentSpec,
    EventType,
    JSONObject,
    ResourceLimits,
    Severity,
    Task,
    message_to_json,
)
from miminions.kernel.plugins import refuse_coroutines
from miminions.kernel.wire import (
    MAX_FRAME_BYTES,
    ChannelClosedError,
    Frame,
    FrameChannel,
    ProtocolViolationError,
    error_to_wire,
    retrieve,
    task_to_wire,
)
from miminions.plugins import process_probe
from miminions.plugins.process_pool import (
    WorkerPool,
    WorkerProcess,
    describe_exit,
    existing_pool,
    pool_of,
)

if TYPE_CHECKING:
    from miminions.kernel.runtime import AgentRuntime

MIB = 1024 * 1024
#: Bound of a run's wait for a worker that closed its connection to be gone (it is killed
#: one second after: see ProcessHost._lost_connection).
_LOST_WORKER_EXIT_SECONDS = 5.0
logger = logging.getLogger("miminions.plugins.process_host")


#: What a process agent's context call whose answer is too large for a frame gets.
_ANSWER_TOO_LARGE = (
    f"the answer to this call is larger than the {MAX_FRAME_BYTES:,} bytes a frame between "
    "the runtime and a worker may carry: ask for less at a time (a narrower key prefix, say)"
)


class _Live:
    """One running worker and the channel to it."""

    def __init__(self, process: WorkerProcess, channel: FrameChannel) -> None:
        self.process = process
        self.channel = channel
        self.frozen = False  # SIGSTOPped while paused
        self.paused = False  # between a pause that finished and the next resume
        #: Run requests in flight, in order (the first runs), with their task ids.
        self.runs: dict[int, str] = {}
        #: Runs the runtime is taking back (see ProcessHost.give_back).
        self.giving_back: set[int] = set()
        self.head_at_loss: int | None = None  # the run that was running when it died
        self.soft_memory_warned = False
        self.soft_cpu_warned = False
        self.cpu_seconds: float | None = None  # at the last usage check
        self.breach: ResourceLimitExceeded | None = None
        self.protocol_error: ProtocolViolationError | None = None  # why it was cut off
        self.killing: asyncio.Future[None] | None = None  # see ProcessHost._kill_worker
        #: Resolved when the run at the head of ``runs`` leaves it (see _cancel_run).
        self.head_moved: asyncio.Future[None] | None = None
        #: Messages handed to the worker's on_message inbox that it has not yet said it
        #: handles (``message_taken``) or returned; and those the runtime took back from it
        #: (see :meth:`ProcessHost._take_back_inbox`), whose late return is ignored.
        self.inbox: dict[str, AgentMessage] = {}
        self.taken_back: set[str] = set()
        #: Messages a task's ``receive`` got, sent to the worker and not yet confirmed as
        #: reaching the task's code (``message_taken``): back to the mailbox if the worker
        #: ends first (a pause leaves them: the worker keeps them for the task).
        self.receiving: dict[str, AgentMessage] = {}
        #: From a pause's take-back to the resume: a message the inbox's receive gets
        #: meanwhile is taken back at once (the worker will not handle it before then).
        self.inbox_closed = False


class _ReplyAsJson:
    """The wait for a worker's request's reply (begun as its frame was read), the reply
    handed over (``hand_over``: kept until the worker has it) and sent back as JSON;
    closing it (the channel drops work it never started) gives the reply up, so it is not
    left expected for good."""

    def __init__(self, pending: Awaitable[Any], hand_over: Callable[[AgentMessage], None]) -> None:
        self._pending = pending
        self._hand_over = hand_over

    def __await__(self) -> Generator[Any, None, Any]:
        message = yield from self._pending.__await__()
        if not isinstance(message, AgentMessage):
            return message
        self._hand_over(message)
        return message_to_json(message)

    def close(self) -> None:
        """Give the reply up, if the wait never began."""
        close = getattr(self._pending, "close", None)
        if callable(close):
            close()


class ProcessHost:
    """Hosts one agent in a worker process (see the module docstring)."""

    #: ``run()`` returns after a cancel only for a task that ended before the cancel
    #: reached its code (see :data:`~miminions.kernel.interfaces.AgentHost`).
    results_beat_late_cancels = True

    def __init__(self, spec: AgentSpec, runtime: AgentRuntime, pool: WorkerPool) -> None:
        self.spec = spec
        self._rt = runtime
        self._pool = pool
        self._settings = pool.settings
        #: Tasks the executor hands this host at once (see ``ProcessSettings.prefetch``).
        self.prefetch = self._settings.prefetch
        self._live: _Live | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._remove_monitor: Any = None
        self._background: set[asyncio.Future[Any]] = set()
        self._stopping = False

    @property
    def process_id(self) -> int | None:
        """The worker's pid while it runs."""
        return self._live.process.pid if self._live is not None else None

    # ------------------------------------------------------------------ AgentHost
    def _worker_setup(self) -> list[Any]:
        """Import paths of functions the worker calls first (a tracing plugin's setup),
        from ``miminions_worker_setup``."""
        answers = self._rt.plugin_manager.hook.miminions_worker_setup(
            spec=self.spec, runtime=self._rt
        )
        refuse_coroutines(answers, "miminions_worker_setup")
        return list(answers)

    async def start(self, resume_state: Any = None) -> None:
        """Start a worker, build the agent there, run ``on_start`` (and ``on_resume``)."""
        self._stopping = False
        if self._live is not None:
            await self._discard(self._live, "restarted")
        limits = self._limits()
        boot = {
            "agent_id": self.spec.agent_id,
            "name": self.spec.name,
            "group": self.spec.group,
            "kind": self.spec.kind,
            "target": self.spec.target,
            "config": self.spec.config,
            "max_memory_mb": limits.max_memory_per_agent_mb,
            "max_cpu_seconds": limits.max_cpu_time_per_agent_seconds,
            "main_path": _main_path(),
            "main_module": _main_module(),
            # Import paths of functions the worker calls first (a tracing plugin's setup).
            "worker_setup": self._worker_setup(),
        }
        process = await self._pool.launch(boot)
        loop = asyncio.get_running_loop()
        live_box: list[_Live] = []
        _, channel = await loop.create_unix_connection(
            lambda: FrameChannel(
                self._handle,
                lambda exc: self._channel_lost(live_box, exc),
                reply_too_large=_ANSWER_TOO_LARGE,
            ),
            sock=process.sock,
        )
        live = _Live(process, channel)
        live_box.append(live)
        self._live = live
        process.exited.add_done_callback(lambda _: self._exited(live))
        # Watched from launch: the limits hold while on_start (or on_resume) runs too.
        self._remove_monitor = self._pool.add_monitor(lambda: self._check_usage(live))
        try:
            await self._call(live, "start", resume_state=resume_state)
        except BaseException as exc:
            await self._discard(live, "start failed")
            if live.breach is None and isinstance(exc, ChannelClosedError):
                # Its SIGXCPU may be seen only now, after the closed connection: the
                # limit, not a crash.
                self._note_cpu_breach(live, await self._exit_code(live))
            if live.breach is not None:
                raise live.breach from None
            if live.protocol_error is not None:
                raise AgentCrashedError(
                    f"the worker of agent {self.spec.name!r} broke the wire protocol while "
                    f"starting: {live.protocol_error}"
                ) from None
            if isinstance(exc, ChannelClosedError):
                raise AgentCrashedError(
                    f"the worker of agent {self.spec.name!r} "
                    f"{describe_exit(await self._exit_code(live))} while starting"
                ) from None
            raise
        self._heartbeat = asyncio.ensure_future(self._beat(live))

    async def run(self, task: Task, checkpoint: Any = None) -> Any:
        """Send the task to the worker and return its result (one frame each way)."""
        live = self._live
        if live is None or not live.process.alive:
            # Dispatched in the moment between a crash and the runtime hearing of it.
            raise TaskNotStartedError(f"agent {self.spec.name!r} has no running worker")
        if live.channel.closed.done():
            raise await self._not_begun(live)
        # The checkpoint goes once, in the task (twice, a checkpoint over half a frame's
        # limit made every later attempt of its task too large to send).
        wired = task_to_wire(task)
        wired.pop("checkpoint", None)
        if checkpoint is not None:
            wired["checkpoint"] = checkpoint
        run_id, reply = live.channel.start_request("run", task=wired)
        live.runs[run_id] = task.task_id
        try:
            return await reply
        except RemoteAgentError as exc:
            if run_id in live.giving_back and exc.remote_type == "TaskNotStartedError":
                raise TaskNotStartedError(
                    f"task {task.task_id} was given back before agent {self.spec.name!r} began it"
                ) from None
            raise
        except asyncio.CancelledError as cancel:
            # Seen through to its end even if this is cancelled again meanwhile (bounded by
            # the grace period and a kill): the run must not end while the worker may still
            # be running the task, or the task could be handed out and run twice at once.
            # Cancelled by a stop giving up waiting (RUN_GIVEN_UP) or by a forced stop
            # (RUN_STOPPED_AT_ONCE), now or later: the worker is killed now.
            outcome = live.channel.reclaim(run_id, reply)
            stopping = asyncio.ensure_future(self._cancel_run(live, run_id, outcome))
            killing = self._kill_for(live, cancel)
            while not stopping.done():
                try:
                    await asyncio.shield(stopping)
                except asyncio.CancelledError as again:
                    if killing is None and not stopping.done():
                        killing = self._kill_for(live, again)
            while killing is not None and not killing.done():  # dead before the run ends
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(killing)
            stopping.result()
            if _ran_to_its_end(outcome):
                # The task ended in the worker before the cancel reached its code (the
                # worker answers a run that saw its cancel "cancelled", whatever the agent's
                # code returned): the executor decides what its result counts for.
                return outcome.result()
            raise
        except ChannelClosedError:
            if live.head_at_loss is None or live.head_at_loss != run_id:
                raise await self._not_begun(live) from None
            raise await self._crash_error(live) from None
        finally:
            was_head = next(iter(live.runs), None) == run_id
            live.runs.pop(run_id, None)
            live.giving_back.discard(run_id)
            moved = live.head_moved
            if was_head and moved is not None:
                live.head_moved = None
                if not moved.done():
                    moved.set_result(None)

    async def give_back(self, task_id: str) -> bool:
        """Take back ``task_id``, handed to the worker ahead of time, if its code has not
        begun there: True if it is given back (:meth:`run` then raises
        TaskNotStartedError), False if it began (it runs on, and :meth:`run` returns or
        raises its outcome) or has ended. The worker decides, as it begins each run, so a
        task taken back is never also run. Raises (InvalidStateError, ChannelClosedError)
        when the worker is gone and cannot say."""
        live = self._require_live()
        run_id = next((run for run, task in live.runs.items() if task == task_id), None)
        if run_id is None:
            return False
        live.giving_back.add(run_id)
        was_frozen = live.frozen
        self._thaw(live)  # a paused (SIGSTOPped) worker could not answer
        try:
            given = await live.channel.call("give_back", run=run_id)
        finally:
            self._refreeze(live, was_frozen)
        if given is not True:
            live.giving_back.discard(run_id)
            return False
        return True

    def _refreeze(self, live: _Live, was_frozen: bool) -> None:
        """SIGSTOP a worker thawed for a moment again if its agent is still paused."""
        if was_frozen and live.paused and not self._stopping and live.process.alive:
            live.process.signal(signal.SIGSTOP)  # still paused (not resumed): no CPU
            live.frozen = True

    async def pause(self) -> Any:
        """Halt the task at its next safe point, run ``on_pause``, then SIGSTOP the worker.

        Cancelled (the pause timed out, or a stop abandoned it), the worker abandons the
        pause too: see :meth:`_abandon_pause`.
        """
        live = self._require_live_for("its pause")
        request_id, reply = live.channel.start_request("pause")
        try:
            state = await reply
        except ChannelClosedError:
            raise self._ended_during("its pause") from None
        except asyncio.CancelledError:
            outcome = live.channel.reclaim(request_id, reply)
            live.channel.notify("cancel", run=request_id)
            abandoning = asyncio.ensure_future(self._abandon_pause(live, outcome))
            self._background.add(abandoning)
            abandoning.add_done_callback(self._background_done)
            # Wait (bounded) for the worker to reopen its gate, so the agent the caller
            # makes available again takes its next task unhindered; a worker slower than
            # the grace period reopens it when its answer comes.
            await asyncio.wait({abandoning}, timeout=self._settings.cancel_grace_seconds)
            raise
        state = _paused_state(state)
        live.inbox_closed = True
        self._take_back_inbox(live)
        live.process.signal(signal.SIGSTOP)
        live.frozen = True
        live.paused = True
        return state

    async def _abandon_pause(self, live: _Live, outcome: asyncio.Future[Any]) -> None:
        """Undo in the worker a pause the runtime gave up on.

        The ``cancel`` notice stops a pause still waiting for its safe point or running
        ``on_pause`` (the worker reopens its gate itself). But a pause the worker finished
        just before the cancel reached it left its gate closed, and ``on_pause`` ran: the
        agent would stay halted at its next safe point while the runtime reports it
        running. Then the worker is told to resume with the state ``on_pause`` returned, so
        ``on_resume`` balances it and the gate opens.
        """
        try:
            reply = await outcome
        except Exception:
            return  # the pause was cancelled or failed in the worker: its gate is open
        if self._stopping or self._live is not live or not live.process.alive:
            return  # the worker is being stopped or is gone: there is nothing to reopen
        try:
            state = _paused_state(reply)
        except ValidationError:
            state = {}  # on_pause returned something that is not JSON: resume with nothing
        try:
            await self._call(live, "resume", state=state)
        except ChannelClosedError:
            return  # it died meanwhile; that is reported as its crash
        except Exception as exc:
            reason = f"on_resume failed after an abandoned pause: {exc}"
            await self._kill_worker(live, reason, {})

    async def resume(self, state: Any) -> None:
        """SIGCONT the worker, run ``on_resume(state)`` and let the task continue."""
        live = self._require_live_for("its resume")
        live.paused = False
        self._thaw(live)
        live.inbox_closed = False
        try:
            await self._call(live, "resume", state=state)
        except ChannelClosedError:
            raise self._ended_during("its resume") from None

    def _ended_during(self, what: str) -> HostEndedError:
        """The error of a lifecycle call whose worker died under it: a crash, which the
        worker's exit reports (restart policy), not a failure of the agent's hook."""
        return HostEndedError(
            f"the worker process of agent {self.spec.name!r} ended during {what}; it is "
            "handled as a crash"
        )

    async def notify_error(self, error: BaseException, task: Task | None) -> None:
        """Run the agent's ``on_error`` in its worker."""
        live = self._live
        if live is None or not live.process.alive:
            return
        await self._call(
            live,
            "error",
            error=error_to_wire(error),
            task=None if task is None else task_to_wire(task),
        )

    def request_stop(self) -> None:
        """Tell the worker a stop is coming (``context.is_stopping``)."""
        self._stopping = True
        if self._live is not None:
            self._live.channel.notify("stop_requested")

    async def stop(self, timeout_seconds: float) -> None:
        """Run ``on_stop`` (within ``timeout_seconds``), then end the worker: it exits on
        its own, or gets SIGTERM and, after the grace period, SIGKILL."""
        live = self._live
        if live is None:
            return
        live.process.expected_exit = True
        self._thaw(live)
        crashed = False
        try:
            async with asyncio.timeout(timeout_seconds + self._settings.cancel_grace_seconds):
                await self._call(live, "stop", timeout=timeout_seconds)
        except TimeoutError:
            # Its worker did not answer at all (its loop blocked): ended below, and said,
            # as one that answers reports its own timeout.
            raise HookTimeoutError(f"on_stop did not finish within {timeout_seconds} s") from None
        except ChannelClosedError:
            crashed = True  # the worker ended in on_stop: ended below, and said
        finally:
            await self._end(live, graceful=True)
        if crashed:
            raise AgentCrashedError(
                f"its worker process {describe_exit(await self._exit_code(live))} in on_stop"
            )

    async def kill(self) -> None:
        """SIGKILL the worker without running any hook."""
        live = self._live
        if live is not None:
            await self._discard(live, "killed")

    # ------------------------------------------------------------------ worker requests
    def _handle(self, frame: Frame) -> Any:
        op = frame["op"]
        if op == "checkpoint":
            task_id = frame.get("task_id")
            if not isinstance(task_id, str):
                raise ValidationError("checkpoint needs a task_id")
            task = self._rt.task_book.get(task_id)
            if task.assigned_agent_id != self.spec.agent_id or task.status.is_terminal:
                raise ValidationError(f"task {task_id!r} is not running on this agent")
            return self._rt.task_book.save_checkpoint(task_id, frame.get("state"))
        if op == "msg":
            call, payload = frame.get("call"), frame.get("payload")
            if not isinstance(call, str) or not isinstance(payload, dict):
                raise ValidationError("a messaging call needs 'call' and 'payload'")
            live = self._live
            if call == "return_message" and live is not None and self._returned(live, payload):
                return None  # the runtime took it back already (a pause): not twice
            if call in IMMEDIATE_CALLS:
                # Carried out at once. The acknowledgement is a settled future: the channel
                # replies from its done callback, on the next turn of the loop, after the
                # receivers this woke (queued first) sent their frames.
                value = self._rt.messenger.handle_now(self.spec.agent_id, call, payload)
                acknowledgement = asyncio.get_running_loop().create_future()
                acknowledgement.set_result(value)
                return acknowledgement
            if call == "request":
                # Posted now, as the frame is read: a send the agent made after it, read in
                # the same batch of frames and carried out at once, must not overtake it.
                started = self._rt.messenger.begin_call(self.spec.agent_id, call, payload)
                return _ReplyAsJson(started, partial(self._hand_over, live, inbox=False))
            return self._messaging(call, payload, live)
        if op == "usage":
            self._rt.report_usage(self.spec.agent_id, frame.get("tokens", 0), frame.get("cost", 0))
            return None
        if op == "task_halted":
            task_id = frame.get("task_id")
            if isinstance(task_id, str):
                self._rt.report_task_halted(self.spec.agent_id, task_id)
            return None
        if op == "message_taken":
            if self._live is not None:
                message_id = str(frame.get("message_id"))
                self._live.inbox.pop(message_id, None)
                self._live.receiving.pop(message_id, None)
            return None
        raise ValidationError(f"unknown request {op!r} from the worker")

    @staticmethod
    def _returned(live: _Live, payload: dict[str, Any]) -> bool:
        """The worker returns an inbox message: True if the runtime took it back already
        (then the return is dropped); else it is no longer in the worker's hands."""
        message = payload.get("message")
        message_id = message.get("message_id") if isinstance(message, dict) else None
        if not isinstance(message_id, str):
            return False  # malformed: the messenger says why
        live.inbox.pop(message_id, None)
        live.receiving.pop(message_id, None)
        if message_id in live.taken_back:
            live.taken_back.discard(message_id)
            return True
        return False

    def _take_back_inbox(self, live: _Live) -> None:
        """Put the messages the worker's inbox holds but has not begun to handle back in
        the agent's (durable) mailbox: when the worker ends, and on a pause.

        A pause calls it once the worker's pause reply is in, before it is stopped: every message
        the inbox took before the pause closed its gate has been reported as taken by
        then (that notice precedes the reply), so what is left was not handled and will
        not be (the worker returns it as it finds its gate closed, and that return is
        ignored). Without this, such a message sat unread in a stopped worker: lost if
        the runtime died during the pause, as its stored copy went when it was handed
        over."""
        # Each goes to the front of the mailbox: the last taken first keeps their order.
        for message in reversed(live.inbox.values()):
            self._rt.messenger.put_back(message)
            live.taken_back.add(message.message_id)
        live.inbox.clear()

    def _take_back_unhandled(self, live: _Live) -> None:
        """The worker ended: every message it was handed but had not begun to handle (its
        inbox's, and those its tasks' receives got but never saw) goes back to the
        agent's mailbox, where the next worker finds it."""
        self._take_back_inbox(live)
        for message in reversed(live.receiving.values()):
            self._rt.messenger.put_back(message)
        live.receiving.clear()

    async def _messaging(self, call: str, payload: dict[str, Any], live: _Live | None) -> Any:
        """A messaging call from the agent's context (its worker's: ``live``) that may
        wait, carried out in the runtime."""
        result = await self._rt.agent_call(self.spec.agent_id, call, payload)
        if isinstance(result, AgentMessage):
            if call == "receive":
                self._hand_over(live, result, inbox=bool(payload.get("inbox")))
            return message_to_json(result)
        return result

    def _hand_over(self, live: _Live | None, message: AgentMessage, *, inbox: bool) -> None:
        """``message`` goes to the worker ``live`` (a receive got it, or it is the reply to
        a request): kept until the worker says it has it (``message_taken``), so that a
        worker ending first gives it back to the mailbox; a worker gone already (or
        replaced) gives it back now. ``inbox``: its inbox took it for ``on_message``."""
        if live is None or not live.process.alive or self._live is not live:
            self._rt.messenger.put_back(message)  # its receiver is gone: keep it
            raise ChannelClosedError("the worker is gone")
        if inbox:
            live.inbox[message.message_id] = message
            if live.inbox_closed:  # paused since the receive began: not handled now
                self._take_back_inbox(live)
        else:
            live.receiving[message.message_id] = message

    # ------------------------------------------------------------------ internals
    def _require_live_for(self, what: str) -> _Live:
        """:meth:`_require_live`, but a worker that died (its death not handled yet) is
        reported as a crash during ``what``."""
        live = self._live
        if live is not None and not live.process.alive:
            raise self._ended_during(what)
        return self._require_live()

    def _require_live(self) -> _Live:
        live = self._live
        if live is None or not live.process.alive:
            raise InvalidStateError(f"agent {self.spec.name!r} has no running worker")
        return live

    def _limits(self) -> ResourceLimits:
        return self._rt.config.limits.overridden_by(self.spec.limits)

    async def _call(self, live: _Live, op: str, **payload: Any) -> Any:
        """A request to the worker; cancelling the caller cancels it in the worker too."""
        return await live.channel.call(op, **payload)

    async def _cancel_run(self, live: _Live, run_id: int, reply: asyncio.Future[Any]) -> None:
        """The task was cancelled or timed out: tell the worker; kill it if its task does
        not stop within the grace period (F-17)."""
        reply.add_done_callback(retrieve)
        if not live.process.alive:
            return
        # A paused (SIGSTOPped) worker cannot act on the cancel: let it run meanwhile.
        was_frozen = live.frozen
        self._thaw(live)
        live.channel.notify("cancel", run=run_id)
        # A run taken ahead of time, behind the one the worker runs, has not begun: the
        # worker drops it as soon as its loop is free, which the run ahead may keep busy
        # for a while (synchronous work; a hung worker is the heartbeat's to find). The
        # grace counts from when the worker may begin it: killing the worker earlier would
        # take the run ahead, which nobody cancelled, with it.
        while not reply.done() and live.process.alive and next(iter(live.runs), run_id) != run_id:
            if live.head_moved is None:
                live.head_moved = asyncio.get_running_loop().create_future()
            await asyncio.wait({reply, live.head_moved}, return_when=asyncio.FIRST_COMPLETED)
        done, _ = await asyncio.wait({reply}, timeout=self._settings.cancel_grace_seconds)
        stuck = done and _remote_type(reply) == "SyncCallStuckError"
        if done and not stuck:
            retrieve(reply)  # the run's outcome no longer matters
            self._refreeze(live, was_frozen)
            return
        grace = self._settings.cancel_grace_seconds
        why = (
            "its task's synchronous code could not be interrupted"
            if stuck
            else f"its task did not stop within {grace:g} s of being cancelled or timing out"
        )
        await self._kill_worker(live, why, {"task_ignored_cancel": True})

    def _kill_for(self, live: _Live, cancel: asyncio.CancelledError) -> asyncio.Future[None] | None:
        """The kill a cancel of a run asks for, begun: a stop giving up on its task
        (reported, the task ignored its cancel), a forced stop (the stop's own), or none."""
        message = cancel.args[:1]
        if message == (RUN_GIVEN_UP,):
            return asyncio.ensure_future(self._give_up_run(live))
        if message == (RUN_STOPPED_AT_ONCE,):
            return asyncio.ensure_future(self._end_for_forced_stop(live))
        return None

    async def _end_for_forced_stop(self, live: _Live) -> None:
        """A forced stop ends the worker's task now: the worker is killed as the stop will
        (an expected exit, no ``agent_killed``), before the task goes back to the queue."""
        if live.killing is None:
            if not live.process.alive:
                return
            live.process.expected_exit = True
            live.process.exit_reason = "was killed by a forced stop"
        await self._kill_once(live)

    async def _give_up_run(self, live: _Live) -> None:
        """The runtime gave up waiting for a cancelled task to stop (it cancelled the run
        again): kill the worker now rather than at the end of the grace period."""
        await self._kill_worker(
            live,
            "its task had not stopped when the runtime gave up waiting for it",
            {"task_ignored_cancel": True},
        )

    async def _not_begun(self, live: _Live) -> TaskNotStartedError:
        """The error of a task its worker never began: it goes back to the queue.

        Returned once the worker's process is gone (it is killed a moment after closing its
        connection, see :meth:`_lost_connection`): until the runtime has handled its end,
        the agent counts as running, and this run keeps it busy instead of letting it be
        handed task after task that would all come straight back.
        """
        await live.process.wait_exit(_LOST_WORKER_EXIT_SECONDS)
        return TaskNotStartedError(
            f"the worker of agent {self.spec.name!r} ended before it began this task"
        )

    async def _crash_error(self, live: _Live) -> BaseException:
        """The error a task gets when its worker died under it."""
        exitcode = await self._exit_code(live)
        self._note_cpu_breach(live, exitcode)
        if live.breach is not None:
            return live.breach
        reason = live.process.exit_reason or describe_exit(exitcode)
        return AgentCrashedError(
            f"the worker process of agent {self.spec.name!r} (pid {live.process.pid}) "
            f"{reason} while running the task"
        )

    async def _exit_code(self, live: _Live) -> int | None:
        await live.process.wait_exit(1.0)
        exited = live.process.exited
        return exited.result() if exited.done() else None

    def _channel_lost(self, box: list[_Live], exc: BaseException | None = None) -> None:
        if not box:
            return
        live = box[0]
        # Runs execute in order in the worker, and each begins only once the replies
        # before it are out: the first one that got no answer was the one running, unless
        # the worker had said it was ending (then it began none of them).
        channel = live.channel
        unanswered = set(channel.unanswered)
        live.head_at_loss = (
            None
            if channel.peer_ending
            else next((run_id for run_id in live.runs if run_id in unanswered), None)
        )
        if live.process.alive and not live.process.expected_exit:
            if isinstance(exc, ProtocolViolationError):
                # Killed at once, and said why: it would exit by itself (code 0) on finding
                # its connection closed, which tells the user nothing.
                live.protocol_error = exc
                self._spawn(self._kill_worker(live, f"it broke the wire protocol: {exc}", {}))
            else:
                self._spawn(self._lost_connection(live))

    async def _lost_connection(self, live: _Live) -> None:
        # Usually the process is exiting and its exit status follows in a moment; one that
        # closed its end but lives on is of no use any more.
        if not await live.process.wait_exit(1.0):
            await self._kill_worker(live, "closed its connection to the runtime", {})

    def _exited(self, live: _Live) -> None:
        """The worker process ended: if nobody asked for that, it crashed."""
        self._stop_watching(live)
        self._take_back_unhandled(live)  # what it held but had not begun is not lost
        if live.process.expected_exit:
            return
        exitcode = live.process.exited.result()
        details: JSONObject = {"pid": live.process.pid, "exit_code": exitcode}
        if exitcode is not None and exitcode < 0:
            details["signal"] = describe_exit(exitcode).rpartition(" ")[2]
        # Killed by the runtime (a heartbeat not answered, ...): why, not only the signal.
        reason = f"its worker process {live.process.exit_reason or describe_exit(exitcode)}"
        self._note_cpu_breach(live, exitcode)
        if live.breach is not None:
            reason = str(live.breach)
        self._rt.report_host_failure(self.spec.agent_id, reason, details)

    def _note_cpu_breach(self, live: _Live, exitcode: int | None) -> None:
        """A worker ended by SIGXCPU spent its CPU time limit (RLIMIT_CPU); so did one
        that survived SIGXCPU (it ignored it) and met the kernel's SIGKILL at the hard
        limit: a SIGKILL the runtime did not send, after its CPU time reached the limit."""
        limit = self._limits().max_cpu_time_per_agent_seconds
        if live.breach is not None or limit is None:
            return
        backstop = (
            exitcode == -signal.SIGKILL
            and live.process.exit_reason is None
            and live.cpu_seconds is not None
            and live.cpu_seconds >= limit
        )
        if exitcode == -signal.SIGXCPU or backstop:
            live.breach = self._breach("cpu", None, limit, "seconds")

    async def _kill_worker(self, live: _Live, reason: str, details: JSONObject) -> None:
        """Kill a misbehaving worker; it then counts as crashed (``reason`` says why).
        Once: a second caller (two runs of the worker that both ignored their cancel) waits
        for the first one's kill, reported once."""
        if live.killing is None:
            if not live.process.alive:
                return
            live.process.exit_reason = f"was killed: {reason}"
            self._rt.events.emit(
                EventType.AGENT_KILLED,
                severity=Severity.ERROR,
                agent_id=self.spec.agent_id,
                details={"pid": live.process.pid, "reason": reason, **details},
            )
        await self._kill_once(live)

    @staticmethod
    async def _kill_once(live: _Live) -> None:
        """SIGKILL the worker, once whoever asks (a second caller waits for the first kill)."""
        if live.killing is None:
            live.killing = asyncio.ensure_future(live.process.kill())
        await asyncio.shield(live.killing)

    async def _discard(self, live: _Live, why: str) -> None:
        """End a worker on purpose, at once."""
        live.process.expected_exit = True
        live.process.exit_reason = why
        await self._end(live, graceful=False)

    async def _end(self, live: _Live, *, graceful: bool) -> None:
        self._stop_watching(live)
        if graceful:
            if not await live.process.wait_exit(self._settings.stop_grace_seconds):
                await live.process.terminate(self._settings.stop_grace_seconds)
        else:
            await live.process.kill()
        live.channel.abort()
        self._take_back_unhandled(live)
        if self._live is live:
            self._live = None

    def _stop_watching(self, live: _Live) -> None:
        if self._live is live:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                self._heartbeat = None
            if self._remove_monitor is not None:
                self._remove_monitor()
                self._remove_monitor = None

    def _thaw(self, live: _Live) -> None:
        if live.frozen:
            live.process.signal(signal.SIGCONT)
            live.frozen = False

    # ------------------------------------------------------------------ heartbeat
    async def _beat(self, live: _Live) -> None:
        """Ping the worker's loop; one that does not answer in time is hung (F-07)."""
        settings = self._settings
        while live.process.alive:
            await asyncio.sleep(settings.heartbeat_interval_seconds)
            if live.frozen or not live.process.alive:
                continue
            reply = live.channel.request("ping")
            reply.add_done_callback(retrieve)  # also when the beat is cancelled meanwhile
            done, _ = await asyncio.wait({reply}, timeout=settings.heartbeat_timeout_seconds)
            if not done:
                reply.cancel()
                if live.frozen:  # paused meanwhile: a stopped process cannot answer
                    continue
                limit = settings.heartbeat_timeout_seconds
                await self._kill_worker(
                    live,
                    f"it did not answer a heartbeat within {limit:g} s",
                    {"heartbeat_timeout_seconds": limit},
                )
                return

    # ------------------------------------------------------------------ usage (F-08, F-27)
    def _check_usage(self, live: _Live) -> None:
        if not live.process.alive or live.breach is not None:
            return
        limits = self._limits()
        if not (
            limits.max_memory_per_agent_mb
            or limits.soft_memory_per_agent_mb
            or limits.soft_cpu_time_per_agent_seconds
            or limits.max_cpu_time_per_agent_seconds
        ):
            return
        pid = live.process.pid
        # With the subprocesses its agent started: they are the agent's use too.
        usage = process_probe.read_usage(pid, self._pool.members_of(pid))
        if usage is None:
            return
        live.cpu_seconds = usage.cpu_seconds  # a SIGKILL at the hard CPU limit tells by it
        rss_mb = usage.rss_bytes / MIB
        hard = limits.max_memory_per_agent_mb
        if hard is not None and rss_mb > hard:
            live.breach = self._breach("memory", rss_mb, hard, "MB")
            self._spawn(self._kill_worker(live, str(live.breach), {}))
            return
        hard_cpu = limits.max_cpu_time_per_agent_seconds
        if hard_cpu is not None and usage.cpu_seconds > hard_cpu:
            # The worker's own RLIMIT_CPU does not see its subprocesses' share.
            live.breach = self._breach("cpu", usage.cpu_seconds, hard_cpu, "seconds")
            self._spawn(self._kill_worker(live, str(live.breach), {}))
            return
        soft = limits.soft_memory_per_agent_mb
        if soft is not None and rss_mb > soft and not live.soft_memory_warned:
            live.soft_memory_warned = True
            self._soft_warning(live, "memory", rss_mb, soft, "MB")
        elif soft is not None and rss_mb <= soft:
            live.soft_memory_warned = False
        soft_cpu = limits.soft_cpu_time_per_agent_seconds
        if soft_cpu is not None and usage.cpu_seconds > soft_cpu and not live.soft_cpu_warned:
            live.soft_cpu_warned = True
            self._soft_warning(live, "cpu", usage.cpu_seconds, soft_cpu, "seconds")

    def _breach(
        self, resource: str, usage: float | None, limit: float | None, unit: str
    ) -> ResourceLimitExceeded:
        used = f"{usage:.1f} {unit}" if usage is not None else "all"
        self._rt.events.emit(
            EventType.RESOURCE_LIMIT_EXCEEDED,
            severity=Severity.ERROR,
            agent_id=self.spec.agent_id,
            details={"resource": resource, "usage": usage, "limit": limit, "unit": unit},
        )
        noun = "memory" if resource == "memory" else "CPU time"
        return ResourceLimitExceeded(
            f"agent {self.spec.name!r} used {used} of {noun}, over its limit of "
            f"{limit:g} {unit}; its worker was stopped"
        )

    def _soft_warning(
        self, live: _Live, resource: str, usage: float, limit: float, unit: str
    ) -> None:
        self._rt.events.emit(
            EventType.RESOURCE_LIMIT_WARNING,
            severity=Severity.WARNING,
            agent_id=self.spec.agent_id,
            details={"resource": resource, "usage": usage, "limit": limit, "unit": unit},
        )
        warning = ResourceLimitWarning(
            f"agent {self.spec.name!r} uses {usage:.1f} {unit} of "
            f"{'memory' if resource == 'memory' else 'CPU time'}, over its soft limit of "
            f"{limit:g} {unit}: shed load before the hard limit stops it"
        )
        self._spawn(self.notify_error(warning, None))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference; its errors are logged."""
        future = asyncio.ensure_future(work)
        self._background.add(future)
        future.add_done_callback(self._background_done)

    def _background_done(self, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("agent %r: %s", self.spec.name, future.exception())


def _ran_to_its_end(outcome: asyncio.Future[Any]) -> bool:
    """Whether a run's reply (see :meth:`FrameChannel.reclaim`) is its result."""
    return outcome.done() and not outcome.cancelled() and outcome.exception() is None


def _remote_type(future: asyncio.Future[Any]) -> str | None:
    """The remote exception type a settled reply carries, if any."""
    if future.cancelled():
        return None
    error = future.exception()
    return getattr(error, "remote_type", None)


def _main_path() -> str | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) else None


def _main_module() -> str | None:
    """The name of the main module when the program was run with ``python -m name``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return name if isinstance(name, str) and name != "__main__" else None


@hookimpl(trylast=True)  # built-in: another plugin may take over process agents
def miminions_make_host(spec: AgentSpec, agent: object, runtime: AgentRuntime) -> Any:
    """Host agents registered with ``isolation="process"`` in worker processes."""
    if spec.isolation != "process":
        return None
    if spec.kind == "instance" or spec.target is None:
        what = (
            "an agent object"
            if spec.kind == "instance"
            else f"{agent!r}, defined inside a function,"
        )
        raise ValidationError(
            f"agent {spec.name!r} cannot run in a worker process: {what} cannot be imported "
            "there (workers import agents by module path; they never receive pickled code). "
            "Register a class or function defined at module level of an importable module, "
            "or pass isolation='inline'"
        )
    if spec.target.startswith("__main__:") and _in_main(spec.target) is not agent:
        # Typed into an interactive session (python -m asyncio, a notebook): named after
        # the main module, but not found in it, so not in a worker's either.
        raise ValidationError(
            f"agent {spec.name!r} cannot run in a worker process: it is not defined in the "
            "main module's file (an interactive session?), and workers import agents by "
            "module path. Define it in an importable module, or pass isolation='inline'"
        )
    return ProcessHost(spec, runtime, pool_of(runtime))


def _in_main(target: str) -> object:
    """What ``__main__:qualname`` names in this process's main module (None: nothing)."""
    found: object = sys.modules.get("__main__")
    for part in target.partition(":")[2].split("."):
        found = getattr(found, part, None)
    return found


@hookimpl(trylast=True)  # built-in: another plugin may measure load differently
def miminions_machine_load() -> float:
    """The 1-minute load average per usable CPU."""
    return process_probe.machine_load()


@hookimpl
def miminions_runtime_started(runtime: AgentRuntime) -> None:
    """Reap worker processes an earlier runtime on the same database left alive (F-20)."""
    pool_of(runtime).reap_leftovers()


@hookimpl
def miminions_runtime_stopped(runtime: AgentRuntime) -> None:
    """Make sure no worker outlives the runtime: hosts stop their workers gracefully
    first; whatever is left (a stop cut short) is killed here (F-14). A runtime that
    never made its pool (its start failed making it) has no worker to kill."""
    pool = existing_pool(runtime)
    if pool is not None:
        pool.kill_all()


def _paused_state(reply: Any) -> Any:
    """What ``on_pause`` returned, from the worker's reply to ``pause`` (any JSON value);
    ValidationError, as for an inline agent, when it was not JSON."""
    if not isinstance(reply, dict):
        raise ValidationError(f"malformed reply to pause from the worker: {reply!r}")
    if "invalid" in reply:
        raise ValidationError(str(reply["invalid"]))
    return reply.get("state", {})
