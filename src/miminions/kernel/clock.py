"""Timers that can stop counting while something is paused (F-25).

A :class:`FreezableTimer` fires its callback after a delay of *unfrozen* time: while it is
frozen for one or more reasons (the queue is paused, the task's agent is paused) the
remaining delay is kept and the clock does not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class FreezableTimer:
    """Call ``callback`` once ``delay`` seconds of unfrozen time have passed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        delay: float,
        callback: Callable[[], None],
        frozen_by: set[str] | None = None,
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._remaining = max(delay, 0.0)
        self._frozen_by: set[str] = set(frozen_by or ())
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._done = False
        if not self._frozen_by:
            self._arm()

    @property
    def remaining(self) -> float:
        """Seconds of unfrozen time left before the callback runs."""
        if self._handle is not None:
            return max(self._when - self._loop.time(), 0.0)
        return self._remaining

    @property
    def frozen(self) -> bool:
        """True while at least one reason holds the timer."""
        return bool(self._frozen_by)

    def freeze(self, reason: str) -> None:
        """Stop the clock for ``reason`` (several reasons can hold it at once)."""
        if self._done:
            return
        if not self._frozen_by and self._handle is not None:
            self._remaining = self.remaining
            self._handle.cancel()
            self._handle = None
        self._frozen_by.add(reason)

    def thaw(self, reason: str) -> None:
        """Release ``reason``; the clock runs again once no reason holds it."""
        if self._done or reason not in self._frozen_by:
            return
        self._frozen_by.discard(reason)
        if not self._frozen_by:
            self._arm()

    def cancel(self) -> None:
        """Never call the callback."""
        self._done = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        self._when = self._loop.time() + self._remaining
        self._handle = self._loop.call_at(self._when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._done = True
        self._callback()


class FreezableDeadline:
    """Freezes an ``asyncio.timeout()`` context: the deadline moves by the frozen time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: asyncio.Timeout) -> None:
        self._loop = loop
        self._timeout = timeout
        self._frozen_by: set[str] = set()
        self._remaining: float | None = None

    def freeze(self, reason: str) -> None:
        """Stop the deadline from approaching while ``reason`` holds."""
        if not self._frozen_by:
            when = self._timeout.when()
            self._remaining = None if when is None else max(when - self._loop.time(), 0.0)
            self._timeout.reschedule(None)
        self._frozen_by.add(reason)

    def thaw(self, reason: str) -> None:
        """Release ``reason``; the deadline approaches again once nothing holds it."""
        if reason not in self._frozen_by:
            return
        self._frozen_by.discard(reason)
        if not self._frozen_by and self._remaining is not None:
            self._timeout.reschedule(self._loop.time() + self._remaining)
