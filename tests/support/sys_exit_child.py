"""Child program for tests/integration/test_sync_context.py: an inline agent whose code
raises SystemExit (what ``sys.exit()`` / argparse do inside a library) — sync or async
(``argv[1]``), from ``execute_task``, ``on_message`` or its constructor (``argv[2]``).
Prints what the runtime did with it."""

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
    """Exits from its constructor (argparse on a bad option); its task is async."""

    def __init__(self) -> None:
        sys.exit(2)

    async def execute_task(self, task: Task) -> Any:
        return {"ok": True}


async def main(kind: str, where: str) -> None:
    config = RuntimeConfig(storage_path=":memory:")
    agent = ExitingSyncAgent if kind == "sync" else ExitingAsyncAgent
    async with AgentRuntime(config=config) as rt:
        if where == "constructor":
            bad_id = await rt.register_agent("bad", ExitingConstructor, isolation="inline")
            status = await rt.start_agent(bad_id)
            print("START", status.status.value, status.error_message, flush=True)
        agent_id = await rt.register_agent("exiting", agent, isolation="inline")
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
        asyncio.run(main(sys.argv[1], sys.argv[2]))
    except BaseException as exc:
        print("PROGRAM ENDED BY", type(exc).__name__, exc, flush=True)
        raise
