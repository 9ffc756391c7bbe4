"""Agents for the process-isolation tests. They run in worker processes, which import them
by module path, so they live at module level here and talk to the test only through task
input/output, their registration config and files.

Every agent returns (or records) the pid of the worker that ran it, so a test can tell which
worker process did what.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from miminions import BaseAgent, Task

MIB = 1024 * 1024


def _exists(path: str | None) -> bool:
    return path is not None and Path(path).exists()


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")


def _done(agent: BaseAgent, **extra: Any) -> dict[str, Any]:
    return {"agent": agent.context.name, "pid": os.getpid(), **extra}


class CrashAgent(BaseAgent):
    """Misbehaves as ``task.input_data['mode']`` says when its config has ``crashy: true``;
    otherwise (a healthy agent) it completes every task at once.

    Modes: ``raise`` (an ordinary exception), ``system_exit`` (``SystemExit(7)``: it fails
    the task, as any error), ``exit_later`` (``os._exit(7)`` after 0.3 s), ``exit``
    (``os._exit(3)``),
    ``segfault`` (reads address 0), ``big_reply`` (returns 8 MiB after 0.3 s),
    ``block`` (loops until killed from outside), ``spin`` (``while True: pass`` on the
    worker's event loop: no heartbeat can be answered), ``too_deep`` (sends a value the
    runtime cannot decode, so it drops the connection, while a thread keeps the process
    alive).
    """

    async def execute_task(self, task: Task) -> dict[str, Any]:
        mode = task.input_data.get("mode")
        if not self.config.get("crashy") or mode is None:
            return _done(self)
        if mode == "raise":
            raise RuntimeError("the agent raised on purpose")
        if mode == "system_exit":
            raise SystemExit(7)
        if mode == "big_reply":  # more than a socket buffer holds: the transport keeps some
            await asyncio.sleep(0.3)  # time for the next task to reach the worker
            return _done(self, blob="x" * (8 * MIB))
        if mode == "exit_later":  # time for the next task to reach the worker
            await asyncio.sleep(0.3)
            os._exit(7)
        if mode == "exit":
            os._exit(3)
        if mode == "segfault":
            ctypes.string_at(0)
        if mode == "block":
            await asyncio.Event().wait()  # forever: the worker's loop stays responsive
        if mode == "spin":
            while True:
                pass
        if mode == "too_deep":
            # A non-daemon thread keeps the process alive after its loop ends; the value
            # nests deeper than the runtime decodes, so the runtime drops the connection.
            threading.Thread(target=time.sleep, args=(30,)).start()
            sys.setrecursionlimit(100_000)
            value: Any = []
            for _ in range(50_000):
                value = [value]
            await self.context.kv.set("deep", value)
        raise ValueError(f"unknown mode {mode!r}")


class SmallTaskAgent(BaseAgent):
    """Sleeps ``input_data['seconds']`` (default 0), or ``config['task_seconds']`` when its
    config has one (a slow agent), and returns who ran the task."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        default: float = task.input_data.get("seconds", 0)
        seconds: float = self.config.get("task_seconds", default)
        await asyncio.sleep(seconds)
        return _done(self, n=task.input_data.get("n"))


class SyncHangAgent:
    """A plain class whose synchronous ``execute_task`` runs in the worker's agent thread.

    With ``hang: true`` it never returns and ignores every cancel (a thread cannot be
    interrupted); otherwise it completes at once.
    """

    def execute_task(self, task: Task) -> dict[str, Any]:
        if task.input_data.get("hang"):
            while True:
                time.sleep(0.01)
        return {"pid": os.getpid()}


class CpuSpinAgent:
    """Burns CPU in its (synchronous) task forever; the worker's loop stays responsive."""

    def execute_task(self, task: Task) -> dict[str, Any]:
        while True:
            pass


class SigxcpuIgnoringSpinAgent(BaseAgent):
    """Ignores SIGXCPU (the soft CPU limit's signal), then burns CPU in its synchronous
    task: only the kernel's SIGKILL at the hard limit ends it."""

    async def on_start(self) -> None:
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)  # on the worker's main thread

    def execute_task(self, task: Task) -> dict[str, Any]:  # type: ignore[override]
        while True:
            pass


class MemoryAgent(BaseAgent):
    """Allocates ``input_data['mb']`` MiB in touched 10 MiB chunks, then holds it until
    the file ``input_data['release']`` exists (without one: forever) and returns.

    Every ``on_error`` call is appended as a JSON line to ``config['error_log']`` when
    given (the type is the original one: errors reach the worker rebuilt from the wire).
    With ``config['start_mb']``, its ``on_start`` allocates that much and holds it for
    ever.
    """

    async def on_start(self) -> None:
        if self.config.get("start_mb"):
            await _hold(int(self.config["start_mb"]), None)

    async def execute_task(self, task: Task) -> dict[str, Any]:
        held_mb = await _hold(int(task.input_data["mb"]), task.input_data.get("release"))
        return _done(self, held_mb=held_mb)

    async def on_error(self, error: BaseException, task: Task | None) -> None:
        path = self.config.get("error_log")
        if not path:
            return
        record = {
            "type": getattr(error, "remote_type", None) or type(error).__name__,
            "class": type(error).__name__,
            "message": str(error),
            "task_id": None if task is None else task.task_id,
            "pid": os.getpid(),
        }
        _append_line(path, json.dumps(record))


class ThreadsAgent(BaseAgent):
    """``threads``: starts that many threads, all alive at once, each holding 1 MiB;
    ``reserve_mb``: asks for that much zeroed memory at once (address space, hardly any of
    it resident) and reports a MemoryError instead of raising it."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if "reserve_mb" in task.input_data:
            try:
                reserved = bytearray(int(task.input_data["reserve_mb"]) * MIB)
            except MemoryError:
                return _done(self, memory_error=True)
            del reserved
            return _done(self, memory_error=False)
        count = task.input_data["threads"]
        all_in = threading.Barrier(count, timeout=20)

        def work() -> None:
            held = bytearray(MIB)  # in this thread's malloc arena
            all_in.wait()  # every thread alive at once
            del held

        threads = [threading.Thread(target=work) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        return _done(self, threads=len(threads))


class SteppingAgent(BaseAgent):
    """Counts steps (one per ~10 ms, each a safe point) into ``input_data['progress']``
    until the file ``input_data['release']`` exists, then returns the count."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        steps = 0
        while not _exists(task.input_data["release"]):
            await self.context.checkpoint()
            steps += 1
            _write(task.input_data["progress"], str(steps))
            await asyncio.sleep(0.01)
        return _done(self, steps=steps)


class AtExitAgent(BaseAgent):
    """Registers an exit handler that appends ``config["path"]`` a line: the worker runs
    it when the agent is stopped."""

    async def on_start(self) -> None:
        import atexit

        atexit.register(_append_line, self.config["path"], f"exit {os.getpid()}")

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return _done(self)


class SlowPauseAgent(BaseAgent):
    """``on_pause`` blocks its worker's loop for ``config['pause_block_seconds']`` (a
    synchronous write, say) and returns ``{"pid": ...}``; ``on_resume`` appends the state
    it gets as a JSON line to ``config['resume_log']``. Its task makes one context call (a
    safe point) and returns."""

    async def on_pause(self) -> dict[str, Any]:
        time.sleep(self.config["pause_block_seconds"])  # noqa: ASYNC251 - blocking on purpose
        return {"pid": os.getpid()}

    async def on_resume(self, state: dict[str, Any]) -> None:
        _append_line(self.config["resume_log"], json.dumps(state))

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.checkpoint()
        return _done(self)


class HookLogAgent(SteppingAgent):
    """A :class:`SteppingAgent` that appends its lifecycle hooks, as JSON lines, to
    ``config['hook_log']``: ``["start", pid]`` and ``["resume", pid, state]``; ``on_pause``
    returns ``{"paused_in": pid}``."""

    async def on_start(self) -> None:
        _append_line(self.config["hook_log"], json.dumps(["start", os.getpid()]))

    async def on_pause(self) -> dict[str, Any]:
        return {"paused_in": os.getpid()}

    async def on_resume(self, state: dict[str, Any]) -> None:
        _append_line(self.config["hook_log"], json.dumps(["resume", os.getpid(), state]))


class SpawningAgent(BaseAgent):
    """Starts a long ``sleep`` subprocess per task (as agent code running tools does) and
    returns its pid; it never waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.children: list[subprocess.Popen[bytes]] = []

    async def execute_task(self, task: Task) -> dict[str, Any]:
        child = subprocess.Popen(  # noqa: ASYNC220 - starting it is quick; never awaited
            ["sleep", "120"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.children.append(child)
        return _done(self, child_pid=child.pid)


class NonUtf8Agent(BaseAgent):
    """Handles text with a lone surrogate (what ``os.fsdecode`` makes of an undecodable file
    name) as ``input_data['mode']`` says: ``raise`` it in an error, ``checkpoint`` it, or
    ``send`` it to itself."""

    BAD = "report-\udcff.txt"

    async def execute_task(self, task: Task) -> dict[str, Any]:
        mode = task.input_data["mode"]
        if mode == "raise":
            raise FileNotFoundError(f"no such file: {self.BAD}")
        if mode == "checkpoint":
            await self.context.checkpoint({"file": self.BAD})
        elif mode == "send":
            await self.context.send([self.context.agent_id], "file", {"file": self.BAD})
        return _done(self)


class SlowToStopAgent(BaseAgent):
    """With config ``slow``: appends ``start <name> <pid>`` to ``input_data['log']``, runs
    until cancelled, appends ``cancelled <name>``, winds down until the file
    ``input_data['release']`` exists and ``input_data['wind_down']`` seconds more, appends
    ``end <name>`` and re-raises. Without it: appends ``start ...`` and completes."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        log = task.input_data["log"]
        name = self.context.name
        _append_line(log, f"start {name} {os.getpid()}")
        if not self.config.get("slow"):
            return _done(self)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            _append_line(log, f"cancelled {name}")
            while not _exists(task.input_data["release"]):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await asyncio.sleep(float(task.input_data.get("wind_down", 0)))
            _append_line(log, f"end {name}")
            raise
        return _done(self)


class TimerSlackAgent(BaseAgent):
    """Returns its worker process's timer slack in nanoseconds (Linux's PR_GET_TIMERSLACK)."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        libc = ctypes.CDLL(None, use_errno=True)
        return _done(self, slack=int(libc.prctl(30, 0, 0, 0, 0)))


class GatedAgent(BaseAgent):
    """Appends ``start <task name> <pid>`` to ``input_data['log']``. With ``gate``: waits
    (asynchronously, with safe points) until that file exists. With ``block``: appends
    ``blocking <task name>`` and blocks its worker's event loop (a synchronous
    computation, well within the heartbeat timeout) until that file exists. Then appends
    ``end <task name>`` and completes. With ``gate`` and ``swallow``: waits for the gate
    without safe points, and a cancel meanwhile is caught: appends ``swallowed <task
    name>`` and returns ``partial: true``. With ``hold_after``: once it has returned, the
    worker's loop is held until that file exists (``holding after <task name>``), so
    what the runtime sends meanwhile is read in one go. With ``fail``: raises
    ``RuntimeError`` after its ``end`` line instead of completing."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        data = task.input_data
        log = data["log"]
        _append_line(log, f"start {task.name} {os.getpid()}")
        if data.get("gate") and data.get("swallow"):
            try:
                while not _exists(data["gate"]):  # noqa: ASYNC110 (another process writes it)
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                _append_line(log, f"swallowed {task.name}")
                return _done(self, partial=True)
        elif data.get("gate"):
            while not _exists(data["gate"]):
                await self.context.checkpoint()
                await asyncio.sleep(0.01)
        if data.get("block"):
            _append_line(log, f"blocking {task.name}")
            while not _exists(data["block"]):
                time.sleep(0.01)  # noqa: ASYNC251 (blocks the loop, on purpose)
        _append_line(log, f"end {task.name}")
        if data.get("fail"):
            raise RuntimeError(f"{task.name} failed on purpose")
        hold = data.get("hold_after")
        if hold:

            def held() -> None:
                _append_line(log, f"holding after {task.name}")
                while not _exists(hold):
                    time.sleep(0.01)  # blocks the loop, on purpose

            asyncio.get_running_loop().call_soon(held)
        return _done(self)


class BrokenStrError(Exception):
    """An exception whose ``__str__`` itself raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class BrokenStrAgent(BaseAgent):
    """Raises a :class:`BrokenStrError` from the hook or method named in
    ``config["where"]`` (``execute_task``, ``on_start`` or ``on_pause``)."""

    async def on_start(self) -> None:
        if self.config.get("where") == "on_start":
            raise BrokenStrError("no start")

    async def on_pause(self) -> dict[str, Any]:
        if self.config.get("where") == "on_pause":
            raise BrokenStrError("no pause")
        return {}

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if self.config.get("where") == "execute_task":
            raise BrokenStrError("no task")
        return {}


async def _hold(target_mb: int, release: str | None) -> int:
    """Allocate ``target_mb`` MiB in touched 10 MiB chunks, then hold it until the file
    ``release`` exists (without one: forever); return how much was held."""
    chunks: list[bytearray] = []
    while len(chunks) * 10 < target_mb:
        chunk = bytearray(10 * MIB)
        for offset in range(0, len(chunk), 4096):  # make every page resident
            chunk[offset] = 1
        chunks.append(chunk)
        await asyncio.sleep(0.005)
    while not _exists(release):  # noqa: ASYNC110 - a file signal
        await asyncio.sleep(0.01)
    return len(chunks) * 10


class GiveUpAtOnceAgent(BaseAgent):
    """Its task waits (at most 20 s) for the file ``input_data["go"]``, makes a request to
    ``input_data["to"]`` and gives it up at once, then writes the file
    ``input_data["done"]`` once its request and its cancel are on their way."""

    async def execute_task(self, task: Task) -> str:
        go, done = Path(task.input_data["go"]), Path(task.input_data["done"])
        deadline = time.monotonic() + 20
        while not _exists(str(go)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        asking = asyncio.ensure_future(
            self.context.request(task.input_data["to"], "ask", timeout_seconds=60)
        )
        await asyncio.sleep(0)  # the request's frame is written
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asking  # the cancel notice is written
        for _ in range(3):
            await asyncio.sleep(0)  # both flushed
        done.write_text("sent")  # noqa: ASYNC240 - a tiny file the test waits for
        return "gave up"


class NonStringKeyAgent(BaseAgent):
    """Its task sends (``input_data["call"]`` ``send``) or stores (``kv_set``) a value
    whose dict has an int key, and returns the type of the error that raised, if any."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        value = {3: "x"}
        try:
            if task.input_data["call"] == "send":
                await self.context.send(task.input_data["to"], "note", value)
            else:
                await self.context.kv.set("k", value)
        except Exception as exc:
            return {"raised": type(exc).__name__, "text": str(exc)}
        return {"raised": None}


class GatedSlowPauseAgent(GatedAgent):
    """A :class:`GatedAgent` whose ``on_pause`` takes ``config['pause_seconds']`` (the
    running task waits halted at its safe point meanwhile)."""

    async def on_pause(self) -> dict[str, Any]:
        await asyncio.sleep(float(self.config["pause_seconds"]))
        return {}


_CHILD_HOLDING_MEMORY = """
import pathlib, sys, time
chunks = []
for _ in range(int(sys.argv[1]) // 10):
    chunk = bytearray(10 * 1024 * 1024)
    chunk[::4096] = b"\\1" * len(chunk[::4096])  # touched: resident
    chunks.append(chunk)
pathlib.Path(sys.argv[2]).write_text("held")
time.sleep(600)
"""

_CHILD_SPINNING = """
import sys, time
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
"""


class SubprocessAgent(BaseAgent):
    """Uses resources through subprocesses (in its worker's process group, as any tool it
    starts). ``input_data['hold_mb']``: one subprocess holds that many MiB (touched) and
    writes its pid to ``input_data['pid']``, then sleeps; the task waits for ever.
    ``input_data['spin']``: that many subprocesses, one after another, each burn
    ``input_data['seconds']`` of CPU time; the task returns their exit codes."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        data = task.input_data
        if "hold_mb" in data:
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD_HOLDING_MEMORY, str(data["hold_mb"]), data["held"]
            )
            _append_line(data["pid"], str(child.pid))
            await child.wait()
            return _done(self)
        codes = []
        for _ in range(int(data["spin"])):
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD_SPINNING, str(data["seconds"])
            )
            codes.append(await child.wait())
        return _done(self, codes=codes)


class StartSpinningAgent(BaseAgent):
    """Its ``on_start`` burns CPU on the worker's loop until the worker is stopped."""

    async def on_start(self) -> None:
        while True:
            pass

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return _done(self)


class WireGarbageAgent(BaseAgent):
    """Its task writes a frame that is not JSON to its worker's connection to the runtime
    (a native library scribbling on a file descriptor it does not own), then waits."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        with runtime_connection() as connection:
            connection.sendall(b"\x00\x00\x00\x05hello")
        await asyncio.sleep(60)
        return _done(self)


def runtime_connection() -> socket.socket:
    """A duplicate of the worker's end of its connection to the runtime: the Unix stream
    socket made by another process (the runtime's socket pair; asyncio's own wake-up
    socket pair is the worker's)."""
    credentials = struct.Struct("3i")  # struct ucred: pid, uid, gid
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                found = socket.socket(fileno=os.dup(fd))
                if found.family == socket.AF_UNIX and found.type == socket.SOCK_STREAM:
                    peer = found.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, credentials.size)
                    if credentials.unpack(peer)[0] != os.getpid():
                        return found
                found.close()
    raise RuntimeError("no connection to the runtime found")


class DeepFailureAgent(BaseAgent):
    """Its synchronous task fails in a nested function (``nested_failing_frame``); its
    ``on_error`` writes the error's ``remote_traceback`` to ``config['report']``."""

    # A synchronous task and hook (the runtime takes ``def`` as well as ``async def``;
    # BaseAgent declares them async).
    def execute_task(self, task: Task) -> None:  # type: ignore[override]
        def nested_failing_frame() -> None:
            raise ValueError("deep failure")

        nested_failing_frame()

    def on_error(self, error: BaseException, task: Task | None) -> None:  # type: ignore[override]
        remote = getattr(error, "remote_traceback", None) or ""
        Path(self.config["report"]).write_text(remote, encoding="utf-8")


def sync_context_calls(task: Task, context: Any) -> dict[str, Any]:
    """A synchronous function agent using its context from its thread: ``call_sync`` for
    a KV write, a checkpoint and a receive, and ``asyncio.run`` for a send (to itself)."""
    version = context.call_sync(context.kv.set("sync-key", {"v": 1}))
    [sent] = asyncio.run(context.send(context.agent_id, "note", {"x": 1}))
    context.call_sync(context.checkpoint({"step": 1}))
    received = context.call_sync(context.receive(timeout_seconds=10))
    return {"version": version, "sent": sent, "received": received.message_id}


def sync_checkpointing_until_gate(task: Task, context: Any) -> dict[str, Any]:
    """A synchronous function agent whose task makes a safe point (``call_sync`` of a
    checkpoint) every 10 ms until the file ``input_data['gate']`` exists."""
    while not _exists(task.input_data["gate"]):
        context.call_sync(context.checkpoint())
        time.sleep(0.01)
    return {"pid": os.getpid()}


class BadOnStopAgent(BaseAgent):
    """``on_stop`` does what ``config['on_stop']`` says: ``hang`` awaits forever, ``block``
    blocks the worker's loop, ``crash`` ends the worker (``os._exit(9)``)."""

    async def on_stop(self) -> None:
        how = self.config.get("on_stop")
        if how == "hang":
            await asyncio.Event().wait()
        elif how == "block":
            time.sleep(3600)  # noqa: ASYNC251 - blocking its loop is the point
        elif how == "crash":
            os._exit(9)

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {}
