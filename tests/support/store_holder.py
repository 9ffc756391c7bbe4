"""A child process that opens a writable :class:`SQLiteStore` and holds it until killed.

Usage: python -m tests.support.store_holder DB_PATH
Prints "open PID" once the store is open, then waits for its stdin to close.
"""

from __future__ import annotations

import asyncio
import os
import sys

from miminions.plugins.sqlite_store import SQLiteStore


async def main(db_path: str) -> None:
    async with SQLiteStore(db_path):
        print(f"open {os.getpid()}", flush=True)
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
