"""A main script with a top-level side effect that runs a ``spawn``-started process agent.

Usage: python -m tests.support.spawn_main_child DB_PATH
Every time this module's top level runs it appends ``PID NAME`` to ``main_runs.log`` beside
the database: a worker that re-ran the main script would add a line. Runs one task on a
process agent (defined in another module), prints ``{"runtime_pid": ..., "worker_pid":
...}`` and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from miminions import AgentRuntime, RuntimeConfig
from miminions.kernel.models import ProcessSettings
from tests.support.process_agents import SmallTaskAgent

with open(Path(sys.argv[1]).with_name("main_runs.log"), "a", encoding="utf-8") as log:
    log.write(f"{os.getpid()} {__name__}\n")


async def main(db_path: str) -> None:
    config = RuntimeConfig(
        storage_path=db_path,
        default_isolation="process",
        process=ProcessSettings(start_method="spawn"),
    )
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent("spawned", SmallTaskAgent)
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("t", agent_id=agent_id), 60)
        print(json.dumps({"runtime_pid": os.getpid(), "worker_pid": task.output_data["pid"]}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
