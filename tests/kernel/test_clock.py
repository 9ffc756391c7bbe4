"""F-25: timers and deadlines that stop counting while frozen."""

from __future__ import annotations

import asyncio

from miminions.kernel.clock import Deadline, Deadlines, FreezableTimer


class Recorder(Deadline):
    __slots__ = ("fired",)

    def __init__(self) -> None:
        super().__init__()
        self.fired = asyncio.Event()

    def on_expiry(self) -> None:
        self.fired.set()


async def test_timer_fires_after_delay() -> None:
    """A timer calls back once its delay has passed."""
    fired = asyncio.Event()
    FreezableTimer(asyncio.get_running_loop(), 0.01, fired.set)
    await asyncio.wait_for(fired.wait(), 5)


async def test_frozen_timer_keeps_its_remaining_time() -> None:
    """F-25: while frozen, a timer's remaining time does not shrink; thawing re-arms it."""
    fired = asyncio.Event()
    timer = FreezableTimer(asyncio.get_running_loop(), 0.05, fired.set)
    timer.freeze("queue")
    timer.freeze("agent")
    remaining = timer.remaining
    await asyncio.sleep(0.1)  # twice the delay: the time under test
    assert not fired.is_set()
    assert timer.remaining == remaining
    timer.thaw("queue")
    assert timer.frozen  # still held by "agent"
    timer.thaw("agent")
    await asyncio.wait_for(fired.wait(), 5)


async def test_cancelled_timer_never_fires() -> None:
    """A cancelled timer does not call back, even when thawed."""
    fired = asyncio.Event()
    timer = FreezableTimer(asyncio.get_running_loop(), 0.01, fired.set, frozen_by={"x"})
    timer.cancel()
    timer.thaw("x")
    await asyncio.sleep(0.05)
    assert not fired.is_set()


async def test_deadlines_expire_in_order_and_skip_cleared() -> None:
    """Many deadlines share one timer; cleared ones never expire."""
    deadlines = Deadlines(asyncio.get_running_loop())
    late, early, cleared = Recorder(), Recorder(), Recorder()
    deadlines.start(late, 0.05)
    deadlines.start(early, 0.01)
    deadlines.start(cleared, 0.005)
    deadlines.clear(cleared)
    await asyncio.wait_for(early.fired.wait(), 5)
    assert not late.fired.is_set()
    await asyncio.wait_for(late.fired.wait(), 5)
    assert not cleared.fired.is_set()
    deadlines.close()


async def test_frozen_deadline_waits_until_thawed() -> None:
    """F-25: a frozen deadline does not expire; after thawing it gets its remaining time."""
    deadlines = Deadlines(asyncio.get_running_loop())
    deadline = Recorder()
    deadlines.start(deadline, 0.03)
    deadlines.freeze(deadline, "paused")
    await asyncio.sleep(0.08)  # longer than the deadline: the time under test
    assert not deadline.fired.is_set()
    deadlines.thaw(deadline, "paused")
    await asyncio.wait_for(deadline.fired.wait(), 5)
    deadlines.close()


async def test_cleared_deadlines_do_not_pile_up() -> None:
    """Finished work is not kept alive in the heap until its original expiry."""
    deadlines = Deadlines(asyncio.get_running_loop())
    live = Recorder()
    deadlines.start(live, 3600)
    for _ in range(5000):
        done = Recorder()
        deadlines.start(done, 3600)
        deadlines.clear(done)
    assert len(deadlines) < 2100
    deadlines.clear(live)
    deadlines.close()
