"""Child processes that hold a database, for tests of one runtime (one writer) per database."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.runtime import run_child_runtime


async def spawn(module: str, db_path: Path) -> asyncio.subprocess.Process:
    """Start ``python -m tests.support.<module> DB_PATH`` from the project root, with stdin
    and stdout piped: the child reports on stdout and ends its work when stdin closes."""
    return await run_child_runtime(module, db_path, stdin=True)


async def first_line(child: asyncio.subprocess.Process) -> str:
    """The child's first line of output ("" if it exited without one)."""
    assert child.stdout is not None
    return (await child.stdout.readline()).decode().strip()


async def finish(child: asyncio.subprocess.Process) -> None:
    """Close the child's stdin (its signal to finish) and wait for it to exit."""
    assert child.stdin is not None
    child.stdin.close()
    await child.wait()
