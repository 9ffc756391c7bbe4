"""Telling that the program is cancelling every task of the event loop.

``asyncio.run`` cancels every task left when its main coroutine returns, and so do many
shutdown handlers. Code that reacts to a cancel (hand the next task out, restart a crashed
agent, start a commit) must not start new work then: nothing would wait for it, and the
loop closes under it ("Task was destroyed but it is pending!"). A cancel of one task looks
the same from inside as a cancel of all; a task that does nothing but wait (the canary)
tells them apart, since only a cancel of every task reaches it.
"""

from __future__ import annotations

import asyncio


class LoopEndWatch:
    """A canary task on the running loop: :meth:`ending` is true once it was cancelled.

    :meth:`start` it when the component starts, :meth:`close` it when it stops (a canary
    left pending would itself be a task destroyed with the loop).
    """

    __slots__ = ("_canary", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._canary: asyncio.Task[bool] | None = None

    def start(self) -> None:
        """Put the canary on the running loop (once; again after :meth:`close`, or on
        another loop than the one it was put on)."""
        loop = asyncio.get_running_loop()
        canary = self._canary
        if canary is not None and canary.get_loop() is not loop:
            self._drop(canary)
            canary = None
        if canary is None:
            canary = self._canary = loop.create_task(asyncio.Event().wait(), name=self._name)
            # Nothing hangs on it: a canary left on a loop that closed without cancelling it
            # (a component opened on one loop, closed on another) is no leak worth a warning.
            canary._log_destroy_pending = False  # type: ignore[attr-defined]

    @property
    def started(self) -> bool:
        """Whether the canary is out (between :meth:`start` and :meth:`close`)."""
        return self._canary is not None

    def ending(self) -> bool:
        """Whether the program is cancelling every task of the loop (the canary too)."""
        canary = self._canary
        return canary is not None and (canary.done() or canary.cancelling() > 0)

    async def close(self) -> None:
        """End the canary and wait for it (one on another loop is only cancelled: that
        loop may never run again)."""
        canary, self._canary = self._canary, None
        if canary is None or canary.done():
            return
        if canary.get_loop() is not asyncio.get_running_loop():
            self._drop(canary)
            return
        canary.cancel()
        await asyncio.wait([canary])

    @staticmethod
    def _drop(canary: asyncio.Task[bool]) -> None:
        """Cancel a canary of another loop, if that loop can still run it."""
        loop = canary.get_loop()
        if not loop.is_closed():
            loop.call_soon_threadsafe(canary.cancel)


__all__ = ["LoopEndWatch"]
