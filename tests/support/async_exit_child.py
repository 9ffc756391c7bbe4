"""Child program for tests/integration/test_sync_context.py: an inline agent whose *async*
code raises SystemExit (``sys.exit(2)``), from ``execute_task``, ``on_message`` or its
constructor. Prints what the runtime did with it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from miminions import AgentRuntime, RuntimeConfig, Task


class ExitingAsyncAgent:
    """Exits (as ``sys.exit(2)``) from its async task or handler when asked to."""

    async def on_message(self, message: Any) -> None:
        if message.message_type == "exit":
            sys.exit(2)

    async def execute_task(self, task: Task) -> Any:
        if task.input_data.get("exit"):
            sys.exit(2)
        return {"ok": True}


class ExitingConstructor:
    """Exits from its constructor."""

    def __init__(self) -> None:
        sys.exit(2)  # argparse on a bad option, in the constructor

    async def execute_task(self, task: Task) -> Any:
        return {"ok": True}


async def main(where: str) -> None:
    config = RuntimeConfig(storage_path=":memory:")
    async with AgentRuntime(config=config) as rt:
        if where == "constructor":
            bad_id = await rt.register_agent("bad", ExitingConstructor, isolation="inline")
            try:
                status = await rt.start_agent(bad_id)
            except Exception as exc:
                print("START FAILED", type(exc).__name__, exc, flush=True)
            else:
                print("START", status.status.value, status.error_message, flush=True)
        agent_id = await rt.register_agent("exiting", ExitingAsyncAgent, isolation="inline")
        await rt.start_agent(agent_id)
        if where == "task":
            bad = await rt.submit_task("bad", {"exit": True}, max_retries=0)
            done = await rt.wait_for_task(bad, 10)
            print("FIRST", done.status.value, done.error_message, flush=True)
        elif where == "handler":
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
