"""``AgentRuntime.run_in_background``: work a plugin begins at the start that uses the
store, which the stop waits for before it closes the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from miminions import AgentRuntime, RuntimeConfig, hookimpl
from tests.support.waiting import WAIT_SECONDS, wait_until

MakeConfig = Callable[..., RuntimeConfig]


class Watchdog:
    """Background work that writes the store and then stops the runtime itself: directly,
    or under a time bound (asyncio.wait_for, which on Python 3.11 runs the stop in a task
    of its own)."""

    miminions_plugin_name = "watchdog"

    def __init__(self, *, via_wait_for: bool) -> None:
        self.via_wait_for = via_wait_for
        self.go = asyncio.Event()
        self.after_stop = False
        self.work: asyncio.Future[Any] | None = None

    @hookimpl
    def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
        self.work = runtime.run_in_background(self._watch(runtime))

    async def _watch(self, runtime: AgentRuntime) -> None:
        await self.go.wait()
        await runtime.store.put_meta("watchdog", {"fired": True})
        if self.via_wait_for:
            await asyncio.wait_for(runtime.stop(), timeout=60)
        else:
            await runtime.stop()
        self.after_stop = True


@pytest.mark.parametrize("via_wait_for", [False, True], ids=["direct", "wait_for"])
async def test_background_work_that_stops_the_runtime_is_not_waited_for_by_that_stop(
    make_config: MakeConfig, via_wait_for: bool
) -> None:
    """The stop does not wait for (then cancel) the very work it runs for, also when that
    work awaits it through a task of its own."""
    plugin = Watchdog(via_wait_for=via_wait_for)
    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=30.0), plugins=[plugin])
    await rt.start()
    try:
        assert plugin.work is not None
        plugin.go.set()
        await asyncio.wait_for(asyncio.shield(plugin.work), WAIT_SECONDS)
        assert plugin.after_stop
        assert not rt.is_running
    finally:
        await rt.stop()


class SlowWriter:
    """Background work that writes the store once the test allows it."""

    miminions_plugin_name = "slow_writer"

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.work: asyncio.Future[Any] | None = None

    @hookimpl
    def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
        self.work = runtime.run_in_background(self._write(runtime))

    async def _write(self, runtime: AgentRuntime) -> None:
        await self.go.wait()
        await runtime.store.put_meta("written", True)


def _awaiting(task: asyncio.Task[Any], name: str) -> bool:
    """Whether ``task`` is suspended (somewhere down its await chain) in ``name``."""
    coro: Any = task.get_coro()
    while coro is not None:
        code = getattr(coro, "cr_code", None)
        if code is not None and code.co_name == name:
            return True
        coro = getattr(coro, "cr_await", None)
    return False


async def test_a_stop_cancelled_while_it_waits_for_background_work_cancels_that_work(
    make_config: MakeConfig,
) -> None:
    """A stop cancelled while it waits for background work (wait_for around it, Ctrl-C)
    still closes the store, so it cancels that work first: nothing runs on against a
    closed store."""
    plugin = SlowWriter()
    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=30.0), plugins=[plugin])
    await rt.start()
    assert plugin.work is not None
    stopping = asyncio.ensure_future(rt.stop())
    await wait_until(lambda: _awaiting(stopping, "_settle_background"), "the stop to wait")
    stopping.cancel()
    await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    assert stopping.done()
    assert not rt.is_running
    assert plugin.work.cancelled()


class _SlowToLetGo:
    """Background work that, cancelled, cleans up until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()

    @hookimpl
    def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
        runtime.run_in_background(self._work())

    async def _work(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            await self.release.wait()
            raise


async def test_work_slow_to_end_once_cancelled_does_not_hold_the_stop_up(
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The stop waits for cancelled background work only a bounded time, then says it left
    it running (it waited for good)."""
    plugin = _SlowToLetGo()
    rt = AgentRuntime(config=make_config(), plugins=[plugin])
    await rt.start()
    try:
        await asyncio.wait_for(rt.stop(timeout_seconds=0.05), WAIT_SECONDS)
        assert plugin.cancelled.is_set()
        assert not rt.is_running
        assert any("did not end within" in r.getMessage() for r in caplog.records)
    finally:
        plugin.release.set()
