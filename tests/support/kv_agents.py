"""Agents that use ``context.kv`` and group messages; module level, so a worker process can
import them. They report only through their task results."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

from miminions import BaseAgent, Task


class KVAgent(BaseAgent):
    """Does what ``input_data["op"]`` says with the shared key-value store."""

    async def execute_task(self, task: Task) -> Any:
        data = task.input_data
        kv = self.context.kv
        op = data["op"]
        namespace = data.get("namespace", "")
        if op == "set":
            return {"version": await kv.set(data["key"], data["value"], namespace=namespace)}
        if op == "get":
            return {"value": await kv.get(data["key"], data.get("default"), namespace=namespace)}
        if op == "depth":  # how deep the value nests in lists
            value, depth = await kv.get(data["key"], namespace=namespace), 0
            while isinstance(value, list):
                value, depth = value[0], depth + 1
            return {"depth": depth}
        if op == "follow":  # open a watch, read the key, then see its next change
            async with await kv.open_watch(data["prefix"]) as watch:
                current = await kv.get(data["key"])
                await kv.set(data["key"], "done")
                return {"current": current, "seen": await watch.next(timeout_seconds=10)}
        if op == "defaults":  # what get gives for an absent key is the default itself
            missing = object()
            return {
                "sentinel": await kv.get(data["key"], missing) is missing,
                "tuple": await kv.get(data["key"], (1, 2)) == (1, 2),
            }
        if op == "open_only":  # open a watch and leave it open as the task ends
            await kv.open_watch(data["prefix"])
            return {"opened": True}
        if op == "open_and_raise":  # open a watch, hold it, and fail the task
            watch = await kv.open_watch(data["prefix"])
            raise RuntimeError(f"failed holding {watch!r}")
        if op == "give_up_once":  # give up on one next(), then see a later change
            async with await kv.open_watch(data["prefix"]) as watch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.next(), 0.2)
                await kv.set(data["key"], "done")
                return {"change": await watch.next(timeout_seconds=10)}
        if op == "give_up_held":  # see test_kv: a change that came as next was given up
            watch = await kv.open_watch("order/")
            await kv.set("order/k", 1)
            await kv.set("order/k", 2)
            first = asyncio.ensure_future(watch.next())
            for _ in range(5):  # its request leaves
                await asyncio.sleep(0)
            held = _hold_until(data["flag"])  # the runtime answers it meanwhile
            first.cancel()
            seen = [await watch.next(timeout_seconds=5), await watch.next(timeout_seconds=5)]
            await watch.close()
            return {"held": held, "values": [None if c is None else c["value"] for c in seen]}
        if op == "two_readers":  # give up on a next(), then ask for two changes at once
            async with await kv.open_watch(data["prefix"]) as watch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.next(), 0.2)  # nothing came: given up
                await kv.set("readers", "ready")  # (not watched)
                readers = [watch.next(timeout_seconds=10) for _ in range(2)]
                got = await asyncio.gather(*readers, return_exceptions=True)
            return {
                "got": [repr(c) if isinstance(c, BaseException) else c and c["value"] for c in got]
            }
        if op == "follow_until":  # count the changes under prefix until value "stop"
            count = 0
            async for change in kv.watch(data["prefix"]):
                if change["value"] == "stop":
                    break
                count += 1
            return {"changes": count}
        if op == "cas":
            expected: Any = data.get("expected")
            if data.get("expected_as_tuple"):
                expected = tuple(expected)
            changed = await kv.compare_and_set(
                data["key"], expected, data.get("value"), namespace=namespace
            )
            return {"changed": changed}
        if op == "delete":
            return {"deleted": await kv.delete(data["key"], namespace=namespace)}
        if op == "keys":
            return {"keys": await kv.keys(data.get("prefix", ""), namespace=namespace)}
        if op == "watch":
            seen = []
            async for change in kv.watch(data.get("prefix", ""), namespace=namespace):
                seen.append(change)
                if data.get("edit") and isinstance(change["value"], dict):
                    change["value"]["edited"] = True  # what it was given is its own
                if len(seen) >= data["count"]:
                    break
            return {"seen": seen}
        raise ValueError(f"unknown op {op!r}")


class GroupMailAgent(BaseAgent):
    """Sends to a group, or receives one message and returns it."""

    async def execute_task(self, task: Task) -> Any:
        data = task.input_data
        if data.get("send_to_group"):
            ids = await self.context.send_to_group(data["send_to_group"], "memo", data.get("data"))
            return {"sent": len(ids)}
        message = await self.context.receive(timeout_seconds=10)
        return {"type": message.message_type, "data": message.data, "from": message.sender_id}


def sync_watch_poller(task: Task, context: Any) -> dict[str, Any]:
    """A synchronous agent polling a watch with ``call_sync`` timeouts: the first poll
    times out (nothing changed yet), then it writes a key and polls again."""
    watch = context.call_sync(context.kv.open_watch(task.input_data["prefix"]))
    with contextlib.suppress(TimeoutError):
        context.call_sync(watch.next(), timeout_seconds=0.2)
    context.call_sync(context.kv.set(task.input_data["key"], "done"))
    change = context.call_sync(watch.next(timeout_seconds=10), timeout_seconds=15)
    context.call_sync(watch.close())
    return {"change": change}


#: Set by :func:`sync_watch_orphaner` once its first ``next`` was given up (by name).
GIVEN_UP: dict[str, threading.Event] = {}


def sync_watch_orphaner(task: Task, context: Any) -> dict[str, Any]:
    """A synchronous agent whose ``call_sync(watch.next())`` is given up while the loop is
    held (see test_kv), then asks for the next change."""
    given_up = GIVEN_UP[task.input_data["name"]]
    watch = context.call_sync(context.kv.open_watch(task.input_data["prefix"]))
    try:
        first = context.call_sync(watch.next(), timeout_seconds=1.0)
    except TimeoutError:
        first = "given up"
    given_up.set()
    change = context.call_sync(watch.next(timeout_seconds=10), timeout_seconds=15)
    context.call_sync(watch.close())
    return {"first": first, "change": change}


def _hold_until(path: str, within: float = 10.0) -> bool:
    """Block this thread (and the agent's loop) until ``path`` exists, at most ``within``
    seconds; whether it came."""
    deadline = time.monotonic() + within
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # (holding the loop is the point)
    return True
