"""A program cancelling tasks of its loop from outside the runtime, for the tests of what the
runtime makes of that (tests/integration/test_outside_cancel.py and its neighbours)."""

from __future__ import annotations

import asyncio
from typing import Any


def cancel_everything() -> list[asyncio.Task[Any]]:
    """Cancel every task of the running loop but the caller's, as ``asyncio.run`` does to
    the tasks left when its main coroutine returns (or a shutdown handler); return them."""
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    for other in others:
        other.cancel()
    return others


def executor_workers(name: str) -> list[asyncio.Task[Any]]:
    """The executor's worker tasks running ``name`` (``_work``, ``_work_prefetched``)."""
    return [task for task in asyncio.all_tasks() if task.get_coro().__name__ == name]  # type: ignore[union-attr]
