"""Agents the messaging benchmarks run (module level, so worker processes import them)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from miminions import AgentMessage, BaseAgent, Task


class LatencyAgent(BaseAgent):
    """Measures, in its own process, how long each message took from creation to its
    ``on_message``; a task returns the latencies (seconds) collected since the last one."""

    async def on_start(self) -> None:
        self.latencies: list[float] = []
        self.arrived = asyncio.Event()
        self.expected = 0

    async def on_message(self, message: AgentMessage) -> None:
        self.latencies.append((datetime.now(UTC) - message.created_at).total_seconds())
        if len(self.latencies) >= self.expected:
            self.arrived.set()

    async def execute_task(self, task: Task) -> dict[str, Any]:
        self.expected = int(task.input_data.get("expect", 0))
        if len(self.latencies) < self.expected:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 60)
        latencies, self.latencies = self.latencies, []
        return {"latencies": latencies}


class SenderAgent(BaseAgent):
    """Sends ``count`` messages to ``to``: spaced by ``gap`` seconds (latency) or as fast as
    it can (throughput, ``gap`` 0); returns the seconds the sending took."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        data = task.input_data
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(int(data["count"])):
            await self.context.send(data["to"], "ping", {"i": index})
            if data.get("gap"):
                await asyncio.sleep(float(data["gap"]))
        return {"seconds": loop.time() - start}


class ReplyAgent(BaseAgent):
    """Answers every request at once."""

    async def on_message(self, message: AgentMessage) -> None:
        if message.correlation_id is not None and not message.is_reply:
            await self.context.reply(message, message.data)

    async def execute_task(self, task: Task) -> None:
        return None
