"""Child program for tests/integration/test_sync_context.py: an inline agent whose
synchronous code raises SystemExit (what ``sys.exit()`` / argparse do inside a library),
from ``execute_task`` or from ``on_message``. Prints what the runtime did with it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from miminions import AgentRuntime, RuntimeConfig, Task


class ExitingSyncAgent:
    """Exits (as ``sys.exit(2)``) from its sync task or handler when asked to."""

    def on_message(self, message: Any) -> None:
        if message.message_type == "exit":
            sys.exit(2)

    def execute_task(self, task: Task) -> Any:
        if task.input_data.get("exit"):
            sys.exit(2)
        return {"ok": True}


async def main(where: str) -> None:
    config = RuntimeConfig(storage_path=":memory:")
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent("exiting", ExitingSyncAgent, isolation="inline")
        await rt.start_agent(agent_id)
        if where == "task":
            bad = await rt.submit_task("bad", {"exit": True}, max_retries=0)
            done = await rt.wait_for_task(bad, 10)
            print("FIRST", done.status.value, done.error_message, flush=True)
        else:
            await rt.send_message(agent_id, "exit")
        good = await rt.wait_for_task(await rt.submit_task("good"), 10)
        print("SECOND", good.status.value, flush=True)
    print("RUNTIME STOPPED CLEANLY", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1]))
    except BaseException as exc:
        print("PROGRAM ENDED BY", type(exc).__name__, exc, flush=True)
        raise
