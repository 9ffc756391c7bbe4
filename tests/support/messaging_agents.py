"""Agents that exchange messages, for tests that run them in either isolation mode.

A ``process`` agent shares no Python memory with the test, so these agents report only
through observable channels: what their tasks return, and a journal file named by
``config["journal"]`` (see :mod:`tests.support.journal_agents`).

- :class:`ScriptAgent` runs the messaging calls listed in its task's
  ``input_data["ops"]`` one after the other and returns what each call gave back (a
  received message as its JSON dump), so a test can drive ``context.send``,
  ``context.receive``, ``context.request``, ... in the agent's own process.
- :class:`ResponderAgent` handles messages in ``on_message``: it journals each one and
  answers requests with ``context.reply`` (except those of type ``"ignore"``). Its tasks
  can wait at a file gate, so a test can show messages are handled beside a running task.
- :class:`SyncHandlerAgent` has a plain (not ``async``) ``on_message``.
- :class:`TopicScriptAgent` is a :class:`ScriptAgent` subscribed to ``"alpha"`` by its
  ``topics`` class attribute.

Everything here is defined at module level so a worker process can import it by path.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from miminions import AgentMessage, BaseAgent, Task
from miminions.kernel.models import message_to_json
from tests.support.journal_agents import gate_is_open, write_journal

#: Bound of every wait inside an agent, so a broken test cannot hang.
MAX_WAIT_SECONDS = 20.0
POLL_SECONDS = 0.01
#: The message type a test sends last; ``receive_until`` stops at it.
SENTINEL = "sentinel"
#: A request of this type is never answered by :class:`ResponderAgent`.
IGNORED = "ignore"


def dump(message: AgentMessage) -> dict[str, Any]:
    """A received message as JSON (what a task returns and the journal keeps), as the
    runtime itself writes it (pydantic's ``model_dump`` gives up on deeply nested data)."""
    return message_to_json(message)


def describe(error: BaseException) -> dict[str, Any]:
    """What an op with ``"catch": true`` returns instead of raising: the class of the
    exception the agent's code caught, and (in a worker process) the original's name."""
    return {
        "error": type(error).__name__,
        "remote_type": getattr(error, "remote_type", None),
        "message": str(error),
    }


class ScriptAgent(BaseAgent):
    """Runs ``input_data["ops"]``, a list of messaging calls, in order; returns
    ``{"agent_id", "pid", "results"}`` with one result per op. Ops (keys beside ``op``):

    - ``send``: ``to`` (an id or a list), ``type``, ``data``, ``ttl``; with ``count`` n it
      sends n messages whose data is ``{"seq": i}`` (0..n-1). Result: the message ids.
    - ``broadcast``: ``type``, ``data``. Result: the message ids.
    - ``publish``: ``topic``, ``type``, ``data``. Result: the message ids.
    - ``subscribe`` / ``unsubscribe``: ``topic``. Result: None.
    - ``receive``: ``count`` messages (default 1), each within ``timeout``. Result: their
      dumps.
    - ``receive_until``: receive until a message of type ``type`` (default
      :data:`SENTINEL`) arrives, each within ``timeout``. Result: the dumps, the last one
      the sentinel.
    - ``request``: ``to``, ``type``, ``data``, ``timeout``. Result: the reply's dump.

    Data options of ``send``: ``filler`` n sends a string of n ``"x"``; ``non_json``
    sends a set. With ``"catch": true`` an op that raises returns :func:`describe` of the
    error instead of failing the task. With a journal in the config, each op is journalled
    (``{"hook": "op", "op": ..., "task_id": ...}``) just before it is called.
    """

    async def execute_task(self, task: Task) -> dict[str, Any]:
        results = []
        for op in task.input_data.get("ops", []):
            write_journal(self.config, "op", op=op["op"], task_id=task.task_id)
            try:
                results.append(await self._run(op))
            except Exception as exc:
                if not op.get("catch"):
                    raise
                results.append(describe(exc))
        return {"agent_id": self.context.agent_id, "pid": os.getpid(), "results": results}

    async def _run(self, op: dict[str, Any]) -> Any:
        context = self.context
        kind = op["op"]
        timeout = op.get("timeout", MAX_WAIT_SECONDS)
        if kind == "send":
            if "count" in op:
                ids = []
                for seq in range(int(op["count"])):
                    ids += await context.send(op["to"], op["type"], {"seq": seq}, op.get("ttl"))
                return ids
            data = op.get("data")
            if "filler" in op:
                data = "x" * int(op["filler"])
            elif op.get("non_json"):
                data = {1, 2, 3}
            return await context.send(op["to"], op["type"], data, op.get("ttl"))
        if kind == "broadcast":
            return await context.broadcast(op["type"], op.get("data"))
        if kind == "publish":
            return await context.publish(op["topic"], op["type"], op.get("data"))
        if kind == "subscribe":
            return await context.subscribe(op["topic"])
        if kind == "unsubscribe":
            return await context.unsubscribe(op["topic"])
        if kind == "receive":
            return [
                dump(await context.receive(timeout_seconds=timeout))
                for _ in range(int(op.get("count", 1)))
            ]
        if kind == "receive_until":
            wanted = op.get("type", SENTINEL)
            received: list[dict[str, Any]] = []
            while not received or received[-1]["message_type"] != wanted:
                received.append(dump(await context.receive(timeout_seconds=timeout)))
            return received
        if kind == "request":
            reply = await context.request(op["to"], op["type"], op.get("data"), timeout)
            return dump(reply)
        raise ValueError(f"unknown op {kind!r}")


class TopicScriptAgent(ScriptAgent):
    """A :class:`ScriptAgent` subscribed to ``"alpha"`` by its class attribute."""

    topics = ["alpha"]


class ResponderAgent(BaseAgent):
    """Handles messages in ``on_message``: journals ``{"hook": "on_message", "message":
    <dump>}`` and answers a request (unless its type is :data:`IGNORED`) with
    ``{"echo": <request data>, "by": <agent name>}``, journalling ``"replied"``.

    A task with ``{"action": "gate", "gate": <path>}`` journals ``gate_entered``, loops on
    checkpoints until the file exists, journals ``gate_passed`` and returns the ids of the
    messages handled while it waited. Any other task returns the ids handled so far.
    """

    def __init__(self) -> None:
        self.handled: list[str] = []

    def _journal(self, hook: str, **fields: Any) -> None:
        write_journal(self.config, hook, agent=self.context.name, **fields)

    async def on_start(self) -> None:
        self._journal("on_start")

    async def on_message(self, message: AgentMessage) -> None:
        self.handled.append(message.message_id)
        self._journal("on_message", message=dump(message))
        if message.correlation_id is not None and not message.is_reply:
            if message.message_type == IGNORED:
                return
            reply_id = await self.context.reply(
                message, {"echo": message.data, "by": self.context.name}
            )
            self._journal("replied", request_id=message.message_id, reply_id=reply_id)

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if task.input_data.get("action") != "gate":
            return {"handled": list(self.handled), "pid": os.getpid()}
        gate = Path(task.input_data["gate"])
        deadline = time.monotonic() + MAX_WAIT_SECONDS
        before = len(self.handled)
        self._journal("gate_entered", task_id=task.task_id)
        while not gate_is_open(gate):
            await self.context.checkpoint()
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {gate} was not opened in time")
            await asyncio.sleep(POLL_SECONDS)
        self._journal("gate_passed", task_id=task.task_id)
        return {"handled_while_waiting": self.handled[before:], "pid": os.getpid()}


class SyncHandlerAgent(BaseAgent):
    """A plain (``def``) ``on_message``: journals each message and whether it ran away from
    the event loop's thread (``off_loop``: no loop runs in the calling thread)."""

    def on_message(self, message: AgentMessage) -> None:
        try:
            asyncio.get_running_loop()
            off_loop = False
        except RuntimeError:
            off_loop = True
        write_journal(self.config, "on_message", message=dump(message), off_loop=off_loop)

    async def execute_task(self, task: Task) -> None:
        return None


class SlowHandlerAgent(BaseAgent):
    """``on_message`` journals ``handler_begun``, then waits (plain sleeps, no context
    call: no safe point) until the file named by the message's ``gate`` exists, then
    journals ``handler_ended``."""

    async def on_message(self, message: AgentMessage) -> None:
        write_journal(self.config, "handler_begun", message_id=message.message_id)
        gate = Path(message.data["gate"])
        deadline = time.monotonic() + MAX_WAIT_SECONDS
        # A file the test creates (maybe from another process); polled with plain sleeps
        # on purpose: a context call would be a safe point.
        while not gate_is_open(gate) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        write_journal(self.config, "handler_ended", message_id=message.message_id)

    async def execute_task(self, task: Task) -> None:
        return None


class CrashingHandlerAgent(BaseAgent):
    """``on_message`` journals ``handler_begun``, then ends its worker process at once
    (``os._exit``), before its first ``await``: a hard crash in the handler's first step."""

    async def on_message(self, message: AgentMessage) -> None:
        write_journal(self.config, "handler_begun", message_id=message.message_id)
        os._exit(3)

    async def execute_task(self, task: Task) -> None:
        return None


class CancellingHandlerAgent(BaseAgent):
    """``on_message``: a message of type ``boom`` makes the handler raise CancelledError
    (it awaits a future another part of the program cancelled); any other is recorded in
    the key-value store under ``seen:<type>``."""

    async def on_message(self, message: AgentMessage) -> None:
        if message.message_type == "boom":
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled
        await self.context.kv.set(f"seen:{message.message_type}", True)

    async def execute_task(self, task: Task) -> None:
        return None


class PongAgent(BaseAgent):
    """Replies to every request with ``{"pong": data}``."""

    async def on_message(self, message: AgentMessage) -> None:
        await self.context.reply(message, {"pong": message.data})

    async def execute_task(self, task: Task) -> None:
        return None


class AskWhileStoppingAgent(BaseAgent):
    """Its task waits (at most 10 s) for the runtime's shutdown to begin
    (``context.is_stopping``), then asks ``input_data["server"]`` twice and returns the
    replies' data."""

    async def execute_task(self, task: Task) -> list[Any]:
        deadline = time.monotonic() + 10
        while not self.context.is_stopping and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        server = task.input_data["server"]
        replies = []
        for index in (1, 2):
            reply = await self.context.request(server, "ping", index, timeout_seconds=3)
            replies.append(reply.data)
        return replies


class SilentAgent(BaseAgent):
    """Has no ``on_message``: messages wait in its mailbox until read for it."""

    async def execute_task(self, task: Task) -> None:
        return None


class PoisonReceiverAgent(BaseAgent):
    """Receives one message, appends its id to ``input_data["log"]`` and, for a message of
    type ``"poison"``, ends its process at once: the synchronous work a poison message
    sets off (a C extension crashing on it, say) kills the worker in the same turn of the
    loop as ``receive`` returned."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        message = await self.context.receive(timeout_seconds=MAX_WAIT_SECONDS)
        _append_id(task.input_data["log"], message.message_id)
        if message.message_type == "poison":
            os._exit(3)
        return message_to_json(message)


def _append_id(path: str, message_id: str) -> None:
    with Path(path).open("a", encoding="utf-8") as log:
        log.write(message_id + "\n")
