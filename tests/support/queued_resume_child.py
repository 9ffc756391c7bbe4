"""A runtime in a child process that a test kills while a paused agent's resume is queued.

Usage: python -m tests.support.queued_resume_child DB_PATH
The database holds agent ``keeper`` paused (an earlier runtime paused it). With one agent
slot, this runtime starts ``other`` and then asks to resume ``keeper``, which waits as
``queued``; once that is committed it prints "queued" and blocks until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from miminions import AgentRuntime, AgentStatus, BaseAgent, ResourceLimits, RuntimeConfig, Task

#: The state KeeperAgent's on_pause returns.
KEPT_STATE = {"precious": [1, 2, 3]}


class KeeperAgent(BaseAgent):
    """Pauses with :data:`KEPT_STATE`; records what ``on_resume`` gets in ``RESUMED``."""

    RESUMED: list[Any] = []

    async def on_pause(self) -> dict[str, Any]:
        return KEPT_STATE

    async def on_resume(self, state: Any) -> None:
        KeeperAgent.RESUMED.append(state)

    async def execute_task(self, task: Task) -> None:
        return None


def one_slot_config(db_path: str) -> RuntimeConfig:
    """Inline agents, one agent slot: a second start (or resume) waits as queued."""
    return RuntimeConfig(
        storage_path=db_path,
        default_isolation="inline",
        limits=ResourceLimits(max_concurrent_agents=1),
    )


async def main(db_path: str) -> None:
    async with AgentRuntime(config=one_slot_config(db_path)) as rt:
        keeper = await rt.register_agent("keeper", KeeperAgent)
        assert rt.get_agent_status(keeper).status is AgentStatus.PAUSED
        await rt.start_agent(await rt.register_agent("other", KeeperAgent))
        resumed = await rt.resume_agent(keeper)
        assert resumed.status is AgentStatus.QUEUED, resumed
        await rt.store.flush()
        print("queued", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
