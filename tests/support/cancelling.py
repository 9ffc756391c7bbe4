"""A program cancelling tasks of its loop from outside the runtime, for the tests of what the
runtime makes of that (tests/integration/test_outside_cancel.py and its neighbours)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from miminions import Event, EventType, hookimpl


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


class AtTheWorkersCreation:
    """A plugin calling ``sweep`` once an agent that resumed (``agent_resumed``) was handed
    its next task: after its worker was created, before that worker's first step.

    The dispatch pass giving the agent its task is queued as it resumes, right after the
    event; the sweep is queued behind that pass, and the worker's first step behind it.
    """

    def __init__(self, sweep: Callable[[], None]) -> None:
        self._sweep = sweep

    @hookimpl
    def miminions_event(self, event: Event) -> None:
        """Queue the sweep behind the dispatch pass the resume queues next."""
        if event.event_type is EventType.AGENT_RESUMED:
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._sweep)
