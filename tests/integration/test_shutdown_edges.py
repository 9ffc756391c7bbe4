"""Shutting a runtime down at its edges: a stop cut short (Ctrl-C twice, a wait_for around
stop) keeps a paused agent whose resume was queued paused with its state and leaves no
inline handler running; a graceful stop begins no task taken ahead of time (F-09, F-14)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from miminions import AgentRuntime, BaseAgent, ResourceLimits, Task
from tests.support.cut_short_resume_child import Keeper
from tests.support.prefetch_window import agent_holding_a_window
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until


class _Hog(BaseAgent):
    """Its task runs until the runtime interrupts it."""

    running: asyncio.Event

    async def execute_task(self, task: Task) -> dict[str, object]:
        type(self).running.set()
        await asyncio.Event().wait()
        return {}


async def test_a_stop_cut_short_keeps_a_paused_agent_whose_resume_was_queued_paused(
    make_config: Any,
) -> None:
    """operations.md (graceful shutdown, step 3): paused agents come back paused, "also an
    agent whose resume was still queued for a slot"; and a cancelled stop (Ctrl-C twice)
    "skips the waiting of steps 2 and 3, not the rest". A stop cut short instead records
    such an agent as *stopped* and drops the state its on_pause returned: the next runtime
    starts it from scratch, its on_resume never gets the state."""
    Keeper.resumed_with = []
    _Hog.running = asyncio.Event()
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    # Run 1: the keeper is paused with its state when the runtime stops.
    async with AgentRuntime(config=config) as rt:
        keeper = await start_agent(rt, "keeper", Keeper)
        await rt.pause_agent(keeper)
    # Run 2: the only slot is taken, so resuming the keeper queues; the stop is cut short.
    rt = AgentRuntime(config=config)
    await rt.start()
    await start_agent(rt, "hog", _Hog)
    hog_task = await rt.submit_task("hog")
    await asyncio.wait_for(_Hog.running.wait(), WAIT_SECONDS)
    assert await rt.register_agent("keeper", Keeper) == keeper
    assert rt.get_agent_status(keeper).status.value == "paused"
    queued = await rt.resume_agent(keeper)
    assert queued.status.value == "queued", queued
    stopping = asyncio.create_task(rt.stop(timeout_seconds=30))
    await wait_until(lambda: rt.get_task_status(hog_task).status.value == "running", "running")
    await asyncio.sleep(0)  # the stop reaches its wait for the running task
    stopping.cancel()  # what a second Ctrl-C does to asyncio.run's main task
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    assert not rt.is_running
    after = rt.get_agent_status(keeper)
    assert after.status.value == "paused", after  # as the graceful stop leaves it
    # Run 3: it comes back paused, and resuming hands on_resume the state on_pause made.
    async with AgentRuntime(config=config) as again:
        await again.register_agent("keeper", Keeper)
        assert again.get_agent_status(keeper).status.value == "paused"
        await again.resume_agent(keeper)
        assert Keeper.resumed_with == [{"pages": 7}]


async def test_a_graceful_stop_keeps_a_paused_agent_whose_resume_was_queued_paused(
    make_config: Any,
) -> None:
    """The same, with a stop that is not cut short: the control (it passes)."""
    Keeper.resumed_with = []
    _Hog.running = asyncio.Event()
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config) as rt:
        keeper = await start_agent(rt, "keeper", Keeper)
        await rt.pause_agent(keeper)
    async with AgentRuntime(config=config) as rt:
        await start_agent(rt, "hog", _Hog)
        await rt.submit_task("hog")
        await asyncio.wait_for(_Hog.running.wait(), WAIT_SECONDS)
        await rt.register_agent("keeper", Keeper)
        assert (await rt.resume_agent(keeper)).status.value == "queued"
        await rt.stop(timeout_seconds=0.2)
        assert rt.get_agent_status(keeper).status.value == "paused"
    async with AgentRuntime(config=config) as again:
        await again.register_agent("keeper", Keeper)
        await again.resume_agent(keeper)
        assert Keeper.resumed_with == [{"pages": 7}]


class _Counter(BaseAgent):
    """Checkpoints a count every few ms, forever; records where each attempt began."""

    began_at: list[Any] = []
    counted: asyncio.Event

    async def execute_task(self, task: Task) -> dict[str, object]:
        type(self).began_at.append(self.context.last_checkpoint)
        n = (self.context.last_checkpoint or {}).get("n", 0)
        while True:
            n += 1
            await self.context.checkpoint({"n": n})
            if n >= 3:
                type(self).counted.set()
            if (self.context.last_checkpoint or {}).get("n", 0) >= 10**9:
                return {"n": n}
            await asyncio.sleep(0.005)


async def _interrupted_then_resumed(make_config: Any, isolation: str, graceful: bool) -> None:
    _Counter.began_at = []
    _Counter.counted = asyncio.Event()
    config = make_config(default_isolation="inline")
    rt = AgentRuntime(config=config)
    await rt.start()
    await start_agent(rt, "counter", _Counter)
    task_id = await rt.submit_task("count", max_retries=0)
    await asyncio.wait_for(_Counter.counted.wait(), WAIT_SECONDS)
    await rt.stop(timeout_seconds=0.05, graceful=graceful)
    async with AgentRuntime(config=config) as again:
        stored = again.get_task_status(task_id)
        assert stored.status.value == "pending", stored
        assert stored.retry_count == 0, stored
        assert (stored.checkpoint or {}).get("n", 0) >= 3, stored
        await start_agent(again, "counter", _Counter)
        await wait_until(lambda: len(_Counter.began_at) == 2, "the second attempt")
        assert (_Counter.began_at[1] or {}).get("n", 0) >= 3, _Counter.began_at


async def test_a_graceful_stop_requeues_with_the_checkpoint(make_config: Any) -> None:
    await _interrupted_then_resumed(make_config, "inline", True)


async def test_a_forced_stop_requeues_with_the_checkpoint(make_config: Any) -> None:
    await _interrupted_then_resumed(make_config, "inline", False)


async def test_a_graceful_stop_begins_no_task_taken_ahead_of_time(
    make_config: Any, tmp_path: Any
) -> None:
    """operations.md (graceful shutdown, step 2): once stop() begins "no new task is handed
    out; running tasks get timeout_seconds to finish; the rest are interrupted and
    re-queued"; and (prefetch) tasks taken ahead of time "go back to the queue when the
    agent pauses or stops or the queue is paused". A process agent running ``b`` holds
    ``c`` in its prefetch window (running, not begun) when the stop begins. Once ``b``
    ends, its worker *begins* ``c`` during the shutdown (a task_started event after the
    stop, with context.is_stopping already true), and the stop waits for that new task
    too, instead of giving ``c`` back to the queue unbegun."""
    held = await agent_holding_a_window(make_config, tmp_path)
    rt, ids, config, log = held.rt, held.ids, held.config, held.log
    try:
        stopping = asyncio.create_task(rt.stop(timeout_seconds=WAIT_SECONDS))
        await wait_until(lambda: not rt.is_running, "the stop has begun")
        held.gates["b"].touch()  # b finishes within the stop's timeout, as it should
        held.gates["c"].touch()  # c would finish at once too, were it begun
        await asyncio.wait_for(stopping, WAIT_SECONDS * 2)
    finally:
        held.open_gates()
        await rt.stop(graceful=False)
    async with AgentRuntime(config=config) as again:
        assert again.get_task_status(ids["b"]).status.value == "completed"
        began = [line for line in log.read_text().splitlines() if line.startswith("start")]
        c = again.get_task_status(ids["c"])
        assert c.status.value == "pending", (c.status, began)  # given back, not run
        assert c.started_at is None
        assert [line.split()[1] for line in began] == ["a", "b"]


def test_ctrl_c_twice_keeps_a_paused_agent_whose_resume_was_queued_paused(tmp_path: Any) -> None:
    """The same as the first test, with real signals: a program under ``miminions.run``
    gets Ctrl-C (SIGINT) once — the graceful stop begins and waits for the running task —
    and again, which cuts that stop short. The agent whose resume was queued comes back
    *registered* (recorded stopped), its paused state gone, instead of paused."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from tests.support.runtime import ROOT

    db = str(tmp_path / "ctrl-c.db")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")

    def child(step: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.cut_short_resume_child", db, step],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Python leaves SIGINT ignored if its parent ignored it (a background job).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    first = child("first")
    assert first.stderr is not None
    assert first.wait(timeout=60) == 0, first.stderr.read()
    second = child("second")
    try:
        assert second.stdout is not None
        assert second.stderr is not None
        assert second.stdout.readline().strip() == "ready", second.stderr.read()
        second.send_signal(signal.SIGINT)  # Ctrl-C: the graceful stop begins
        assert second.stdout.readline().strip() == "stopping"
        second.send_signal(signal.SIGINT)  # Ctrl-C again: the stop is cut short
        assert second.wait(timeout=60) != 0  # KeyboardInterrupt, as asyncio.run
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    third = child("third")
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0, err
    assert json.loads(out.splitlines()[0]) == {"status": "paused", "resumed_with": [{"pages": 7}]}


class _SlowHandler(BaseAgent):
    """Its task runs until interrupted; its on_message handler waits until released."""

    handling: asyncio.Event
    release: asyncio.Event
    ended: list[str] = []

    async def execute_task(self, task: Task) -> dict[str, object]:
        await asyncio.Event().wait()
        return {}

    async def on_message(self, message: Any) -> None:
        type(self).handling.set()
        try:
            await type(self).release.wait()
        finally:
            type(self).ended.append("ended" if type(self).release.is_set() else "cancelled")


async def test_a_stop_cut_short_leaves_no_inline_message_handler_running(
    make_config: Any,
) -> None:
    """A graceful stop bounded by the caller (``asyncio.wait_for(rt.stop(), 0.2)``, or a
    second Ctrl-C) is cut short while it waits for the running task. The stop then
    interrupts that task (it is re-queued) — but an inline agent's on_message handler in
    progress is left running on the loop under the stopped runtime: nothing cancels it
    (with a stop that is not cut short, it is cancelled at the timeout and its message is
    given back to the mailbox). Agent code outlives its runtime."""
    _SlowHandler.handling = asyncio.Event()
    _SlowHandler.release = asyncio.Event()
    _SlowHandler.ended = []
    rt = AgentRuntime(config=make_config())
    await rt.start()
    try:
        agent = await start_agent(rt, "handler", _SlowHandler)
        task_id = await rt.submit_task("long")
        await wait_until(lambda: rt.get_task_status(task_id).status.value == "running", "runs")
        await rt.send_message(agent, "work", data=1)
        await asyncio.wait_for(_SlowHandler.handling.wait(), WAIT_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop(timeout_seconds=30), 0.2)
        assert not rt.is_running
        assert rt.get_task_status(task_id).status.value == "pending"  # the task was ended
        await wait_until(lambda: _SlowHandler.ended, "the handler to end after the stop")
        assert _SlowHandler.ended == ["cancelled"]

    finally:
        _SlowHandler.release.set()  # let a handler left running end before the loop does
        await wait_until(lambda: _SlowHandler.ended, "the handler to end once released")
