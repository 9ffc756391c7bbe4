"""LoopEndWatch: telling a program cancelling every task of its loop from one task cancelled."""

from __future__ import annotations

import asyncio

from miminions.kernel.loop_end import LoopEndWatch
from tests.support.cancelling import cancel_everything


def _canaries(name: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def test_only_a_cancel_of_every_task_counts_as_the_loop_ending() -> None:
    watch = LoopEndWatch("test-canary")
    assert not watch.ending()  # not started: it cannot tell
    watch.start()
    watch.start()  # once
    assert len(_canaries("test-canary")) == 1
    other = asyncio.ensure_future(asyncio.Event().wait())
    other.cancel()  # one task cancelled while the program goes on
    await asyncio.wait([other])
    assert not watch.ending()
    cancelled = cancel_everything()
    assert watch.ending()  # at once, before the cancels are delivered
    await asyncio.wait(cancelled)
    assert watch.ending()
    await watch.close()
    assert not watch.ending()
    assert not watch.started


async def test_close_leaves_no_task_behind_and_start_again_works() -> None:
    watch = LoopEndWatch("test-canary-2")
    watch.start()
    await watch.close()
    assert _canaries("test-canary-2") == []
    await watch.close()  # a second close does nothing
    watch.start()
    assert watch.started
    assert not watch.ending()
    await watch.close()
