"""Process agents whose cancelled task winds down slowly (imported by worker processes by
module path), for tests/integration/test_cancel_wind_down.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from miminions import BaseAgent, Task


def _exists(path: str) -> bool:
    return Path(path).exists()


def _append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")


class SteppingSlowCleanupAgent(BaseAgent):
    """With ``input_data['quick']``: completes at once. Otherwise appends ``start <pid>`` to
    ``input_data['log']``, steps (a safe point every ~10 ms) until cancelled, appends
    ``cancelled``, then winds down (no safe point) until the file ``input_data['release']``
    exists, appends ``end`` and re-raises."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        data = task.input_data
        if data.get("quick"):
            return {"pid": os.getpid()}
        log = data["log"]
        _append_line(log, f"start {os.getpid()}")
        try:
            while True:
                await self.context.checkpoint()
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            _append_line(log, "cancelled")
            while not _exists(data["release"]):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            _append_line(log, "end")
            raise


class BlockingCleanupAgent(BaseAgent):
    """With config ``slow``: appends ``start <name> <pid>`` to ``input_data['log']``, runs
    until cancelled, appends ``cancelled <name>``, then cleans up synchronously (blocking its
    worker's loop, a synchronous flush say) until the file ``input_data['release']`` exists,
    appends ``end <name>`` and re-raises. Without it: appends ``start ...`` and completes."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        import time

        log = task.input_data["log"]
        name = self.context.name
        _append_line(log, f"start {name} {os.getpid()}")
        if not self.config.get("slow"):
            return {"pid": os.getpid()}
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            _append_line(log, f"cancelled {name}")
            while not _exists(task.input_data["release"]):
                time.sleep(0.01)  # noqa: ASYNC251 (a cleanup that blocks the loop, on purpose)
            _append_line(log, f"end {name}")
            raise
        return {"pid": os.getpid()}
