"""``miminions.run`` where it cannot run, a database call in flight as the loop ends, and the
process-wide forkserver preload list."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import textwrap
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

import miminions
from miminions import AgentRuntime
from tests.support.agents import EchoAgent
from tests.support.runtime import ROOT
from tests.support.waiting import WAIT_SECONDS

WAIT = WAIT_SECONDS


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

    def next_call(fn: Any) -> bool:
        if block_next.is_set():
            block_next.clear()
            return True
        return False

    _hold_a_database_call(monkeypatch, next_call, in_thread, release)

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


def test_the_database_thread_ends_after_a_close_cut_off_by_the_loop_ending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime stop interrupted twice (Ctrl-C twice on a slow disk) while the connection's
    close runs in its thread: the loop closes. The close and the stop then finish in the
    thread, their answers go to a closed loop, and the thread ends (kept serving an empty
    queue, it leaked for good)."""
    in_close = threading.Event()
    release = threading.Event()
    _hold_a_database_call(
        monkeypatch, lambda fn: getattr(fn, "__name__", "") == "close", in_close, release
    )
    kept: dict[str, Any] = {}

    async def main() -> None:
        rt = AgentRuntime(str(tmp_path / "rt.db"))
        await rt.start()
        kept["conn"] = rt.store._conn  # type: ignore[attr-defined]
        stopping = asyncio.ensure_future(rt.stop())
        assert await asyncio.to_thread(in_close.wait, WAIT)
        stopping.cancel()  # first Ctrl-C
        for _ in range(5):
            await asyncio.sleep(0)
        stopping.cancel()  # second one
        with contextlib.suppress(BaseException):
            await stopping

    asyncio.run(main())
    release.set()  # the close finishes in the thread, after its loop closed
    conn: aiosqlite.Connection = kept["conn"]
    conn._thread.join(WAIT)
    outcome = {
        "connection closed": conn._connection is None,
        "thread still alive": conn._thread.is_alive(),
    }
    assert outcome == {"connection closed": True, "thread still alive": False}


SCRIPT = """
import multiprocessing.spawn as _spawn

# As on CPython >= 3.13.8 / 3.14 (gh-126631, gh-137996): the forkserver really preloads
# "__main__" when asked to (on older versions it looked for a key that was renamed in
# 3.4, so it silently never did).
_prepare = _spawn.get_preparation_data


def _preparation_data(name):
    data = _prepare(name)
    if "init_main_from_path" in data:
        data.setdefault("main_path", data["init_main_from_path"])
    return data


_spawn.get_preparation_data = _preparation_data

import asyncio
import os
from pathlib import Path

from miminions import AgentRuntime, RuntimeConfig
from tests.support.agents import EchoAgent  # the agent lives in an importable module

HERE = Path(__file__).resolve().parent
with open(HERE / "runs.txt", "a") as runs:  # every run of this file's top level
    runs.write(f"{{os.getpid()}} {{__name__}}\\n")


async def main():
    config = RuntimeConfig(storage_path=str(HERE / "app.db"), default_isolation="process")
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent("echo", EchoAgent)
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("t", {{"x": 1}}), 30)
        print("DONE", task.status.value, flush=True)

{run}
"""


async def _run_script(tmp_path: Path, guarded: bool) -> tuple[str, list[str]]:
    run = (
        'if __name__ == "__main__":\n    asyncio.run(main())' if guarded else "asyncio.run(main())"
    )
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(SCRIPT.format(run=run)))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(), WAIT)
    except TimeoutError:
        out = b"(timed out)"
    finally:
        # the forkserver and any worker: same session/group as the child
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        if child.returncode is None:
            await child.wait()
    runs_file = tmp_path / "runs.txt"
    runs = runs_file.read_text().splitlines() if runs_file.exists() else []
    return out.decode()[-3000:], runs


def test_the_forkserver_preload_list_never_names_the_main_script(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """process_pool.py: 'Not "__main__": a script without a main guard would run again
    there.' multiprocessing's own default list is ``['__main__']``: kept as the
    application's, it made the forkserver run the main script again (CPython 3.13.8+)."""
    from miminions.kernel.models import ProcessSettings
    from miminions.plugins import process_pool

    server: Any = multiprocessing.forkserver._forkserver
    monkeypatch.setattr(server, "_preload_modules", ["__main__"])  # CPython's default
    process_pool._multiprocessing_context(ProcessSettings(start_method="forkserver"), None)
    assert "__main__" not in server._preload_modules, server._preload_modules


@pytest.mark.parametrize("guarded", [True, False], ids=["with_main_guard", "without_main_guard"])
async def test_the_main_script_is_not_run_again_in_the_forkserver(
    tmp_path: Path, guarded: bool
) -> None:
    """The script's top level runs once, in the program, not again in the forkserver (as
    ``__mp_main__``; a newer CPython really preloads "__main__", which the script mimics)."""
    output, runs = await _run_script(tmp_path, guarded)
    assert "DONE completed" in output, output
    # Only the program itself ran the script's top level (not the forkserver, as __mp_main__).
    assert [line.split()[1] for line in runs] == ["__main__"], (runs, output)


def _hold_a_database_call(
    monkeypatch: pytest.MonkeyPatch,
    chosen: Callable[[Any], bool],
    entered: threading.Event,
    release: threading.Event,
) -> None:
    """Hold the first database call ``chosen(fn)`` picks in aiosqlite's thread (a slow
    disk, still working as the loop ends): ``entered`` is set there, and it goes on once
    ``release`` is set."""
    real_execute: Any = aiosqlite.Connection._execute

    async def gated(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not entered.is_set() and chosen(fn):

            def slow(*a: Any, **k: Any) -> Any:
                entered.set()
                release.wait(WAIT_SECONDS)
                return fn(*a, **k)

            return await real_execute(self, slow, *args, **kwargs)
        return await real_execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", gated)
