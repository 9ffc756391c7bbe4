"""The agent's own thread for synchronous code: one call at a time, a daemon thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from miminions.kernel.agent_thread import AgentThread

WAIT = 10.0


def test_calls_run_in_order_in_one_daemon_thread() -> None:
    """Calls run one after another, in submission order, in one named daemon thread."""
    thread = AgentThread("miminions-test")
    seen: list[tuple[int, str, bool]] = []

    def record(n: int) -> int:
        current = threading.current_thread()
        seen.append((n, current.name, current.daemon))
        return n * 2

    futures = [thread.submit(record, n) for n in range(5)]
    assert [f.result(WAIT) for f in futures] == [0, 2, 4, 6, 8]
    assert seen == [(n, "miminions-test", True) for n in range(5)]
    thread.shutdown()


def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    """A call's exception is set on its future; later calls still run."""
    thread = AgentThread("miminions-test")

    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        thread.submit(fail).result(WAIT)
    assert thread.submit(lambda: "after").result(WAIT) == "after"
    thread.shutdown()


def test_shutdown_cancels_calls_not_begun_and_refuses_new_ones() -> None:
    """shutdown(wait=False, cancel_futures=True) abandons the call in progress, drops the
    ones queued behind it and refuses new ones."""
    thread = AgentThread("miminions-test")
    release, running = threading.Event(), threading.Event()

    def block() -> str:
        running.set()
        release.wait(WAIT)
        return "done"

    first = thread.submit(block)
    assert running.wait(WAIT)
    queued = thread.submit(lambda: "never")
    thread.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="shut down"):
        thread.submit(lambda: None)
    release.set()
    assert first.result(WAIT) == "done"


async def test_the_event_loop_can_run_calls_in_it() -> None:
    """loop.run_in_executor accepts it (it is a concurrent.futures.Executor)."""
    thread = AgentThread("miminions-test")
    loop = asyncio.get_running_loop()
    name = await loop.run_in_executor(thread, lambda: threading.current_thread().name)
    assert name == "miminions-test"
    thread.shutdown()
