"""A program whose inline agent's synchronous code never returns, run as a child process.

Usage: python -m tests.support.stuck_sync_child DB_PATH
Runs one task on an ``inline`` agent whose synchronous ``execute_task`` blocks forever,
lets the task time out, stops the runtime and returns from ``main``; prints one line per
step. The test checks that the process then exits: the stuck call is abandoned, not waited
for at interpreter exit.
"""

from __future__ import annotations

import asyncio
import sys
import threading

from miminions import AgentRuntime, RuntimeConfig, Task


class StuckSyncAgent:
    """Synchronous code that never returns (waits on an event nobody sets)."""

    def execute_task(self, task: Task) -> None:
        threading.Event().wait()


async def main(db_path: str) -> None:
    async with AgentRuntime(config=RuntimeConfig(storage_path=db_path)) as rt:
        agent_id = await rt.register_agent("stuck", StuckSyncAgent(), isolation="inline")
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task("forever", timeout_seconds=0.2, max_retries=0)
        task = await rt.wait_for_task(task_id, timeout_seconds=30)
        print(f"task {task.status.value}", flush=True)
    print("runtime stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
    print("main returned", flush=True)
