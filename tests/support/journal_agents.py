"""Agents that report what happened through a journal file, for tests that run them in
either isolation mode.

A ``process`` agent runs in a worker process and shares no Python memory with the test, so
these agents never touch module-level records: each hook and notable step appends one JSON
line to the file named by ``config["journal"]`` (``{"hook": ..., "pid": ..., ...}``), and
tasks return what the test needs in their result. Blocking an agent mid-task uses a file
gate: the task loops on ``await context.checkpoint()`` (a safe point) until the file named
by ``input_data["gate"]`` exists, bounded by a deadline so a broken test cannot hang.

Everything here is defined at module level so a worker process can import it by path.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from miminions import AgentContext, AgentMessage, BaseAgent, Task

#: How long a gated or spinning task waits at most before it gives up with an error.
MAX_WAIT_SECONDS = 20.0
POLL_SECONDS = 0.01

#: What ``on_pause`` returns: nested, mixed JSON, so "unchanged" means something.
PAUSE_STATE: dict[str, Any] = {
    "counter": 41,
    "ratio": 0.25,
    "flag": False,
    "nothing": None,
    "text": "héllo ✓",
    "nested": {"items": [1, "two", None, 3.5, [True]], "empty": {}},
}


def write_journal(config: dict[str, Any], hook: str, **fields: Any) -> None:
    """Append one record to the journal named by ``config["journal"]`` (if any)."""
    path = config.get("journal")
    if not path:
        return
    record = {"hook": hook, "pid": os.getpid(), "time": time.time(), **fields}
    line = json.dumps(record, sort_keys=True) + "\n"
    # One write of a short line to a file opened for appending: records of concurrent
    # writers never interleave.
    with open(path, "a", encoding="utf-8") as journal:
        journal.write(line)
        journal.flush()


def read_journal(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of the journal at ``path``, in the order they were written."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    # A line still being written has no newline yet: leave it for the next read.
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def gate_is_open(gate: Path) -> bool:
    """True once the gate file exists (a stat call: quick enough to make from a loop)."""
    return gate.exists()


def error_type(error: BaseException) -> str:
    """The name of the exception class as raised by the task (in a worker process the
    hook gets a rebuilt error that carries the original name as ``remote_type``)."""
    return getattr(error, "remote_type", None) or type(error).__name__


class JournalAgent(BaseAgent):
    """Records every lifecycle hook; what a task does is chosen by ``input_data["action"]``:

    - ``echo`` (default): return the task's name, input, pid and ``self.config``;
    - ``fail``: raise ``ValueError(input_data["message"])``; with ``times``, only on the
      first ``times`` attempts, then return ``{"attempts": n}``;
    - ``gate``: loop on checkpoints until the file ``input_data["gate"]`` exists (with
      ``"safe_points": false`` the loop only sleeps: it never reaches a safe point; with
      ``"save_progress": true`` each checkpoint saves ``{"steps": n}``);
    - ``spin``: a cooperative loop of short sleeps (no safe point) for ``seconds``;
    - ``checkpoint_then_fail``: on the first attempt save ``{"step": 1..steps}`` and raise;
      on a later one return what ``context.last_checkpoint`` holds;
    - ``non_json``: return a set.
    """

    def _journal(self, hook: str, **fields: Any) -> None:
        write_journal(self.config, hook, agent=self.context.name, **fields)

    async def on_start(self) -> None:
        self._journal("on_start")

    async def on_stop(self) -> None:
        self._journal("on_stop")

    async def on_pause(self) -> dict[str, Any]:
        state = {**PAUSE_STATE, "paused_by_pid": os.getpid()}
        self._journal("on_pause", state=state)
        return state

    async def on_resume(self, state: dict[str, Any]) -> None:
        self._journal("on_resume", state=state)

    async def on_error(self, error: BaseException, task: Task | None) -> None:
        self._journal(
            "on_error",
            error_type=error_type(error),
            error_class=type(error).__name__,
            message=str(error),
            task_id=None if task is None else task.task_id,
        )

    async def execute_task(self, task: Task) -> Any:
        data = task.input_data
        action = data.get("action", "echo")
        self._journal(
            "execute",
            task=task.name,
            task_id=task.task_id,
            action=action,
            attempt=task.retry_count + 1,
            last_checkpoint=self.context.last_checkpoint,
        )
        if action == "echo":
            return {
                "task": task.name,
                "input": data,
                "pid": os.getpid(),
                "config": self.config,
                "agent": self.context.name,
            }
        if action == "fail":
            times = data.get("times")
            if times is None or task.retry_count < times:
                raise ValueError(data.get("message", "boom"))
            return {"attempts": task.retry_count + 1}
        if action == "gate":
            return await self._gate(task)
        if action == "spin":
            return await self._spin(task)
        if action == "checkpoint_then_fail":
            if self.context.last_checkpoint is None:
                for step in range(1, int(data.get("steps", 3)) + 1):
                    await self.context.checkpoint({"step": step})
                raise RuntimeError("the first attempt fails after its checkpoints")
            return {"last_checkpoint": self.context.last_checkpoint, "attempt": task.retry_count}
        if action == "non_json":
            return {1, 2, 3}
        raise ValueError(f"unknown action {action!r}")

    async def _gate(self, task: Task) -> dict[str, Any]:
        gate = Path(task.input_data["gate"])
        safe_points = bool(task.input_data.get("safe_points", True))
        deadline = time.monotonic() + float(task.input_data.get("max_wait", MAX_WAIT_SECONDS))
        steps = 0
        stopping_seen = False
        self._journal("gate_entered", task=task.name, task_id=task.task_id)
        try:
            while True:
                if self.context.is_stopping and not stopping_seen:
                    stopping_seen = True
                    self._journal("stopping_seen", task=task.name, task_id=task.task_id)
                if safe_points and task.input_data.get("save_progress"):
                    await self.context.checkpoint({"steps": steps})  # a safe point, saved
                elif safe_points:
                    await self.context.checkpoint()  # where a pause halts the task
                if gate_is_open(gate):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gate {gate} was not opened in time")
                steps += 1
                await asyncio.sleep(POLL_SECONDS)
        except asyncio.CancelledError:
            self._journal("cancelled", task=task.name, task_id=task.task_id, steps=steps)
            raise
        self._journal("gate_passed", task=task.name, task_id=task.task_id, steps=steps)
        return {"steps": steps, "stopping_seen": stopping_seen, "pid": os.getpid()}

    async def _spin(self, task: Task) -> dict[str, Any]:
        deadline = time.monotonic() + float(task.input_data.get("seconds", MAX_WAIT_SECONDS))
        self._journal("spin_entered", task=task.name, task_id=task.task_id)
        ticks = 0
        try:
            while time.monotonic() < deadline:
                ticks += 1
                await asyncio.sleep(POLL_SECONDS)  # cooperative, but not a safe point
        except asyncio.CancelledError:
            self._journal("cancelled", task=task.name, task_id=task.task_id, ticks=ticks)
            raise
        return {"spun": True, "ticks": ticks}


class SyncExecuteAgent:
    """Not a BaseAgent: a plain class with a synchronous ``execute_task`` (runs in the
    agent's thread)."""

    context: AgentContext

    def on_start(self) -> None:
        write_journal(self.context.config, "on_start", agent=self.context.name)

    def execute_task(self, task: Task) -> dict[str, Any]:
        return {
            "kind": "sync_class",
            "doubled": task.input_data.get("x", 0) * 2,
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
            "config": self.context.config,
        }


class SyncInitAgent:
    """A class with a synchronous ``execute_task`` and its own ``__init__``: reports the
    thread that built it."""

    def __init__(self) -> None:
        self.built_in = threading.current_thread().name

    def execute_task(self, task: Task) -> dict[str, Any]:
        return {"built_in": self.built_in, "pid": os.getpid()}


class AsyncInitAgent(BaseAgent):
    """A class with an async ``execute_task`` whose ``__init__`` needs the running loop
    (as a client session or a queue bound to it would)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {"same_loop": asyncio.get_running_loop() is self.loop, "pid": os.getpid()}


async def async_function_agent(task: Task, context: AgentContext) -> dict[str, Any]:
    """An ``async def`` function agent."""
    await context.checkpoint()
    return {
        "kind": "async_function",
        "doubled": task.input_data.get("x", 0) * 2,
        "pid": os.getpid(),
        "agent": context.name,
        "config": context.config,
    }


def sync_function_agent(task: Task, context: AgentContext) -> dict[str, Any]:
    """A plain ``def`` function agent (runs in the agent's thread)."""
    return {
        "kind": "sync_function",
        "doubled": task.input_data.get("x", 0) * 2,
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "agent": context.name,
        "config": context.config,
    }


class PauseStateAgent(JournalAgent):
    """``on_pause`` returns ``config["pause_state"]`` as it is (any JSON value), or, with
    ``config["non_json"]``, a state holding a set (not JSON)."""

    async def on_pause(self) -> Any:
        self._journal("on_pause")
        if self.config.get("non_json"):
            return {"tags": {1, 2}}
        return self.config["pause_state"]


class ContextInHooksAgent(JournalAgent):
    """``on_pause`` and ``on_resume`` use the context (the shared store) as an agent may
    anywhere: ``on_pause`` records that it paused, ``on_resume`` the state it got back."""

    async def on_pause(self) -> dict[str, Any]:
        await self.context.kv.set("paused", True)
        return {"saved": 1}

    async def on_resume(self, state: dict[str, Any]) -> None:
        await self.context.kv.set("resumed_with", state)


class GatedHandlerAgent(BaseAgent):
    """Its ``on_message`` journals ``began``, waits (polling, at most 20 s) for the file
    ``config["gate"]`` to exist, then journals ``finished``."""

    async def on_message(self, message: AgentMessage) -> None:
        write_journal(self.config, "began", type=message.message_type)
        deadline = time.monotonic() + 20
        gate = Path(self.config["gate"])  # made by the test, in another process
        while not _exists(gate) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        write_journal(self.config, "finished", type=message.message_type)

    async def execute_task(self, task: Task) -> None:
        return None


def _exists(path: Path) -> bool:
    return path.exists()


class ReplyingJournalAgent(BaseAgent):
    """Journals every message it handles (``msg``: type and data) and replies to requests."""

    async def on_message(self, message: AgentMessage) -> None:
        write_journal(self.config, "msg", type=message.message_type, data=message.data)
        if message.correlation_id and not message.is_reply:
            await self.context.reply(message, {"echo": message.data})

    async def execute_task(self, task: Task) -> None:
        return None


class RequestThenSendAgent(BaseAgent):
    """Its task, ``input_data["n"]`` times: starts a request to ``input_data["to"]``, lets
    it go out, sends a plain message to the same agent, then waits for the reply."""

    async def execute_task(self, task: Task) -> None:
        to = task.input_data["to"]
        for index in range(task.input_data["n"]):
            request = asyncio.ensure_future(self.context.request(to, "q", index, 5))
            await asyncio.sleep(0)  # the request is on its way (its frame written)
            await self.context.send(to, "m", index)
            await request
