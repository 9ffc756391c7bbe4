"""``miminions.run`` where it cannot run, a database call in flight as the loop ends, and the
process-wide forkserver preload list."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.forkserver
import threading
import warnings
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import miminions
from miminions import AgentRuntime
from tests.support.agents import EchoAgent
from tests.support.waiting import WAIT_SECONDS


async def test_run_inside_a_running_loop_fails_like_asyncio_run_without_stray_warnings() -> None:
    """``miminions.run``, "like ``asyncio.run(main)``", called where a loop already runs
    (Jupyter, a library called from async code) refuses at once, as asyncio.run does. It
    built a loop, whose clean-up then failed inside the running one: the error said
    "Cannot run the event loop while another loop is running", and two coroutines were
    never awaited."""

    async def main() -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error: BaseException | None = None
        try:
            miminions.run(main())
        except BaseException as exc:
            error = exc
        message = f"{type(error).__name__}: {error}"
        del error
        gc.collect()
    never_awaited = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    # asyncio.run says: "asyncio.run() cannot be called from a running event loop"
    assert "cannot be called from a running event loop" in message, message
    assert never_awaited == [], never_awaited


def test_a_read_in_flight_when_the_loop_ends_does_not_kill_the_database_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs: a program whose loop ends without stopping its runtime "exits without
    warnings", and ``stop()`` afterwards releases the database ("the connection is closed
    in its own thread"). A database call in aiosqlite's thread as the loop closed answered
    the closed loop and killed the thread: "Event loop is closed" on stderr, and the
    connection was never closed."""
    thread_errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))

    block_next = threading.Event()
    in_thread = threading.Event()
    release = threading.Event()
    real_execute: Any = aiosqlite.Connection._execute

    async def gated(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if block_next.is_set() and not in_thread.is_set():
            block_next.clear()

            def slow(*a: Any, **k: Any) -> Any:
                in_thread.set()
                release.wait(WAIT_SECONDS)  # a slow disk: still working as the loop ends
                return fn(*a, **k)

            return await real_execute(self, slow, *args, **kwargs)
        return await real_execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", gated)

    kept: dict[str, Any] = {}

    async def main() -> None:
        rt = AgentRuntime(str(tmp_path / "rt.db"))
        await rt.start()
        kept["rt"] = rt
        kept["conn"] = rt.store._conn  # type: ignore[attr-defined]
        block_next.set()
        kept["query"] = asyncio.ensure_future(rt.query_events(agent_id="someone", limit=5))
        assert await asyncio.to_thread(in_thread.wait, WAIT_SECONDS)
        # main returns with the runtime running: asyncio.run cancels everything, closes

    asyncio.run(main())
    release.set()  # the call finishes in the database thread, after its loop closed
    asyncio.run(kept["rt"].stop())  # the documented way out: releases the database
    conn: aiosqlite.Connection = kept["conn"]
    conn._thread.join(WAIT_SECONDS)  # abandon asked it to close the connection and end

    outcome = {
        "thread errors": [repr(e) for e in thread_errors],
        "connection still open": conn._connection is not None,
    }
    assert outcome == {"thread errors": [], "connection still open": False}


async def test_starting_a_runtime_keeps_the_applications_forkserver_preload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting a runtime replaced multiprocessing's process-wide forkserver preload list
    with miminions' own modules: the application's own forkserver children (a
    ProcessPoolExecutor on the forkserver context, say) lost the modules it asked to
    preload. Its modules stay, miminions' are added."""
    server: Any = multiprocessing.forkserver._forkserver  # (its private list, put back after)
    monkeypatch.setattr(server, "_preload_modules", list(server._preload_modules))
    multiprocessing.set_forkserver_preload(["json", "decimal"])

    async with AgentRuntime(str(tmp_path / "rt.db")) as rt:
        agent_id = await rt.register_agent("a", EchoAgent, isolation="process")
        await rt.start_agent(agent_id)  # its worker pool sets the list

    assert server._preload_modules[:2] == ["json", "decimal"]
    assert "miminions.plugins.process_worker" in server._preload_modules


@pytest.mark.parametrize("config", [{"plugin_options": {"uvloop": {}}}, 42])
def test_run_refuses_a_config_that_is_not_a_runtime_config_clearly(config: object) -> None:
    """``miminions.run`` refuses anything but a RuntimeConfig as ``AgentRuntime`` does (the
    uvloop plugin failed with an AttributeError from deep inside, and with uvloop disabled
    a bad config was silently accepted)."""

    async def main() -> None:
        return None

    with pytest.raises(miminions.ConfigurationError, match="RuntimeConfig"):
        miminions.run(main(), config=config)  # type: ignore[arg-type]
