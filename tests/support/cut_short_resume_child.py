"""A program under ``miminions.run`` that a test interrupts with Ctrl-C twice.

Usage: python -m tests.support.cut_short_resume_child DB_PATH first|second

``first``: starts the agent ``keeper`` (inline), pauses it (its on_pause keeps
``{"pages": 7}``) and stops cleanly. ``second``: with one agent slot, starts ``hog``, whose
task runs until interrupted, and resumes ``keeper``, which therefore queues; prints
``ready``, then waits. Once the stop waits for ``hog``'s task, that task prints
``stopping``, so the test knows when to press Ctrl-C again.
``third``: registers ``keeper`` again and prints its status and, if paused, what its
on_resume got.
"""

from __future__ import annotations

import asyncio
import json
import sys

import miminions
from miminions import AgentRuntime, BaseAgent, ResourceLimits, RuntimeConfig, Task


class Keeper(BaseAgent):
    resumed_with: list[object] = []

    def __init__(self) -> None:
        self.pages = 7

    async def execute_task(self, task: Task) -> dict[str, object]:
        return {}

    async def on_pause(self) -> dict[str, object]:
        return {"pages": self.pages}

    async def on_resume(self, state: dict[str, object]) -> None:
        Keeper.resumed_with.append(state)


class Hog(BaseAgent):
    """Runs until interrupted; says ``stopping`` once told a stop is coming (the stop is
    then waiting for this task)."""

    async def execute_task(self, task: Task) -> dict[str, object]:
        while not self.context.is_stopping:  # noqa: ASYNC110 - a flag, no event to await
            await asyncio.sleep(0.01)
        print("stopping", flush=True)
        await asyncio.Event().wait()
        return {}


async def main(db: str, step: str) -> None:
    config = RuntimeConfig(
        storage_path=db,
        default_isolation="inline",
        shutdown_timeout_seconds=60.0,
        limits=ResourceLimits(max_concurrent_agents=1),
    )
    async with AgentRuntime(config=config) as rt:
        keeper = await rt.register_agent("keeper", Keeper)
        if step == "first":
            await rt.start_agent(keeper)
            await rt.pause_agent(keeper)
        elif step == "second":
            hog = await rt.register_agent("hog", Hog)
            await rt.start_agent(hog)
            await rt.submit_task("hog", agent_id=hog)
            while rt.get_agent_status(hog).task_id is None:  # noqa: ASYNC110 - a status
                await asyncio.sleep(0.01)
            assert (await rt.resume_agent(keeper)).status.value == "queued"
            print("ready", flush=True)
            await asyncio.Event().wait()
        else:
            status = rt.get_agent_status(keeper).status.value
            if status == "paused":
                await rt.resume_agent(keeper)
            print(json.dumps({"status": status, "resumed_with": Keeper.resumed_with}), flush=True)


if __name__ == "__main__":
    miminions.run(main(sys.argv[1], sys.argv[2]))
