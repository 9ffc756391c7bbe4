"""Booking a big batch of new tasks a slice at a time.

``submit_tasks`` checks a whole batch before it accepts any of it (all or nothing). A big
batch is then *booked* (put in the scheduler and the task book, written to the store,
announced) a slice at a time, the event loop running between slices: agents start on the
first tasks while the rest are booked, and nothing else on the loop waits long for a big
submit (booking 10,000 tasks in one go holds the loop for a tenth of a second or more).

Once accepted, a batch is booked in full whatever happens to the coroutine that submitted
it: cancelled, it books the rest at once before the cancellation goes on; a stopping runtime
books the rest at once with :meth:`SlicedBooking.finish`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

#: Tasks booked per slice: about 2-4 ms of work on a 2-core machine, so a timer that fires
#: while a slice is booked is late by no more than that.
SLICE_SIZE = 256

T = TypeVar("T")


def slices_of(items: Sequence[T], size: int = SLICE_SIZE) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of ``size`` (the last one may be shorter)."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class SlicedBooking(Generic[T]):
    """One accepted batch being booked a slice at a time.

    ``book_slice`` books one slice; if it raises, the slices after it are not booked,
    ``give_up`` is told how many items were left (that slice's included) and the error is
    kept in :attr:`error` for the submitter to raise. ``on_end`` runs once the last slice is
    booked or booking gave up.
    """

    def __init__(
        self,
        slices: Sequence[Sequence[T]],
        book_slice: Callable[[Sequence[T]], None],
        give_up: Callable[[int], None],
        on_end: Callable[[], None],
    ) -> None:
        self._slices = deque(slices)
        self._book_slice = book_slice
        self._give_up = give_up
        self._on_end = on_end
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.error: Exception | None = None

    def start(self) -> None:
        """Book the first slice now and the others on the loop's next turns."""
        self._step()

    def finish(self) -> None:
        """Book every slice left now (the runtime is stopping, or the submitter was
        cancelled)."""
        while self._slices:
            self._book_next()
        self._end()

    async def wait(self) -> None:
        """Return once every slice is booked (or booking gave up). Cancelling the waiter
        does not stop the booking."""
        await asyncio.shield(self.done)

    def _step(self) -> None:
        if not self._slices:  # finish() got there first
            return
        self._book_next()
        if self._slices:
            self._loop.call_soon(self._step)
        else:
            self._end()

    def _book_next(self) -> None:
        part = self._slices.popleft()
        try:
            self._book_slice(part)
        except Exception as exc:
            # Runs as a loop callback: an error must end the booking, not vanish into the
            # loop's exception handler and leave the submitter waiting for ever.
            left = len(part) + sum(len(rest) for rest in self._slices)
            self._slices.clear()
            self.error = exc
            self._give_up(left)

    def _end(self) -> None:
        if not self.done.done():
            self._on_end()
            self.done.set_result(None)
