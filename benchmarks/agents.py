"""Agents the benchmarks run. Module-level and importable, so they can be located by path."""

from __future__ import annotations

import asyncio
from typing import Any

from miminions import BaseAgent, Task


class NoOpAgent(BaseAgent):
    """Does nothing and returns nothing: measures the runtime's own cost per task (P-01)."""

    async def execute_task(self, task: Task) -> None:
        return None


class SleepAgent(BaseAgent):
    """Awaits ``asyncio.sleep`` for ``config["sleep_seconds"]`` (default 10 ms) per task (P-05).

    The sleep length comes from the agent's registration config, so tasks carry no payload.
    """

    async def execute_task(self, task: Task) -> dict[str, Any] | None:
        await asyncio.sleep(self.config.get("sleep_seconds", 0.01))
        return None
