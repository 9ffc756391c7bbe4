"""A runtime whose process agent started a subprocess, in a child process a test kills.

Usage: python -m tests.support.spawning_child DB_PATH
Starts one ``process`` agent, has it start a long ``sleep`` subprocess, prints one JSON line
``{"worker_pid": ..., "child_pid": ...}``, then blocks until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from miminions import AgentRuntime, RuntimeConfig
from tests.support.process_agents import SpawningAgent


async def main(db_path: str) -> None:
    config = RuntimeConfig(storage_path=db_path, default_isolation="process")
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent("spawner", SpawningAgent)
        instance = await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("spawn", agent_id=agent_id))
        assert task.output_data is not None
        report = {"worker_pid": instance.process_id, "child_pid": task.output_data["child_pid"]}
        print(json.dumps(report), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
