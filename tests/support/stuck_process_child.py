"""A runtime whose process agents cannot notice it dying, in a child process a test kills.

Usage: python -m tests.support.stuck_process_child DB_PATH
Starts two ``process`` agents: ``spinner`` runs a task that spins on its worker's event
loop (synchronous code: the loop never sees the socket close), ``stepper`` is paused in
the middle of a task (its worker is SIGSTOPped). Prints one JSON line ``{"runtime_pid":
..., "worker_pids": [...]}`` once both are in that state, then blocks until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from miminions import AgentRuntime, RuntimeConfig
from miminions.kernel.models import ProcessSettings
from tests.support.process_agents import CrashAgent, SteppingAgent
from tests.support.waiting import wait_until

# The spinning worker answers no heartbeat: it must not be killed for that during the test.
PATIENT = ProcessSettings(heartbeat_interval_seconds=60.0, heartbeat_timeout_seconds=600.0)


async def main(db_path: str) -> None:
    files = Path(db_path).parent
    progress, release = files / "stuck_progress", files / "stuck_release"
    config = RuntimeConfig(storage_path=db_path, default_isolation="process", process=PATIENT)
    async with AgentRuntime(config=config) as rt:
        spinner = await rt.register_agent("spinner", CrashAgent, config={"crashy": True})
        stepper = await rt.register_agent("stepper", SteppingAgent)
        pids = [(await rt.start_agent(a)).process_id for a in (spinner, stepper)]
        spinning = await rt.submit_task("spin", {"mode": "spin"}, agent_id=spinner)
        await rt.submit_task(
            "steps", {"progress": str(progress), "release": str(release)}, agent_id=stepper
        )
        await wait_until(progress.exists, "the stepper's first step")
        await rt.pause_agent(stepper, timeout_seconds=10)
        await wait_until(
            lambda: rt.get_agent_status(spinner).task_id == spinning, "the spinning task"
        )
        print(json.dumps({"runtime_pid": os.getpid(), "worker_pids": pids}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
