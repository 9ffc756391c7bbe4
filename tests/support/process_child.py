"""A runtime with process agents in a child process, which a test kills with SIGKILL.

Usage: python -m tests.support.process_child DB_PATH
Starts two ``process`` agents, prints one JSON line ``{"runtime_pid": ..., "worker_pids":
[...]}`` once both workers run, then blocks until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from miminions import AgentRuntime, RuntimeConfig
from tests.support.process_agents import CrashAgent


async def main(db_path: str) -> None:
    config = RuntimeConfig(storage_path=db_path, default_isolation="process")
    async with AgentRuntime(config=config) as rt:
        pids = []
        for name in ("worker1", "worker2"):
            instance = await rt.start_agent(await rt.register_agent(name, CrashAgent))
            pids.append(instance.process_id)
        print(json.dumps({"runtime_pid": os.getpid(), "worker_pids": pids}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
