"""Agents for the scheduling robustness tests. Process agents import them by module path,
so they live at module level; they talk to the test through task input and files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from miminions import BaseAgent, Task


def _exists(path: str) -> bool:
    return Path(path).exists()


def _touch(path: str) -> None:
    Path(path).touch()


class SlowCleanupAgent(BaseAgent):
    """Its first attempt waits forever; when cancelled (a timeout) it creates the file
    named by ``input_data["cleaning"]`` and spends ``input_data["cleanup_seconds"]``
    cleaning up (closing a session, say) before it gives up. Later attempts complete at
    once."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if task.retry_count == 0:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                _touch(task.input_data["cleaning"])
                await asyncio.sleep(task.input_data.get("cleanup_seconds", 1.0))
                raise
        return {"attempt": task.retry_count + 1}


class FileGatedAgent(BaseAgent):
    """Runs until the file named by ``input_data["release"]`` exists (none: ends at once),
    passing a checkpoint every 10 ms, and returns its task's name."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        release = task.input_data.get("release")
        while release is not None and not _exists(release):
            await self.context.checkpoint()
            await asyncio.sleep(0.01)
        return {"name": task.name}
