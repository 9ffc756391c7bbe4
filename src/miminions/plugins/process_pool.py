"""Worker processes of one runtime: starting them, knowing they ended, and cleaning up.

Workers are forked by multiprocessing's forkserver (spawned where there is none) with
:mod:`miminions.plugins.process_worker` preloaded, so a start costs a fork. Each gets one
end of a socket pair; nothing else connects them (no listener, no Manager).

Every live worker is recorded in the runtime's store (meta key ``process.workers``: pid and
start time). A runtime that was SIGKILLed cannot stop its workers, which end on their own
when their parent goes (see the worker module); a later runtime on the same database still
reaps any that survived, after checking each really is that worker (same pid *and* start
time) before killing it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import io
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import weakref
from collections.abc import Callable
from multiprocessing import (
    forkserver,
    popen_forkserver,
    popen_spawn_posix,
    reduction,
    spawn,
    util,
)
from multiprocessing.context import ForkServerProcess, SpawnProcess, set_spawning_popen
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from miminions.kernel.agent import import_path
from miminions.kernel.errors import ConfigurationError, MiminionsError, RuntimeNotRunningError
from miminions.kernel.models import EventType, ProcessSettings, Severity
from miminions.kernel.plugins import loop_factory_of
from miminions.plugins import process_probe
from miminions.plugins.process_probe import WorkerRecord

if TYPE_CHECKING:
    from miminions.kernel.runtime import AgentRuntime

logger = logging.getLogger("miminions.plugins.process_host")
#: How often the usage checks look for an agent's subprocesses (a scan of /proc serving
#: every worker); the worker's own usage is read every ``usage_interval_seconds``.
GROUP_SCAN_SECONDS = 1.0

WORKERS_META_KEY = "process.workers"
_WORKER_MODULE = "miminions.plugins.process_worker"

# Every worker process this Python process started and has not seen exit: killed at
# interpreter exit, whatever happened to the runtimes and loops that owned them.
_LIVE: dict[int, BaseProcess] = {}


def _kill_leftovers() -> None:
    for pid, process in list(_LIVE.items()):
        with contextlib.suppress(Exception):
            if process.exitcode is None:  # polled: a pid it left may be someone else's now
                process_probe.signal_worker(pid, signal.SIGKILL)
    for pid, process in list(_LIVE.items()):
        with contextlib.suppress(Exception):
            process.join(1.0)
        process_probe.kill_leftovers(pid)
    _LIVE.clear()


# Registered after multiprocessing's own exit handler (imported above), so it runs first:
# multiprocessing would otherwise wait for the non-daemon workers at exit.
atexit.register(_kill_leftovers)


def describe_exit(exitcode: int | None) -> str:
    """How a worker ended, in words: ``killed by SIGSEGV``, ``exited with code 3``."""
    if exitcode is None:
        return "ended (exit status unknown)"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


#: How long a kill waits for the process to exit.
KILL_WAIT_SECONDS = 5.0


class WorkerProcess:
    """One started worker process: its pid, its socket and a future for its exit code."""

    def __init__(self, process: BaseProcess, sock: socket.socket, record: WorkerRecord) -> None:
        self.process = process
        self.sock = sock
        self.record = record
        self.pid = record.pid
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.expected_exit = False  # we asked it to stop or killed it on purpose
        self.exit_reason: str | None = None  # why we killed it, when we did
        loop.add_reader(process.sentinel, self._sentinel_ready, loop)

    def _sentinel_ready(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.process.sentinel)
        exitcode = self.process.exitcode
        _LIVE.pop(self.pid, None)
        # No process the agent started outlives its worker (the worker's group, see
        # process_probe.signal_worker).
        process_probe.kill_leftovers(self.pid)
        with contextlib.suppress(Exception):
            self.process.close()
        if not self.exited.done():
            self.exited.set_result(exitcode)

    @property
    def alive(self) -> bool:
        """True until the process was seen to exit."""
        return not self.exited.done()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker and the processes its agent started, unless the
        worker already ended."""
        if self.alive:
            process_probe.signal_worker(self.pid, signum)

    async def terminate(self, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``; return once it exited."""
        self.expected_exit = True
        self.signal(signal.SIGCONT)  # a stopped (paused) process cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        if not await self.wait_exit(grace_seconds):
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL; return once it exited (waiting at most :data:`KILL_WAIT_SECONDS`)."""
        self.signal(signal.SIGKILL)
        await self.wait_exit(KILL_WAIT_SECONDS)

    async def wait_exit(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the exit; True if it exited."""
        if not self.alive:
            return True
        done, _ = await asyncio.wait({self.exited}, timeout=seconds)
        return bool(done)


class WorkerPool:
    """The worker processes of one runtime (see the module docstring)."""

    def __init__(self, runtime: AgentRuntime) -> None:
        # Weak: the pool is the value of a WeakKeyDictionary keyed by its runtime, so a
        # strong reference back would keep every runtime of the process alive forever.
        self._runtime = weakref.ref(runtime)
        self.settings: ProcessSettings = runtime.config.process
        self.workers: dict[int, WorkerProcess] = {}
        #: Import path of the event-loop factory workers run their agent on (None: the
        #: standard asyncio loop), chosen once per runtime by ``miminions_loop_factory``.
        self.loop_factory = worker_loop_factory(runtime)
        self._context = _multiprocessing_context(self.settings, self.loop_factory)
        self._process_class: Any = (
            _WorkerProcess
            if self._context.get_start_method() == "forkserver"
            else _SpawnWorkerProcess
        )
        self._reaped: asyncio.Future[None] | None = None
        self._monitors: list[Callable[[], None]] = []
        # The other processes of each worker's group (its agent's subprocesses), from one
        # scan of /proc at most every GROUP_SCAN_SECONDS (see members_of).
        self._members: dict[int, list[int]] = {}
        self._members_at = -math.inf
        self._monitor_task: asyncio.Task[None] | None = None

    @property
    def runtime(self) -> AgentRuntime:
        """The runtime these workers belong to."""
        runtime = self._runtime()
        if runtime is None:
            raise RuntimeNotRunningError("the runtime of this worker pool no longer exists")
        return runtime

    # ------------------------------------------------------------------ start-up
    def reap_leftovers(self) -> None:
        """Begin reaping the workers an earlier runtime on this database left alive."""
        if self._reaped is None:
            # the runtime's stop waits for it: it reads and writes the store
            self._reaped = self.runtime.run_in_background(self._reap())

    async def _reap(self) -> None:
        try:
            await self._reap_recorded()
        except MiminionsError as exc:  # the runtime stopped meanwhile
            logger.warning("could not check for leftover worker processes: %s", exc)

    async def _reap_recorded(self) -> None:
        stored = await self.runtime.store.get_meta(WORKERS_META_KEY)
        records = []
        for item in stored or ():
            with contextlib.suppress(Exception):
                records.append(WorkerRecord.model_validate(item))
        mine = os.getpid()
        leftovers = [r for r in records if r.runtime_pid != mine or r.pid not in _LIVE]
        if not leftovers:
            return
        killed = await asyncio.to_thread(process_probe.reap, leftovers)
        await self.runtime.store.put_meta(WORKERS_META_KEY, self._records())
        if killed:
            self.runtime.events.emit(
                EventType.WORKERS_REAPED,
                severity=Severity.WARNING,
                details={
                    "killed": [r.model_dump() for r in killed],
                    "message": f"killed {len(killed)} worker process(es) a previous runtime "
                    "on this database left running",
                },
            )

    # ------------------------------------------------------------------ workers
    def _worker_timer_slack(self) -> int | None:
        """The timer slack a worker sets for its loop's thread (ns): what the runtime's
        executor holds for its own (``timer_slack_ns``), else None (Linux's default). Set
        by the worker, not inherited: the forkserver may have been started by another
        runtime, with another slack."""
        try:
            slack = getattr(self.runtime.executor, "timer_slack_ns", None)
        except MiminionsError:  # no runtime, or no executor yet
            return None
        if isinstance(slack, bool) or not isinstance(slack, int) or slack < 1:
            return None
        return slack

    async def launch(self, boot: dict[str, Any]) -> WorkerProcess:
        """Start a worker for the agent described by ``boot``; return once it is forked."""
        if self._reaped is not None:
            await asyncio.shield(self._reaped)
        parent_sock, child_sock = socket.socketpair()
        try:
            from miminions.plugins.process_worker import worker_main

            process = self._process_class(
                target=worker_main,
                args=(
                    child_sock,
                    {
                        **boot,
                        "loop_factory": self.loop_factory,
                        "timer_slack_ns": self._worker_timer_slack(),
                    },
                ),
                name=f"miminions-agent-{boot['name']}",
                daemon=False,
            )
            # Blocking (a round trip to the forkserver, or a whole spawn): not on the loop.
            await asyncio.to_thread(process.start)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        pid = process.pid
        assert pid is not None
        _LIVE[pid] = process
        record = WorkerRecord(
            pid=pid,
            start_time=process_probe.process_start_time(pid),
            agent_id=str(boot["agent_id"]),
            runtime_pid=os.getpid(),
        )
        worker = WorkerProcess(process, parent_sock, record)
        self.workers[pid] = worker
        worker.exited.add_done_callback(lambda _: self._forget(pid))
        try:
            await self.runtime.store.put_meta(WORKERS_META_KEY, self._records())
        except BaseException:
            # Cancelled (a start that timed out, a forced stop) or refused by the store:
            # nobody will own this worker, which would wait for its runtime forever.
            worker.expected_exit = True
            worker.signal(signal.SIGKILL)
            parent_sock.close()
            raise
        self._ensure_monitor()
        return worker

    def _forget(self, pid: int) -> None:
        self.workers.pop(pid, None)
        with contextlib.suppress(MiminionsError):  # the store closed: nothing to update
            self.runtime.store.put_meta(WORKERS_META_KEY, self._records())

    def _records(self) -> list[dict[str, Any]]:
        return [w.record.model_dump() for w in self.workers.values()]

    # ------------------------------------------------------------------ monitoring
    def add_monitor(self, check: Callable[[], None]) -> Callable[[], None]:
        """Call ``check`` every ``usage_interval_seconds`` while workers live; returns a
        function that removes it."""
        self._monitors.append(check)
        self._ensure_monitor()
        return lambda: self._monitors.remove(check) if check in self._monitors else None

    def members_of(self, pid: int) -> list[int]:
        """The processes the worker ``pid``'s agent started (its process group), for its
        usage check. One scan of ``/proc`` serves every worker, made at most every
        :data:`GROUP_SCAN_SECONDS` and only when a check asks (a worker with limits)."""
        now = time.monotonic()
        if now - self._members_at >= GROUP_SCAN_SECONDS:
            self._members = process_probe.group_members(self.workers)
            self._members_at = now
        return self._members.get(pid, [])

    def _ensure_monitor(self) -> None:
        if self._monitor_task is None and self._monitors and self.workers:
            self._monitor_task = asyncio.ensure_future(self._monitor())

    async def _monitor(self) -> None:
        # A sampling loop, not on any hot path: memory use has no event to wait for.
        try:
            while self.workers and self._monitors:
                await asyncio.sleep(self.settings.usage_interval_seconds)
                for check in list(self._monitors):
                    try:
                        check()
                    except Exception:
                        logger.exception("a worker usage check failed")
        finally:
            self._monitor_task = None

    def kill_all(self) -> None:
        """SIGKILL whatever workers are left and stop monitoring (does not wait)."""
        for worker in list(self.workers.values()):
            worker.expected_exit = True
            worker.signal(signal.SIGKILL)
        # (A stop from another loop may come after this one closed without cancelling
        # them: nothing runs there any more. The workers above are killed first anyway.)
        with contextlib.suppress(RuntimeError):
            if self._monitor_task is not None:
                self._monitor_task.cancel()
        with contextlib.suppress(RuntimeError):
            if self._reaped is not None and not self._reaped.done():
                self._reaped.cancel()


def _preparation_data(process_obj: Any) -> dict[str, Any]:
    """What a new worker prepares itself with: the standard data without the user's main
    script.

    multiprocessing re-imports ``__main__`` in every child so pickled functions from it
    can be found; a script without an ``if __name__ == "__main__"`` guard would then run
    again in each worker. Workers import their agent by module path and need nothing from
    ``__main__`` (one defined there is loaded under another name, see the worker module),
    so the preparation data leaves it out.
    """
    prep_data: dict[str, Any] = spawn.get_preparation_data(process_obj._name)
    prep_data.pop("init_main_from_path", None)
    prep_data.pop("init_main_from_name", None)
    return prep_data


def _launch_data(popen: Any, process_obj: Any) -> io.BytesIO:
    """What a launch sends the new worker: its preparation data (see
    :func:`_preparation_data`), then the process object, as the standard library does."""
    buf = io.BytesIO()
    set_spawning_popen(popen)
    try:
        reduction.dump(_preparation_data(process_obj), buf)
        reduction.dump(process_obj, buf)
    finally:
        set_spawning_popen(None)
    return buf


class _WorkerPopen(popen_forkserver.Popen):
    """Forkserver launch without re-running the user's main script in the worker (see
    :func:`_preparation_data`). Otherwise the same steps as the standard library's
    ``popen_forkserver.Popen._launch`` (identical in 3.11 to 3.13).
    """

    def _launch(self, process_obj: Any) -> None:
        buf = _launch_data(self, process_obj)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        # the parent keeps the data pipe's write end open: the child's sign of its parent
        parent_w = os.dup(w)
        self.finalizer = util.Finalize(
            self,
            util.close_fds,  # type: ignore[attr-defined]
            (parent_w, self.sentinel),
        )
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _WorkerProcess(ForkServerProcess):
    """A forkserver process launched by :class:`_WorkerPopen`."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _WorkerPopen(process_obj)


class _SpawnWorkerPopen(popen_spawn_posix.Popen):
    """Spawn launch without re-running the user's main script in the worker (see
    :func:`_preparation_data`). Otherwise the same steps as the standard library's
    ``popen_spawn_posix.Popen._launch`` (identical in 3.11 to 3.13).
    """

    _fds: list[int]  # set by the base class (not in its type stubs)

    def _launch(self, process_obj: Any) -> None:
        from multiprocessing import resource_tracker

        tracker_fd = resource_tracker.getfd()  # starts the tracker if need be
        if tracker_fd is None:  # not after a successful start; the stubs allow it
            raise RuntimeError("multiprocessing's resource tracker is not running")
        self._fds.append(tracker_fd)
        buf = _launch_data(self, process_obj)
        parent_r = child_w = child_r = parent_w = None
        try:
            parent_r, child_w = os.pipe()
            child_r, parent_w = os.pipe()
            command = spawn.get_command_line(tracker_fd=tracker_fd, pipe_handle=child_r)
            self._fds.extend([child_r, child_w])
            # (typeshed has the executable as bytes; CPython passes spawn's str, as here)
            self.pid = util.spawnv_passfds(
                spawn.get_executable(),  # type: ignore[arg-type]
                command,
                self._fds,
            )
            self.sentinel = parent_r
            # closefd=False: the parent keeps the data pipe's write end open, the child's
            # sign of its parent (closed by the finalizer)
            with open(parent_w, "wb", closefd=False) as f:
                f.write(buf.getbuffer())
        finally:
            self.finalizer = util.Finalize(
                self,
                util.close_fds,  # type: ignore[attr-defined]
                [fd for fd in (parent_r, parent_w) if fd is not None],
            )
            for fd in (child_r, child_w):
                if fd is not None:
                    os.close(fd)


class _SpawnWorkerProcess(SpawnProcess):
    """A spawned process launched by :class:`_SpawnWorkerPopen`."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _SpawnWorkerPopen(process_obj)


def worker_loop_factory(runtime: AgentRuntime) -> str | None:
    """The import path (``module:qualname``) of the event-loop factory the plugins answer
    ``miminions_loop_factory`` with (uvloop's, with the ``uvloop`` extra), for workers to
    run their agent on; None for the standard asyncio loop.

    Workers get import paths, never pickled code: a factory that cannot be found by its
    path (a lambda, a bound method) is left out with a warning, and workers use asyncio's.
    """
    factory = loop_factory_of(runtime.plugin_manager, runtime.config)
    if factory is None:
        return None
    path = _importable_path(factory)
    if path is None:
        logger.warning(
            "the event-loop factory %r cannot be imported by module path, so worker "
            "processes run the standard asyncio loop; make it a module-level function",
            factory,
        )
    return path


def _importable_path(obj: object) -> str | None:
    """``module:qualname`` of ``obj`` if looking that path up gives back ``obj`` itself (a
    bound method's path leads to the plain function, a lambda's to nothing), else None."""
    path = import_path(obj)
    if path is None:
        return None
    module_name, _, qualname = path.partition(":")
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return path if found is obj else None


def _multiprocessing_context(settings: ProcessSettings, loop_factory: str | None) -> Any:
    methods = multiprocessing.get_all_start_methods()
    method = settings.start_method or ("forkserver" if "forkserver" in methods else "spawn")
    if method not in ("forkserver", "spawn") or method not in methods:
        raise ConfigurationError(
            f"process start_method {method!r} is not available here; use one of "
            f"{[m for m in methods if m in ('forkserver', 'spawn')]}"
        )
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        # Takes effect when the forkserver starts (once per Python process): the worker
        # code and any modules the user names are imported there once, not in every
        # worker. Not "__main__": a script without a main guard would run again there.
        # This module too: the child unpickles its _WorkerProcess object, which would
        # otherwise import it (and what it imports) in every worker, ~10 ms each. The
        # module of the workers' loop factory (uvloop) likewise.
        module = (loop_factory or "").partition(":")[0]
        loop_modules = [module] if module not in ("", "__main__") else []
        _check_preload(settings.preload)
        ours = [_WORKER_MODULE, __name__, *loop_modules, *settings.preload]
        # The list is the process's, not ours alone: the application's modules stay in it
        # (its own forkserver children would lose them), ours are added.
        # (Not "__main__", multiprocessing's own default: see above.)
        theirs = [
            name
            for name in getattr(_forkserver_state(), "_preload_modules", None) or []
            if name != "__main__"
        ]
        context.set_forkserver_preload([*theirs, *(m for m in ours if m not in theirs)])
    return context


def _forkserver_state() -> Any:
    """multiprocessing's process-wide forkserver (what ``set_forkserver_preload`` sets)."""
    import multiprocessing.forkserver

    return getattr(multiprocessing.forkserver, "_forkserver", None)


def _check_preload(modules: list[str]) -> None:
    """The forkserver skips a preload module it cannot import without a word, so a typo
    would silently cost every worker start its import: say so instead. Only the
    top-level package is looked up: finding ``pkg.mod`` would import ``pkg`` here, in the
    runtime's process, which preloading is meant to spare."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name.partition(".")[0]) is not None
        except (ImportError, ValueError):  # an empty or malformed name
            found = False
        if not found:
            raise ConfigurationError(
                f"ProcessSettings.preload names module {name!r}, which cannot be imported "
                "here; fix or remove the name"
            )


_POOLS: weakref.WeakKeyDictionary[AgentRuntime, WorkerPool] = weakref.WeakKeyDictionary()


def existing_pool(runtime: AgentRuntime) -> WorkerPool | None:
    """The worker pool of ``runtime`` if it has one yet."""
    return _POOLS.get(runtime)


def pool_of(runtime: AgentRuntime) -> WorkerPool:
    """The worker pool of ``runtime`` (made on first use)."""
    pool = _POOLS.get(runtime)
    if pool is None:
        pool = _POOLS[runtime] = WorkerPool(runtime)
    return pool
