"""The worker side of ``process`` isolation: the program an agent's worker process runs.

A worker is forked from the runtime's forkserver (this module and the agent modules it
needs are preloaded there, so a start costs a fork, not an interpreter start). It gets one
end of a socket pair and a boot record; it imports the agent by its import path (never
unpickles code or stored data), builds it, and then serves the runtime's requests over JSON
frames (:mod:`miminions.kernel.wire`) on its own asyncio loop, with the same
:class:`~miminions.kernel.agent_runner.AgentRunner` the ``inline`` host uses.

It exits when the runtime says stop, when the socket closes, and, on Linux, when the
process that forked it dies (``PR_SET_PDEATHSIG``), so no worker outlives its runtime.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib
import importlib.util
import math
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterable
from multiprocessing import forkserver
from typing import Any

from miminions.kernel.agent import AgentContext, ContextChannel, loading_main_in_worker
from miminions.kernel.agent_runner import AgentRunner
from miminions.kernel.errors import (
    ConfigurationError,
    MessageTooLargeError,
    MiminionsError,
    TaskCancelledError,
    TaskNotStartedError,
    ValidationError,
)
from miminions.kernel.task_input import PAUSE_STATE, refuse_non_string_keys, to_json_value
from miminions.kernel.validation import check_seconds, check_utf8
from miminions.kernel.wire import (
    Frame,
    FrameChannel,
    FrameTooLargeError,
    kernel_error_from_wire,
    retrieve,
    task_from_wire,
)
from miminions.plugins.interpreter_settings import LINUX_DEFAULT_TIMER_SLACK_NS, set_timer_slack

_PR_SET_PDEATHSIG = 1
#: The messaging calls that carry a message's data.
_MESSAGE_CALLS = frozenset({"send", "send_to_group", "broadcast", "publish", "request", "reply"})
_MAIN_MODULE = "__miminions_main__"
MIB = 1024 * 1024
# Address space a Python worker reserves beyond its RSS: thread stacks (8 MiB each) and
# glibc's per-thread malloc arenas (64 MiB each, up to eight per CPU) count, so a small
# headroom stops an agent from starting a few dozen threads. RLIMIT_AS is only a backstop
# against a runaway allocation; the runtime's RSS watch is what enforces the limit.
ADDRESS_SPACE_HEADROOM = 4096 * MIB


def locate(target: str, main_path: str | None = None, main_module: str | None = None) -> Any:
    """Import ``module:qualname`` and return the object.

    ``__main__`` is the runtime's main module: the one run with ``python -m``
    (``main_module``) imported by its name, as multiprocessing does, else the main script
    loaded from ``main_path`` under another module name; either way its
    ``if __name__ == "__main__":`` block does not run here.
    """
    module_name, _, qualname = target.partition(":")
    if not module_name or not qualname:
        raise ValidationError(f"agent import path {target!r} is not 'module:qualname'")
    if module_name == "__main__":
        obj: Any = _load_main(main_path, main_module)
    else:
        obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _load_main(main_path: str | None, main_module: str | None = None) -> Any:
    loaded = sys.modules.get(_MAIN_MODULE)
    if loaded is not None:
        return loaded
    if main_module:
        # Run with ``python -m package.module``: loaded by path, outside its package, its
        # relative imports failed.
        try:
            with loading_main_in_worker():
                module = importlib.import_module(main_module)
        except BaseException as exc:
            raise ValidationError(
                f"importing the main module {main_module} in the agent's worker process (to "
                f"find the agent defined there) failed with {type(exc).__name__}: {exc}"
            ) from exc
        sys.modules[_MAIN_MODULE] = module
        return module
    if not main_path:
        raise ValidationError(
            "the agent is defined in a main module that has no file (an interactive "
            "session?); define it in an importable module or use isolation='inline'"
        )
    spec = importlib.util.spec_from_file_location(_MAIN_MODULE, main_path)
    if spec is None or spec.loader is None:
        raise ValidationError(f"cannot load the main script {main_path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MAIN_MODULE] = module  # classes defined there look their module up here
    try:
        with loading_main_in_worker():
            spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[_MAIN_MODULE]
        raise ValidationError(
            f"loading the main script {main_path} in the agent's worker process (to find "
            f"the agent defined there) failed with {type(exc).__name__}: {exc}. A script "
            "that does its work at top level needs it under 'if __name__ == \"__main__\":'"
        ) from exc
    return module


def worker_main(sock: socket.socket, boot: dict[str, Any]) -> None:
    """Entry point of a worker process (called by multiprocessing in the forked child)."""
    _release_forkserver()
    # A group of its own, which the agent's subprocesses join: the runtime pauses, resumes
    # and ends them with the worker (process_probe.signal_worker). It also keeps Ctrl-C
    # away from the worker: the runtime decides how its workers stop.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    parent = os.getppid()
    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group: the runtime decides how its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _apply_limits(boot)
    _set_timer_slack(boot)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(boot)) as runner:
            runner.run(_serve(sock, boot))
    finally:
        sock.close()
    # multiprocessing ends a worker with os._exit, which skips atexit: run the handlers now,
    # so what the agent's libraries flush at exit (trace exporters, log handlers) is not
    # lost when the agent is stopped. A killed worker runs nothing, as any killed process.
    # (Handlers inherited from the forkserver's preloaded modules run too: logging's
    # shutdown, multiprocessing's, and the worker pool's, which has no worker to kill here.)
    atexit._run_exitfuncs()


def _set_timer_slack(boot: dict[str, Any]) -> None:
    """The worker's timer slack: the runtime's (``timer_slack_ns`` in the boot record, what
    its executor holds for its own loop), else Linux's default, whatever the forkserver that
    forked this worker had (it may have been started by another runtime)."""
    slack = boot.get("timer_slack_ns")
    if isinstance(slack, bool) or not isinstance(slack, int) or slack < 1:
        slack = LINUX_DEFAULT_TIMER_SLACK_NS
    set_timer_slack(slack)


def _loop_factory(boot: dict[str, Any]) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event-loop factory the runtime chose for its workers (an import path in the boot
    record, e.g. ``uvloop:new_event_loop``), or None for the standard asyncio loop."""
    path = boot.get("loop_factory")
    if not path:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = locate(
        str(path), boot.get("main_path"), boot.get("main_module")
    )
    return factory


def _release_forkserver() -> None:
    """Let go of the forkserver's "alive" pipe, which multiprocessing hands every child the
    forkserver forks.

    The forkserver exits when it reads EOF on that pipe, i.e. once every process holding its
    write end is gone: the runtime, and (without this) every worker. A worker whose loop
    cannot notice the closed socket (SIGSTOPped while paused, blocked in synchronous code,
    spinning) would then keep the forkserver alive after the runtime was SIGKILLed, and the
    forkserver's exit is what fires the worker's ``PR_SET_PDEATHSIG``: both would outlive
    the runtime. Also forgets the forkserver's address, so agent code using multiprocessing
    with forkserver starts its own instead of asking the runtime's. (Nothing to do in a
    spawned worker: it never had the pipe.)
    """
    server: Any = getattr(forkserver, "_forkserver", None)
    if server is None:
        return
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(alive_fd, int):
        with contextlib.suppress(OSError):
            os.close(alive_fd)
    server._forkserver_alive_fd = None
    server._forkserver_address = None
    server._forkserver_pid = None


def _die_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


#: Fields of a context call's payload that carry the agent's data (checked as data).
_DATA_FIELDS = frozenset({"data", "value", "expected", "request", "trace_context", "message"})


def _check_call_arguments(payload: dict[str, Any]) -> None:
    """Check a context call's arguments as the runtime would, before the wire tries to
    encode them: a NaN timeout or a key with a lone surrogate failed as "message data must
    be JSON-serialisable" or "data sent between the runtime and a worker cannot be encoded",
    naming nothing the agent gave. Recipients given as a set, tuple or generator go as a
    list, as an inline agent's do."""
    for name, value in list(payload.items()):
        if name in _DATA_FIELDS:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            check_seconds(value, name)  # raises, naming the argument
        elif isinstance(value, str):
            check_utf8(value, name)
        elif name == "recipients" and isinstance(value, bytes | bytearray):
            raise ValidationError("recipients must be agent ids (strings), got bytes: decode them")
        elif name == "recipients" and isinstance(value, Iterable) and not isinstance(value, list):
            payload[name] = value = list(value)  # any iterable, as the runtime takes
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str):
                    check_utf8(item, name)


def _apply_limits(boot: dict[str, Any]) -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file
    memory_mb = boot.get("max_memory_mb")
    if memory_mb:
        current = _address_space_bytes()
        cap = current + int(memory_mb * MIB) + ADDRESS_SPACE_HEADROOM
        # A cap beyond what the kernel can hold means no cap (OverflowError, ValueError).
        with contextlib.suppress(ValueError, OSError, OverflowError):
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    cpu_seconds = boot.get("max_cpu_seconds")
    if cpu_seconds:
        soft = max(1, math.ceil(cpu_seconds))
        # SIGXCPU at the soft limit ends the worker; the hard limit (SIGKILL) is the backstop.
        with contextlib.suppress(ValueError, OSError, OverflowError):
            resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 2))


def _address_space_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _run_setups(boot: dict[str, Any]) -> None:
    """Call the functions plugins named for this worker (``miminions_worker_setup``), in
    order, before the agent is imported; one that fails fails the agent's start."""
    for path in boot.get("worker_setup") or ():
        try:
            locate(str(path), boot.get("main_path"), boot.get("main_module"))()
        except Exception as exc:
            raise ConfigurationError(
                f"the worker setup {path!r} a plugin asked for (miminions_worker_setup) "
                f"failed with {type(exc).__name__}: {exc}"
            ) from exc


class SyncCallStuckError(Exception):
    """A cancelled task's synchronous code keeps running in the agent's thread."""


class Worker:
    """Serves one agent to the runtime over a :class:`FrameChannel`."""

    def __init__(self, boot: dict[str, Any]) -> None:
        self.boot = boot
        self.channel: FrameChannel | None = None
        self.done = asyncio.get_running_loop().create_future()
        # Tasks the runtime prefetched wait here and run one at a time, in arrival order.
        self._run_lock = asyncio.Lock()
        self._runs_ended = 0  # runs this worker finished (see _run)
        self._begun: set[int] = set()  # request ids of the runs whose agent code began
        self._runner: AgentRunner | None = None
        # By watch id: the outcome of a key-value watch's ``kv_next`` the agent gave up on
        # (see _reclaimed_change).
        self._kv_reclaimed: dict[Any, asyncio.Future[Any]] = {}
        self._kv_asking: dict[Any, asyncio.Lock] = {}  # one kv_next at a time, by watch

    @property
    def runner(self) -> AgentRunner:
        """The agent's runner, built on first use: an import error then fails the start
        request, so the runtime can tell the user what went wrong."""
        if self._runner is None:
            boot = self.boot
            _run_setups(boot)
            self._runner = AgentRunner(
                str(boot["name"]),
                str(boot["kind"]),
                locate(str(boot["target"]), boot.get("main_path"), boot.get("main_module")),
                make_context=self._make_context,
                save_checkpoint=self._save_checkpoint,
                report_usage=self._report_usage,
                runtime_call=self._runtime_call,
                message_taken=self._message_taken,
                task_halted=self._task_halted,
            )
        return self._runner

    def _make_context(self, channel: ContextChannel) -> AgentContext:
        boot = self.boot
        return AgentContext(
            agent_id=str(boot["agent_id"]),
            name=str(boot["name"]),
            group=boot.get("group"),
            config=boot.get("config") or {},
            channel=channel,
        )

    async def _save_checkpoint(self, task_id: str, state: Any) -> None:
        assert self.channel is not None
        # checked here, so a bad state fails the same way as in an inline agent
        state = to_json_value(state, "checkpoint state")
        await self.channel.request("checkpoint", task_id=task_id, state=state)

    async def _runtime_call(self, op: str, payload: dict[str, Any]) -> Any:
        if op == "kv_next":
            return await self._next_change(payload)
        if op == "kv_unwatch":  # what a given-up next brings is nobody's now
            self._kv_reclaimed.pop(payload.get("watch_id"), None)
            self._kv_asking.pop(payload.get("watch_id"), None)
        return await self._call_runtime(op, payload)

    async def _next_change(self, payload: dict[str, Any]) -> Any:
        """A key-value watch's next change. One ``next`` of a watch at a time: one given up
        on may have a change on its way (its answer not read yet), which is the watch's
        next, ahead of any the runtime still holds (see _reclaimed_change)."""
        watch_id = payload.get("watch_id")
        async with self._kv_asking.setdefault(watch_id, asyncio.Lock()):
            change = await self._reclaimed_change(watch_id)
            if change is not None:
                return change
            return await self._call_runtime("kv_next", payload)

    async def _call_runtime(self, op: str, payload: dict[str, Any]) -> Any:
        assert self.channel is not None
        channel = self.channel
        what = "key-value data" if op.startswith("kv_") else "message data"
        _check_call_arguments(payload)
        for field in ("data", "value", "expected"):
            if isinstance(payload.get(field), dict | list):
                # The wire would turn a key that is not a string into one, silently: refused
                # here, as the runtime refuses it from an inline agent.
                refuse_non_string_keys(payload[field], what)
        try:
            request_id, reply = channel.start_request("msg", call=op, payload=payload)
        except FrameTooLargeError as exc:
            if op in _MESSAGE_CALLS:
                # a message that could never reach the runtime: what an inline agent gets
                raise MessageTooLargeError(str(exc)) from None
            raise
        except ValidationError:
            raise  # not UTF-8: the error says so
        except (TypeError, ValueError) as exc:
            # what the runtime would say, had the data reached it: it is not JSON
            raise ValidationError(f"{what} must be JSON-serialisable: {exc}") from None
        try:
            result = await reply
        except asyncio.CancelledError:
            channel.notify("cancel", run=request_id)
            # A receive (or a request's reply) the runtime answered just before the cancel
            # reached it carries a message nobody will handle here: hand it back rather
            # than drop it (to this agent's mailbox).
            outcome = channel.reclaim(request_id, reply)
            if op in ("receive", "request"):
                outcome.add_done_callback(self._return_message)
            elif op == "kv_next":  # a change it brings is the watch's next one
                self._kv_reclaimed[payload.get("watch_id")] = outcome
            else:
                outcome.add_done_callback(retrieve)
            raise
        except (TypeError, ValueError) as exc:
            if isinstance(exc, MiminionsError):  # the runtime's answer
                raise
            # what the runtime would say, had the data reached it: it is not JSON
            raise ValidationError(f"{what} must be JSON-serialisable: {exc}") from None
        if (op == "request" or (op == "receive" and not payload.get("inbox"))) and isinstance(
            result, dict
        ):
            # The task has it (a message, or a request's reply): the runtime stops keeping
            # it for a worker that might die.
            # Written out now: a task crashing its worker on the message in this loop turn
            # must not get it back on every retry. (The inbox's receive says so itself,
            # once the agent's gate let it through.)
            channel.notify("message_taken", message_id=result.get("message_id"))
            channel.flush_now()
        return result

    def _return_message(self, reply: asyncio.Future[Any]) -> None:
        if reply.cancelled() or reply.exception() is not None or self.channel is None:
            return
        returning = self.channel.request(
            "msg", call="return_message", payload={"message": reply.result()}
        )
        returning.add_done_callback(retrieve)

    async def _reclaimed_change(self, watch_id: Any) -> Any:
        """The change a ``kv_next`` of the watch given up on brought (it is the watch's
        next, ahead of any the runtime still holds), or None."""
        earlier = self._kv_reclaimed.pop(watch_id, None)
        if earlier is None:
            return None
        try:
            await asyncio.wait({earlier})
        except asyncio.CancelledError:
            self._kv_reclaimed[watch_id] = earlier  # still the next one
            raise
        if earlier.cancelled() or earlier.exception() is not None:
            return None
        change = earlier.result()
        return change if isinstance(change, dict) else None

    def _message_taken(self, message_id: str) -> None:
        # Written out now, before on_message runs: before any pause reply this worker sends
        # later, and in the runtime's hands even if the handler kills the worker in this
        # loop turn (else the message would come back and crash every restart).
        if self.channel is not None:
            self.channel.notify("message_taken", message_id=message_id)
            self.channel.flush_now()

    def _task_halted(self, task_id: str) -> None:
        # Sent now, ahead of on_pause and its reply: the task's timeout stops counting.
        if self.channel is not None:
            self.channel.notify("task_halted", task_id=task_id)
            self.channel.flush_now()

    def _report_usage(self, tokens: int, cost: float) -> None:
        if self.channel is not None:
            self.channel.notify("usage", tokens=tokens, cost=cost)

    # ------------------------------------------------------------------ requests
    def handle(self, frame: Frame) -> Any:
        """Serve one request or notice from the runtime. A request's work is a coroutine
        the channel runs in a task it keeps by the request's id, so a later ``cancel``
        notice cancels it (a run, a pause)."""
        op = frame["op"]
        if op == "ping":
            return None
        if op == "stop_requested":
            self.runner.request_stop()
            return None
        if op == "give_back":
            return self._give_back(frame.get("run"))
        return self._work_for(op, frame)

    def _give_back(self, run_id: Any) -> bool:
        """The runtime takes back run ``run_id``, handed over ahead of time, unless its
        code began: True if it is dropped (its reply is a TaskNotStartedError, after this
        answer), False if it began (it runs on; its reply is its outcome) or has ended
        (its reply went before this answer). Decided here, where the run begins, so a run
        can never be both given back and run."""
        if not isinstance(run_id, int) or run_id in self._begun or self.channel is None:
            return False
        given_back = TaskNotStartedError("given back to the runtime before it began")
        return self.channel.cancel_work(run_id, given_back)

    def _work_for(self, op: str, frame: Frame) -> Coroutine[Any, Any, Any]:
        if op == "run":
            return self._run(frame, self._runs_ended)
        if op == "start":
            return self.runner.start(frame.get("resume_state"))
        if op == "pause":
            return self._pause()
        if op == "resume":
            return self.runner.resume(frame.get("state", {}))
        if op == "error":
            return self._on_error(frame)
        if op == "stop":
            return self._stop(float(frame.get("timeout", 5.0)))
        raise ValidationError(f"unknown request {op!r}")

    async def _pause(self) -> Frame:
        """Pause at the next safe point and run ``on_pause``; the reply holds the state it
        returned, or (``invalid``) why that cannot be stored: it must be JSON, and the
        runtime raises ValidationError for it as for an inline agent."""
        state = await self.runner.pause()
        try:
            return {"state": to_json_value(state, PAUSE_STATE)}
        except ValidationError as exc:
            return {"invalid": str(exc)}

    async def _run(self, frame: Frame, runs_ended_at_receipt: int) -> Any:
        task = task_from_wire(frame.get("task"))
        async with self._run_lock:
            if self._runs_ended != runs_ended_at_receipt:
                # Sent ahead of time, this run waited behind another, which may have kept
                # the loop busy: a cancel of this run may wait unread in the socket (the
                # runtime counts the run as never begun, and may hand the task to another
                # agent). Two turns of the loop read the socket in between, whatever turn
                # this step is in, so such a cancel ends this run before its code begins.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
            # The reply of the run before this one must be on its way before this task's
            # code runs: if this task kills the process, the runtime must not blame that
            # one. That reply was queued as the previous run ended (before this run got
            # the lock); it may still wait for the end of the loop turn: send it now.
            if self.channel is not None:
                self.channel.flush_now()
                # ... and not just handed to the transport: a big reply may wait in its
                # buffer, and a task that ends the process would take that with it.
                await self.channel.drain()
            request_id = frame.get("id")
            if isinstance(request_id, int):
                self._begun.add(request_id)  # no await since the last: see _give_back
            try:
                result = await self.runner.run(task, task.checkpoint)
                if (
                    self.channel is not None
                    and isinstance(request_id, int)
                    and self.channel.cancel_asked(request_id)
                ):
                    # The agent's code swallowed the cancel and returned: what a cancelled
                    # task returns is dropped (as for an inline agent). Only a run that
                    # ended before its cancel was read brings a result back.
                    raise asyncio.CancelledError()
            except asyncio.CancelledError:
                if self.runner.sync_call_running:
                    # This run's own sync code cannot be stopped: the runtime must end
                    # the process. (A run still waiting for the lock just ends.)
                    raise SyncCallStuckError(
                        "the task's synchronous code is still running and cannot be interrupted"
                    ) from None
                if (
                    self.channel is not None
                    and isinstance(request_id, int)
                    and not self.channel.cancelled_here(request_id)
                ):
                    # Nobody cancelled the run: the agent's code raised CancelledError
                    # itself (or cancelled its own task). The task fails, as an inline
                    # agent's does.
                    raise TaskCancelledError("the agent's code raised CancelledError") from None
                raise
            finally:
                self._runs_ended += 1
                self._begun.discard(request_id)
        return to_json_value(result, "the task result")

    async def _on_error(self, frame: Frame) -> None:
        task_data = frame.get("task")
        task = None if task_data is None else task_from_wire(task_data)
        await self.runner.notify_error(kernel_error_from_wire(frame.get("error")), task)

    async def _stop(self, seconds: float) -> None:
        try:
            await self.runner.stop(seconds)
        finally:
            # reply first (the frame is flushed on the next loop turn), then leave
            asyncio.get_running_loop().call_soon(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def lost(self, exc: BaseException | None) -> None:
        """The runtime closed the socket (or died): stop serving."""
        if self._runner is not None:
            self._runner.release()
        self._finish()


async def _serve(sock: socket.socket, boot: dict[str, Any]) -> None:
    worker = Worker(boot)
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(
        lambda: FrameChannel(worker.handle, worker.lost, kernel_error_from_wire), sock=sock
    )
    worker.channel = channel
    await worker.done
    channel.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):  # let the transport flush the last reply
            await channel.closed
