"""Waiting on state that changes in another task or process, with a bound."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

#: The default bound for waiting on another process's progress.
WAIT_SECONDS = 15.0


async def wait_until(
    check: Callable[[], T | Awaitable[T]],
    what: str = "",
    within: float = WAIT_SECONDS,
) -> T:
    """Re-check ``check`` (sync or async) every 10 ms until it returns something truthy and
    return that. Fails the test after ``within`` seconds, naming ``what`` and the last value.

    Polling is right here: the state lives in another process (a worker, a file) or has no
    event to wait for; the bound keeps a broken run from hanging.
    """
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            name = what or getattr(check, "__name__", repr(check))
            pytest.fail(f"timed out after {within:g} s waiting for {name} (last: {value!r})")
        await asyncio.sleep(0.01)
