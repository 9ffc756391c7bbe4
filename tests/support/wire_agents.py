"""Agents for tests/integration/test_wire_limits.py: module level, so worker processes
import them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from miminions import BaseAgent, Task, ValidationError
from tests.support.process_agents import runtime_connection


class BigCheckpointAgent(BaseAgent):
    """First attempt: checkpoints ``input_data['bytes']`` bytes of state, then fails. A
    retry returns the size of the checkpoint it was handed back, in its context and in
    its task."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        last = self.context.last_checkpoint
        if last is None:
            await self.context.checkpoint({"blob": "x" * int(task.input_data["bytes"])})
            raise RuntimeError("first attempt fails after its checkpoint")
        return {"resumed_with": len(last["blob"]), "in_task": len(task.checkpoint["blob"])}


class ForgedErrorAgent(BaseAgent):
    """Writes, on its worker's connection, the error reply of its own run whose ``type``
    holds an escaped lone surrogate (valid JSON, no UTF-8 form once decoded), then waits."""

    async def execute_task(self, task: Task) -> None:
        run_id = _current_run_id()
        body = json.dumps(
            {"re": run_id, "error": {"type": "Bad\ud800Type", "message": "m", "traceback": ""}}
        ).encode()  # json.dumps escapes the surrogate as \ud800: the bytes are ASCII
        with runtime_connection() as connection:
            connection.sendall(len(body).to_bytes(4, "big") + body)
        await asyncio.sleep(60)


def _current_run_id() -> int:
    """The request id of the run this worker is running (the worker's own bookkeeping)."""
    import gc

    from miminions.plugins.process_worker import Worker

    (worker,) = [o for o in gc.get_objects() if isinstance(o, Worker)]
    (run_id,) = worker._begun
    return run_id


class KeysAgent(BaseAgent):
    """Lists the keys of the key-value store under ``input_data['prefix']``; returns how
    many, or the class and text of the error the call raised."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        try:
            keys = await self.context.kv.keys(task.input_data["prefix"])
        except Exception as exc:  # reported to the test
            return {
                "error": type(exc).__name__,
                "validation_error": isinstance(exc, ValidationError),
                "message": str(exc)[:300],
            }
        return {"count": len(keys)}
