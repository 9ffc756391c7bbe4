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
        """Put the canary on the running loop (once; again after :meth:`close`)."""
        if self._canary is None:
            self._canary = asyncio.get_running_loop().create_task(
                asyncio.Event().wait(), name=self._name
            )

    @property
    def started(self) -> bool:
        """Whether the canary is out (between :meth:`start` and :meth:`close`)."""
        return self._canary is not None

    def ending(self) -> bool:
        """Whether the program is cancelling every task of the loop (the canary too)."""
        canary = self._canary
        return canary is not None and (canary.done() or canary.cancelling() > 0)

    async def close(self) -> None:
        """End the canary and wait for it."""
        canary, self._canary = self._canary, None
        if canary is not None and not canary.done():
            canary.cancel()
            await asyncio.wait([canary])


__all__ = ["LoopEndWatch"]
