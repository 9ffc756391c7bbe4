"""Agents for the group-call tests (inline): one whose ``on_pause`` fails, one that reaches
its next safe point only when the test lets it."""

from __future__ import annotations

import asyncio
from typing import Any

from miminions import BaseAgent, Task
from tests.support.agents import GATES, STARTED


class PauseFailsAgent(BaseAgent):
    """Idle, so a pause reaches it at once; its ``on_pause`` raises."""

    async def on_pause(self) -> dict[str, Any]:
        raise RuntimeError("on_pause broke")

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {}


class LateSafePointAgent(BaseAgent):
    """Sets ``STARTED[task name]``, then waits for ``GATES[task name]`` without reaching a
    safe point (a pause waits meanwhile), then reaches safe points until it is paused or
    cancelled."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        gate = GATES.setdefault(task.name, asyncio.Event())
        STARTED.setdefault(task.name, asyncio.Event()).set()
        await gate.wait()
        while True:
            await self.context.checkpoint({})
            await asyncio.sleep(0.005)
