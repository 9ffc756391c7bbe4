"""Child for tests/integration/test_outside_cancel.py:
``python -m tests.support.outside_cancel_child MODE DB``.

Each mode runs one slow task (an agent that waits for ever), prints "ready" once it runs:
``ctrl-c``: inside ``async with AgentRuntime``, then waits for Ctrl-C;
``cancel-all``: cancels every other task of the loop, stops the runtime, returns;
``no-stop``: (two agents) returns from main without stopping the runtime, so asyncio.run
cancels every task left."""

from __future__ import annotations

import asyncio
import signal
import sys

from miminions import AgentRuntime, RuntimeConfig

STARTED = asyncio.Event()


async def slow(task: object, context: object) -> str:
    STARTED.set()
    await asyncio.Event().wait()
    return "never"


async def main(mode: str, db: str) -> None:
    # Ctrl-C: the stop lets the running task finish for the shutdown timeout, then
    # interrupts it: a short one. The others: a long one, which the stop must not wait out.
    config = RuntimeConfig(
        storage_path=db, shutdown_timeout_seconds=0.5 if mode == "ctrl-c" else 300.0
    )
    async with StoppedAtEnd(mode, AgentRuntime(config=config)) as rt:
        agent = await rt.register_agent("worker", slow, isolation="inline")
        await rt.start_agent(agent)
        if mode == "no-stop":
            await rt.start_agent(await rt.register_agent("other", slow, isolation="inline"))
        await rt.submit_task("job")
        await STARTED.wait()
        print("ready", flush=True)
        if mode == "ctrl-c":
            await asyncio.Event().wait()
        elif mode == "cancel-all":
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.wait(others)


class StoppedAtEnd:
    """``async with``: start the runtime; stop it at the end unless the mode is no-stop."""

    def __init__(self, mode: str, rt: AgentRuntime) -> None:
        self.mode, self.rt = mode, rt

    async def __aenter__(self) -> AgentRuntime:
        await self.rt.start()
        return self.rt

    async def __aexit__(self, *exc: object) -> None:
        if self.mode != "no-stop":
            await self.rt.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
    print("exited", flush=True)
