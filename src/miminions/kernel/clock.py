"""Timers that can stop counting while something is paused (F-25).

A :class:`FreezableTimer` fires its callback after a delay of *unfrozen* time: while it is
frozen for one or more reasons (the queue is paused, the task's agent is paused) the
remaining delay is kept and the clock does not run.
"""

from __future__ import annotations

import asyncio
import heapq
import math
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


class Deadline:
    """One deadline in a :class:`Deadlines` set; it can be frozen while paused (F-25).

    Subclasses implement :meth:`on_expiry` (the executor's run record is one, so no extra
    object is made per task).
    """

    __slots__ = ("_frozen_by", "_remaining", "when")

    def __init__(self) -> None:
        self.when: float | None = None  # None: not armed (frozen or done)
        self._remaining = 0.0
        self._frozen_by: set[str] | None = None

    @property
    def remaining(self) -> float | None:
        """Seconds left while frozen; None while it runs (or is done)."""
        return self._remaining if self._frozen_by is not None else None

    def on_expiry(self) -> None:
        """Called once when the deadline passes."""
        raise NotImplementedError


class Deadlines:
    """Many deadlines served by one loop timer, armed for the earliest of them.

    Task timeouts are mostly cancelled long before they expire; keeping them in one heap
    costs a push per task instead of a timer handle and a timeout context per task.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = math.inf
        self._stale = 0

    def __len__(self) -> int:
        """Heap entries held: live deadlines plus cleared ones not yet dropped."""
        return len(self._heap)

    def start(self, deadline: Deadline, delay: float) -> None:
        """Arm ``deadline`` to expire after ``delay`` seconds."""
        self._push(deadline, self._loop.time() + delay)

    def clear(self, deadline: Deadline) -> None:
        """The deadline is not needed any more (its work ended)."""
        if deadline.when is not None:
            self._stale += 1
            # Cleared entries stay in the heap until popped; rebuild it once they are the
            # majority so finished work is not kept alive until its original expiry.
            if self._stale > 1024 and self._stale * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2].when == e[0] and e[2] is not deadline]
                heapq.heapify(self._heap)
                self._stale = 0
        deadline.when = None
        deadline._frozen_by = None

    def freeze(self, deadline: Deadline, reason: str) -> None:
        """Stop ``deadline`` from approaching while ``reason`` holds."""
        if deadline._frozen_by is None:
            if deadline.when is None:
                return  # not armed
            deadline._remaining = max(deadline.when - self._loop.time(), 0.0)
            deadline.when = None
            self._stale += 1
            deadline._frozen_by = set()
        deadline._frozen_by.add(reason)

    def thaw(self, deadline: Deadline, reason: str) -> None:
        """Release ``reason``; the deadline approaches again once nothing holds it."""
        frozen_by = deadline._frozen_by
        if frozen_by is None or reason not in frozen_by:
            return
        frozen_by.discard(reason)
        if not frozen_by:
            deadline._frozen_by = None
            self._push(deadline, self._loop.time() + deadline._remaining)

    def close(self) -> None:
        """Cancel the timer; no deadline expires after this."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()

    def _push(self, deadline: Deadline, when: float) -> None:
        deadline.when = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, deadline))
        if when < self._armed_for:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = math.inf
        now = self._loop.time()
        heap = self._heap
        expired = []
        while heap and heap[0][0] <= now:
            when, _, deadline = heapq.heappop(heap)
            if deadline.when == when:  # still armed for this very instant
                deadline.when = None
                expired.append(deadline)
            elif self._stale:
                self._stale -= 1
        while heap and heap[0][2].when != heap[0][0]:
            heapq.heappop(heap)  # drop stale entries so the timer is armed for a live one
            if self._stale:
                self._stale -= 1
        if heap:
            self._arm(heap[0][0])
        for deadline in expired:
            deadline.on_expiry()
