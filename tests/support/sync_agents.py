"""Synchronous agents that use their context from their thread (``call_sync``, or
``asyncio.run``), and agents that break the wire protocol. Module-level, so worker
processes can import them by module path."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from miminions import AgentExitError, Task
from tests.support.process_agents import runtime_connection


def sync_receive_with_short_timeout(task: Task, context: Any) -> dict[str, Any]:
    """First task ('give_up'): a call_sync(receive()) given up after 0.2 s. Second task
    ('take'): a receive with a generous timeout, which should get the message sent meanwhile."""
    if task.input_data["mode"] == "give_up":
        try:
            context.call_sync(context.receive(), timeout_seconds=0.2)
        except TimeoutError:
            return {"gave_up": True}
        return {"gave_up": False}
    message = context.call_sync(context.receive(timeout_seconds=5))
    return {"data": message.data}


def sync_watch_with_asyncio_run(task: Task, context: Any) -> dict[str, Any]:
    """kv.watch awaited with asyncio.run in the agent's thread (the docs: a context call
    awaited on another loop is carried out on the agent's loop)."""

    ready = Path(task.input_data["ready"])

    async def first_change() -> Any:
        watch = context.kv.watch("w/")
        ready.touch()  # noqa: ASYNC240 (a tiny file, the test's signal)
        change = await watch.__anext__()
        await watch.aclose()
        return change

    change = asyncio.run(first_change())
    return {"key": change["key"], "value": change["value"]}


def sync_watch_with_call_sync(task: Task, context: Any) -> dict[str, Any]:
    """kv.watch stepped with call_sync from the agent's thread."""
    watch = context.kv.watch("w/")
    Path(task.input_data["ready"]).touch()
    change = context.call_sync(watch.__anext__(), timeout_seconds=10)
    context.call_sync(watch.aclose())
    return {"key": change["key"], "value": change["value"]}


class SyncHandlerCallingContext:
    """A plain (``def``) ``on_message`` that makes a context call (a safe point) every
    10 ms until the file ``message.data['gate']`` exists, then records the message in the
    KV store. Its calls go through ``call_sync``."""

    def _call(self, call: Any) -> Any:
        return self.context.call_sync(call)  # type: ignore[attr-defined]

    def on_message(self, message: Any) -> None:
        context = self.context  # type: ignore[attr-defined]
        Path(message.data["begun"]).touch()
        while not Path(message.data["gate"]).exists():
            self._call(context.kv.get("anything"))
            time.sleep(0.01)
        self._call(context.kv.set("handled", message.message_id))

    async def execute_task(self, task: Task) -> None:
        return None


class SyncHandlerAsyncioRun(SyncHandlerCallingContext):
    """The same, with ``asyncio.run`` for each context call."""

    def _call(self, call: Any) -> Any:
        return asyncio.run(call)


def sync_checkpoint_after_gate(task: Task, context: Any) -> dict[str, Any]:
    """'slow': waits (plain sleeps) for the file input_data['gate'], then checkpoints
    {"from": <its task id>} through call_sync. 'quick': returns what it sees."""
    if task.input_data["mode"] == "slow":
        Path(task.input_data["begun"]).touch()
        while not Path(task.input_data["gate"]).exists():
            time.sleep(0.01)
        try:
            context.call_sync(context.checkpoint({"from": task.task_id}))
        except Exception as exc:
            Path(task.input_data["report"]).write_text(repr(exc))
            raise
        Path(task.input_data["report"]).write_text("checkpointed")
        return {"slow": True}
    return {"me": task.task_id, "last_checkpoint": context.last_checkpoint}


class SyncHooksCallingContext:
    """Every hook is a plain def making a call_sync KV write; the task fails on demand."""

    def _mark(self, name: str) -> None:
        context = self.context  # type: ignore[attr-defined]
        context.call_sync(context.kv.set(f"hook:{name}", True), timeout_seconds=10)

    def on_start(self) -> None:
        self._mark("on_start")

    def on_pause(self) -> dict[str, Any]:
        self._mark("on_pause")
        return {"p": 1}

    def on_resume(self, state: Any) -> None:
        self._mark("on_resume")

    def on_error(self, error: BaseException, task: Any) -> None:
        self._mark("on_error")

    def on_stop(self) -> None:
        self._mark("on_stop")

    def execute_task(self, task: Task) -> Any:
        context = self.context  # type: ignore[attr-defined]
        context.call_sync(context.checkpoint({"s": 1}))
        if task.input_data.get("fail"):
            raise RuntimeError("asked to fail")
        return {"ok": True}


class WireGarbageOnStartAgent:
    """Its on_start writes a frame that is not JSON to the worker's connection, then waits."""

    async def on_start(self) -> None:
        with runtime_connection() as connection:
            connection.sendall(b"\x00\x00\x00\x05hello")
        await asyncio.sleep(60)

    async def execute_task(self, task: Task) -> None:
        return None


class WireBadIdAgent:
    """Its task writes a frame whose 're' is a string (wrong type), then waits."""

    async def execute_task(self, task: Task) -> None:
        body = json.dumps({"re": "1", "value": None}).encode()
        with runtime_connection() as connection:
            connection.sendall(len(body).to_bytes(4, "big") + body)
        await asyncio.sleep(60)


class SyncStepper:
    """A plain synchronous agent: its task makes a ``call_sync`` safe point every 10 ms
    until the file ``gate`` exists; sync hooks."""

    def on_pause(self) -> dict[str, Any]:
        return {"paused": True}

    def on_resume(self, state: Any) -> None:
        pass

    def execute_task(self, task: Task) -> Any:
        context = self.context  # type: ignore[attr-defined]
        Path(task.input_data["begun"]).touch()
        steps = 0
        while not Path(task.input_data["gate"]).exists():
            context.call_sync(context.checkpoint())  # a safe point (docs/concepts.md)
            steps += 1
            time.sleep(0.01)
        return {"steps": steps}


class SyncStepperAsyncOnPause(SyncStepper):
    """The same with an async on_pause (so the pause itself succeeds), sync on_resume."""

    async def on_pause(self) -> dict[str, Any]:  # type: ignore[override]
        return {"paused": True}


class SysExitReporter:
    """A sync task calling sys.exit(2); on_error writes the class name of the error it got
    to ``input_data['out']``."""

    def execute_task(self, task: Task) -> Any:
        sys.exit(2)

    def on_error(self, error: BaseException, task: Task | None) -> None:
        if task is not None:
            Path(task.input_data["out"]).write_text(
                f"{type(error).__name__} {isinstance(error, AgentExitError)}"
            )
