"""A runtime in a child process that tries to start on a database and holds it.

Usage: python -m tests.support.start_child DB_PATH
Prints "started PID" or "refused ERROR_TYPE: MESSAGE" as its first line. A started runtime
runs until its stdin closes, then stops cleanly and prints "stopped".
"""

from __future__ import annotations

import asyncio
import os
import sys

from miminions import AgentRuntime


async def main(db_path: str) -> None:
    rt = AgentRuntime(db_path)
    try:
        await rt.start()
    except Exception as exc:
        print(f"refused {type(exc).__name__}: {exc}", flush=True)
        return
    print(f"started {os.getpid()}", flush=True)
    # Stop when the parent closes our stdin (read in a thread: the loop stays free).
    await asyncio.to_thread(sys.stdin.read)
    await rt.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
