"""A runtime in a child process that a test kills with SIGKILL mid-run.

Usage: python -m tests.support.crash_child DB_PATH
Prints one JSON line with the submitted task ids, then "started NAME" for each task an
agent begins; agents never finish, so tasks are running when the parent kills us.
"""

from __future__ import annotations

import asyncio
import json
import sys

from miminions import AgentRuntime, BaseAgent, RuntimeConfig, Task


class Hang(BaseAgent):
    async def execute_task(self, task: Task) -> None:
        # A checkpoint with state is committed together with the task's RUNNING status, so
        # once it returns the start is durable and recovery must count this attempt.
        await self.context.checkpoint({"started": True})
        print(f"started {task.name}", flush=True)
        await asyncio.sleep(3600)


async def main(db_path: str) -> None:
    # inline: this child is about the runtime's own recovery; killing a runtime with
    # process agents is covered in test_process_isolation.py
    config = RuntimeConfig(storage_path=db_path, default_isolation="inline")
    async with AgentRuntime(config=config) as rt:
        await rt.pause_queue()
        ids = {
            "no_retries": await rt.submit_task("no_retries", priority=0, max_retries=0),
            "with_retries": await rt.submit_task("with_retries", priority=0, max_retries=2),
            "pending_a": await rt.submit_task("pending_a", priority=90),
            "pending_b": await rt.submit_task("pending_b", priority=90),
        }
        ids["blocked"] = await rt.submit_task("blocked", dependencies=[ids["pending_a"]])
        for name in ("hang1", "hang2"):
            await rt.start_agent(await rt.register_agent(name, Hang))
        print(json.dumps(ids), flush=True)
        await rt.resume_queue()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
