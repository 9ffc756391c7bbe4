"""Synchronous agent code using its context from its thread (``context.call_sync``, or a
call awaited with ``asyncio.run``): calls carried out on the agent's loop, safe points of
the task or handler, given up cleanly, and never taken for another task's.

Agents come from :mod:`tests.support.sync_agents` (importable by worker processes)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, AgentStatus, Task, TaskStatus, WaitTimeoutError
from miminions.kernel import agent as agent_module
from miminions.kernel import agent_thread as agent_thread_module
from miminions.kernel.errors import InvalidStateError, MiminionsError
from tests.support.runtime import ROOT, start_agent
from tests.support.sync_agents import (
    SyncHandlerAsyncioRun,
    SyncHandlerCallingContext,
    SyncHooksCallingContext,
    SyncStepper,
    SyncStepperAsyncOnPause,
    SysExitReporter,
    sync_checkpoint_after_gate,
    sync_receive_with_short_timeout,
    sync_watch_with_asyncio_run,
    sync_watch_with_call_sync,
)
from tests.support.waiting import WAIT_SECONDS, wait_until

WAIT = 15.0


async def test_a_call_given_up_by_call_sync_ends_and_takes_no_message(
    rt: AgentRuntime, isolation: str
) -> None:
    """call_sync(..., timeout_seconds) gives the call up when it raises TimeoutError: a
    receive given up on took the next message (lost) while running on."""
    agent_id = await rt.register_agent("sync", sync_receive_with_short_timeout, isolation=isolation)
    await rt.start_agent(agent_id)
    first = await rt.wait_for_task(await rt.submit_task("a", {"mode": "give_up"}), WAIT)
    assert first.output_data == {"gave_up": True}, first.error_message
    await rt.send_message(agent_id, "note", {"x": 1})
    second = await rt.wait_for_task(await rt.submit_task("b", {"mode": "take"}), WAIT)
    assert second.status is TaskStatus.COMPLETED, second.error_message
    assert second.output_data == {"data": {"x": 1}}


@pytest.mark.parametrize("agent", [sync_watch_with_asyncio_run, sync_watch_with_call_sync])
async def test_a_kv_watch_works_from_synchronous_code(
    rt: AgentRuntime, isolation: str, tmp_path: Path, agent: object
) -> None:
    """A watch stepped from the agent's thread (asyncio.run, or call_sync) gets its change;
    with asyncio.run its later steps went to the channel from the foreign loop and hung."""
    ready = tmp_path / "ready"
    agent_id = await rt.register_agent("sync", agent, isolation=isolation)
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("w", {"ready": str(ready)})
    await wait_until(ready.exists, "the watch to be set up")
    for _ in range(int(WAIT / 0.02)):  # a change every 20 ms until the task has one
        await rt.kv.set("w/a", 1)
        if rt.get_task_status(task_id).status is not TaskStatus.RUNNING:
            break
        await asyncio.sleep(0.02)
    task = await rt.wait_for_task(task_id, WAIT)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == {"key": "w/a", "value": 1}


@pytest.mark.parametrize("agent", [SyncHandlerCallingContext, SyncHandlerAsyncioRun])
async def test_a_pause_halts_a_synchronous_handler_at_its_context_call(
    rt: AgentRuntime, isolation: str, tmp_path: Path, agent: type
) -> None:
    """F-25: a sync on_message handler's context calls are safe points: the pause returns
    with the handler halted there (the pause waited for the handler, and the handler's
    call for the pause, until the pause's timeout)."""
    begun, gate = tmp_path / "begun", tmp_path / "gate"
    agent_id = await rt.register_agent("h", agent, isolation=isolation)
    await rt.start_agent(agent_id)
    [message_id] = await rt.send_message(agent_id, "m", {"begun": str(begun), "gate": str(gate)})
    await wait_until(begun.exists, "the handler to begin")
    try:
        paused = await rt.pause_agent(agent_id, timeout_seconds=WAIT)
        assert paused.status is AgentStatus.PAUSED
    finally:
        gate.touch()
    await rt.resume_agent(agent_id)
    await wait_until(lambda: rt.kv.get("handled") == message_id, "the handler to end")


async def test_a_timed_out_synchronous_task_saves_no_checkpoint_for_the_next_one(
    rt: AgentRuntime, tmp_path: Path
) -> None:
    """A sync task that timed out runs on in the agent's thread; its later checkpoint is
    refused (it was saved as the next task's, which then saw it as its last_checkpoint)."""
    begun, gate, report = tmp_path / "begun", tmp_path / "gate", tmp_path / "report"
    agent_id = await rt.register_agent("sync", sync_checkpoint_after_gate, isolation="inline")
    await rt.start_agent(agent_id)
    slow = await rt.submit_task(
        "slow",
        {"mode": "slow", "begun": str(begun), "gate": str(gate), "report": str(report)},
        timeout_seconds=0.5,
    )
    await wait_until(begun.exists, "the slow task to begin")
    assert (await rt.wait_for_task(slow, WAIT)).status is TaskStatus.FAILED  # timed out
    quick = await rt.submit_task("quick", {"mode": "quick"})
    await wait_until(lambda: rt.get_task_status(quick).status is TaskStatus.RUNNING, "quick")
    gate.touch()
    await wait_until(report.exists, "the abandoned code's checkpoint")
    assert "has ended" in report.read_text()
    done = await rt.wait_for_task(quick, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert done.checkpoint is None
    assert done.output_data == {"me": quick, "last_checkpoint": None}


async def test_every_synchronous_hook_uses_call_sync(rt: AgentRuntime, isolation: str) -> None:
    """call_sync from sync on_start, on_pause, on_resume, on_error and on_stop."""
    agent_id = await rt.register_agent("h", SyncHooksCallingContext, isolation=isolation)
    await rt.start_agent(agent_id)
    ok = await rt.wait_for_task(await rt.submit_task("ok"), WAIT)
    assert ok.status is TaskStatus.COMPLETED, ok.error_message
    bad = await rt.wait_for_task(await rt.submit_task("bad", {"fail": True}), WAIT)
    assert bad.status is TaskStatus.FAILED
    await wait_until(lambda: rt.kv.get("hook:on_error") is True, "on_error")
    assert (await rt.pause_agent(agent_id, timeout_seconds=WAIT)).status is AgentStatus.PAUSED
    assert (await rt.resume_agent(agent_id)).status is AgentStatus.RUNNING
    assert (await rt.stop_agent(agent_id, timeout_seconds=WAIT)).status is AgentStatus.STOPPED
    for hook in ("on_start", "on_pause", "on_resume", "on_error", "on_stop"):
        assert rt.kv.get(f"hook:{hook}") is True, hook


# An on_message handler's background work, an agent started from another agent's task, a
# message handed over as call_sync gives up (inline agents: the test coordinates with them).
class BackgroundFromHandler:
    """on_message 'spawn' starts a background coroutine (it inherits the handler's
    context); on_message 'work' waits for ``release`` without any context call."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.release = asyncio.Event()
        self.working = asyncio.Event()
        self.bg_done = asyncio.Event()
        self.handled: list[str] = []
        self.bg: asyncio.Task[None] | None = None

    async def on_message(self, message: Any) -> None:
        if message.message_type == "spawn":
            self.bg = asyncio.ensure_future(self._background())
            return
        self.working.set()
        await self.release.wait()  # no safe point: the pause must wait for the end
        self.handled.append(message.message_type)

    async def _background(self) -> None:
        await self.go.wait()
        await self.context.kv.set("bg", 1)  # type: ignore[attr-defined]  # a safe point
        self.bg_done.set()

    async def execute_task(self, task: Task) -> None:
        return None


async def test_pause_after_a_handler_started_background_work_does_not_hang(
    rt: AgentRuntime,
) -> None:
    """F-25: a coroutine an on_message handler started, reaching a safe point while a later
    handler runs, is not taken for that handler (the pause returned with the handler still
    running, and every later pause of the idle agent hung)."""
    agent = BackgroundFromHandler()
    agent_id = await rt.register_agent("bg", agent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.send_message(agent_id, "spawn")
    await wait_until(lambda: agent.bg is not None, "the background coroutine")
    await rt.send_message(agent_id, "work")
    await asyncio.wait_for(agent.working.wait(), WAIT)

    runner = agent.context._channel  # type: ignore[attr-defined]  # the agent's AgentRunner
    pausing = asyncio.ensure_future(rt.pause_agent(agent_id, timeout_seconds=WAIT))
    await wait_until(lambda: not runner._gate.is_set(), "the pause to close the gate")
    agent.go.set()  # the background coroutine reaches a safe point, gate closed
    await asyncio.sleep(0.1)  # the background coroutine waits at the gate meanwhile
    assert not pausing.done()  # the 'work' handler has reached no safe point
    agent.release.set()
    assert (await pausing).status is AgentStatus.PAUSED
    await wait_until(lambda: agent.handled == ["work"], "the handler to end")
    await rt.resume_agent(agent_id)
    await asyncio.wait_for(agent.bg_done.wait(), WAIT)

    # Nothing of the agent runs now: a pause must complete at once.
    again = await rt.pause_agent(agent_id, timeout_seconds=5)
    assert again.status is AgentStatus.PAUSED


class CheckpointingHandler:
    """on_message makes a plain safe point, ``await context.checkpoint()``."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def on_message(self, message: Any) -> None:
        try:
            await self.context.checkpoint()  # type: ignore[attr-defined]
        except Exception as exc:
            self.outcomes.append(f"{type(exc).__name__}: {exc}")
        else:
            self.outcomes.append("ok")

    async def execute_task(self, task: Task) -> None:
        return None


async def test_an_agent_started_by_another_agents_task_may_checkpoint_in_on_message(
    rt: AgentRuntime,
) -> None:
    """An agent started from another agent's task checkpoints in its on_message (it
    inherited the starter's running task and every checkpoint was refused, "has ended")."""
    worker = CheckpointingHandler()
    worker_id = await rt.register_agent("worker", worker, isolation="inline")

    async def orchestrator(task: Task, context: Any) -> dict[str, Any]:
        await rt.start_agent(worker_id)
        return {"started": True}

    boss_id = await rt.register_agent("boss", orchestrator, isolation="inline")
    await rt.start_agent(boss_id)
    task = await rt.wait_for_task(await rt.submit_task("start it", agent_id=boss_id), WAIT)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    await rt.send_message(worker_id, "hello")
    await wait_until(lambda: bool(worker.outcomes), "the handler to run")
    assert worker.outcomes == ["ok"]


_WAITING = threading.Event()
_GAVE_UP = threading.Event()


def sync_receiver(task: Task, context: Any) -> dict[str, Any]:
    if task.input_data["mode"] == "give_up":
        _WAITING.set()
        try:
            message = context.call_sync(context.receive(), timeout_seconds=1.0)
        except TimeoutError:
            _GAVE_UP.set()
            return {"gave_up": True}
        return {"data": message.data}
    message = context.call_sync(context.receive(timeout_seconds=3))
    return {"data": message.data}


async def test_a_message_handed_over_as_call_sync_gives_up_is_not_lost(
    rt: AgentRuntime,
) -> None:
    """A receive handed its message just as call_sync gives up on it (the loop busy then)
    does not lose it: it goes back to the mailbox for the next receive (it was dropped)."""
    _WAITING.clear()
    _GAVE_UP.clear()
    agent_id = await rt.register_agent("sync", sync_receiver, isolation="inline")
    await rt.start_agent(agent_id)
    first_id = await rt.submit_task("a", {"mode": "give_up"}, agent_id=agent_id)
    # the agent's mailbox (internal to the memory bus)
    box = rt.messenger.bus._box(agent_id)  # type: ignore[attr-defined]
    await wait_until(lambda: _WAITING.is_set() and bool(box.waiters), "the receive to wait")
    await rt.send_message(agent_id, "note", {"x": 1})  # handed straight to the receive
    # The loop is busy (another callback, a GC pause, a slow plugin) exactly as the
    # agent's thread gives up: stand for that by blocking it until the thread has.
    assert _GAVE_UP.wait(WAIT)
    first = await rt.wait_for_task(first_id, WAIT)
    assert first.output_data == {"gave_up": True}
    second = await rt.wait_for_task(
        await rt.submit_task("b", {"mode": "take"}, agent_id=agent_id), WAIT
    )
    assert second.status is TaskStatus.COMPLETED, second.error_message
    assert second.output_data == {"data": {"x": 1}}


def sync_receive_unbounded_timeout(task: Task, context: Any) -> dict[str, Any]:
    """'bad': call_sync(receive(), timeout_seconds=math.inf) (no limit, spelled as a number);
    'take': a plain receive that should get the next message."""
    if task.input_data["mode"] == "bad":
        try:
            message = context.call_sync(context.receive(), timeout_seconds=math.inf)
        except Exception as exc:
            return {"error": type(exc).__name__}
        return {"data": message.data}
    message = context.call_sync(context.receive(timeout_seconds=3))
    return {"data": message.data}


async def test_call_sync_refuses_a_bad_timeout_with_validation_error(
    rt: AgentRuntime, isolation: str
) -> None:
    """call_sync checks its timeout_seconds like every other (math.inf raised OverflowError
    from the thread library, a string TypeError)."""
    agent_id = await rt.register_agent("sync", sync_receive_unbounded_timeout, isolation=isolation)
    await rt.start_agent(agent_id)
    first = await rt.wait_for_task(await rt.submit_task("a", {"mode": "bad"}), WAIT)
    assert first.status is TaskStatus.COMPLETED, first.error_message
    assert first.output_data == {"error": "ValidationError"}


async def test_a_call_sync_that_raised_on_its_timeout_takes_no_message(
    rt: AgentRuntime, isolation: str
) -> None:
    """A call_sync that raised (here on its timeout argument) leaves no receive running on
    the agent's loop: the next message reaches the next receive (it was taken and lost)."""
    agent_id = await rt.register_agent("sync", sync_receive_unbounded_timeout, isolation=isolation)
    await rt.start_agent(agent_id)
    first = await rt.wait_for_task(await rt.submit_task("a", {"mode": "bad"}), WAIT)
    assert first.status is TaskStatus.COMPLETED, first.error_message
    assert first.output_data != {"data": {"x": 1}}  # it raised (no message yet)
    left = len(rt.messenger.bus._box(agent_id).waiters) if isolation == "inline" else "?"  # type: ignore[attr-defined]
    await rt.send_message(agent_id, "note", {"x": 1})
    second = await rt.wait_for_task(
        await rt.submit_task("b", {"mode": "take"}, agent_id=agent_id), WAIT
    )
    assert second.status is TaskStatus.COMPLETED, (
        f"{second.error_message} (receives left waiting after the first task: {left})"
    )
    assert second.output_data == {"data": {"x": 1}}


def sync_open_and_leave(task: Task, context: Any) -> dict[str, Any]:
    context.call_sync(context.kv.open_watch("jobs/"))  # left open: closed as the task ends
    return {"opened": True}


def sync_open_and_raise(task: Task, context: Any) -> None:
    watch = context.call_sync(context.kv.open_watch("jobs/"))
    raise RuntimeError(f"failed holding {watch!r}")


async def _dropped_watch_closes(rt: AgentRuntime, agent: object, ends: TaskStatus) -> None:
    a = await rt.register_agent("a", agent, isolation="inline")
    await rt.start_agent(a)
    gc.collect()
    gc.disable()  # only reference counting frees the watch, as in a long idle stretch
    try:
        done = await rt.wait_for_task(await rt.submit_task("t", {}, agent_id=a), 10)
        assert done.status is ends
        await wait_until(lambda: rt.kv.watchers == 0, "the dropped watch to close")
    finally:
        gc.enable()


async def test_a_watch_a_sync_agent_left_open_closes_as_its_task_ends(
    miminions_runtime: AgentRuntime,
) -> None:
    """docs: a watch "closes when closed, when dropped (the task holding it ended) or when
    the agent stops": also one a sync agent's ``call_sync`` opened (the call's task held
    it, through a reference cycle, until the cyclic collector ran)."""
    await _dropped_watch_closes(miminions_runtime, sync_open_and_leave, TaskStatus.COMPLETED)


async def test_a_watch_held_by_a_failed_sync_agent_closes_as_its_task_ends(
    miminions_runtime: AgentRuntime,
) -> None:
    """Also for a synchronous agent whose task raised holding the watch."""
    await _dropped_watch_closes(miminions_runtime, sync_open_and_raise, TaskStatus.FAILED)


async def _running_task(
    rt: AgentRuntime, agent: type, isolation: str, tmp: Path
) -> tuple[str, str, Path]:
    begun, gate = tmp / "begun", tmp / "gate"
    agent_id = await rt.register_agent("stepper", agent, isolation=isolation)
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t", {"begun": str(begun), "gate": str(gate)})
    await wait_until(begun.exists, "the task to begin")
    return agent_id, task_id, gate


async def test_a_sync_agent_halted_at_call_sync_pauses_with_its_sync_on_pause(
    rt: AgentRuntime, isolation: str, tmp_path: Path
) -> None:
    """A sync task halted at a ``call_sync`` safe point holds the agent's thread: its sync
    ``on_pause`` queued behind it, waiting for a resume that could not come (the pause
    timed out; a breaker's pause, without a timeout, waited for good)."""
    agent_id, task_id, gate = await _running_task(rt, SyncStepper, isolation, tmp_path)
    try:
        paused = await rt.pause_agent(agent_id, timeout_seconds=10)
        assert paused.status is AgentStatus.PAUSED
        await asyncio.wait_for(rt.resume_agent(agent_id), WAIT)
    finally:
        gate.touch()
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message


async def test_a_sync_agent_halted_at_call_sync_resumes_with_its_sync_on_resume(
    rt: AgentRuntime, isolation: str, tmp_path: Path
) -> None:
    """Likewise its sync ``on_resume`` queued behind the halted task, which waited for the
    gate ``on_resume`` opens: ``resume_agent`` never returned."""
    agent_id, task_id, gate = await _running_task(rt, SyncStepperAsyncOnPause, isolation, tmp_path)
    paused = await rt.pause_agent(agent_id, timeout_seconds=10)
    assert paused.status is AgentStatus.PAUSED  # the task halted at its call_sync
    try:
        resumed = await asyncio.wait_for(rt.resume_agent(agent_id), 10)
        assert resumed.status is AgentStatus.RUNNING
    finally:
        gate.touch()
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message


async def _run_child_of(kind: str, where: str) -> tuple[int | None, str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.sys_exit_child",
        kind,
        where,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), WAIT)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise
    return child.returncode, out.decode() + "\n--- stderr ---\n" + err.decode()[-3000:]


async def _run_child(where: str) -> tuple[int | None, str]:
    return await _run_child_of("sync", where)


async def test_sys_exit_in_a_sync_inline_task_fails_the_task_not_the_program() -> None:
    """``sys.exit()`` in an inline agent's sync code (argparse on bad input, a CLI wrapper)
    fails the task, "SystemExit: 2" as for a process agent; it ended the program, every
    other agent with it. (In a child program: here it would end the test session.)"""
    returncode, output = await _run_child("task")
    assert "PROGRAM ENDED BY" not in output, output
    assert "FIRST failed SystemExit: 2" in output, output
    assert "SECOND completed" in output, output
    assert "RUNTIME STOPPED CLEANLY" in output, output
    assert returncode == 0, output


async def test_sys_exit_in_a_sync_inline_on_message_is_logged_not_the_end_of_the_program() -> None:
    """Likewise from a sync ``on_message``: logged, and the agent goes on."""
    returncode, output = await _run_child("handler")
    assert "PROGRAM ENDED BY" not in output, output
    assert "SECOND completed" in output, output
    assert "RUNTIME STOPPED CLEANLY" in output, output
    assert returncode == 0, output


async def test_rt_kv_set_from_a_sync_agents_thread_is_refused_like_send_message(
    rt: AgentRuntime,
) -> None:
    """docs/quickstart.md: the runtime's async methods called from another loop or thread
    raise InvalidStateError before changing anything; ``rt.kv``'s writes too (a sync
    agent's ``asyncio.run(rt.kv.set(...))`` changed the value from the foreign thread)."""
    seen: dict[str, str] = {}

    def agent(task: Task, context: Any) -> Any:
        for name, call in (
            ("send_message", lambda: rt.send_message(context.agent_id, "x")),
            ("kv.set", lambda: rt.kv.set("k", 1)),
        ):
            try:
                asyncio.run(asyncio.wait_for(call(), 5))
            except BaseException as exc:
                seen[name] = type(exc).__name__
            else:
                seen[name] = "accepted"
        return {}

    agent_id = await rt.register_agent("s", agent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.wait_for_task(await rt.submit_task("t"), WAIT)
    assert seen["send_message"] == InvalidStateError.__name__  # as documented
    assert seen["kv.set"] == InvalidStateError.__name__, (seen, rt.kv.get("k"))
    assert rt.kv.get("k") is None


async def test_rt_kv_set_from_a_sync_agents_thread_during_a_commit_is_not_half_done(
    rt: AgentRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a commit, such a write was applied and then failed with asyncio's "attached
    to a different loop": half done, with an error saying nothing useful."""
    store: Any = rt.store
    real_write = store._write
    hold, holding = asyncio.Event(), asyncio.Event()

    async def held_write(*args: Any) -> Any:  # a commit in progress (a slow fsync)
        holding.set()
        await hold.wait()
        return await real_write(*args)

    go, finished = threading.Event(), threading.Event()
    outcome: list[str] = []

    def agent(task: Task, context: Any) -> Any:
        go.wait(WAIT)
        try:
            outcome.append(repr(asyncio.run(asyncio.wait_for(rt.kv.set("k", 1), 5))))
        except BaseException as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")
        finished.set()
        return {}

    agent_id = await rt.register_agent("s", agent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.submit_task("t")
    monkeypatch.setattr(store, "_write", held_write)
    first = asyncio.ensure_future(rt.kv.set("a", 1))  # its commit is held
    await asyncio.wait_for(holding.wait(), WAIT)
    second = asyncio.ensure_future(rt.kv.set("b", 1))  # collected for the next commit
    await asyncio.sleep(0)
    go.set()
    try:
        assert await asyncio.to_thread(finished.wait, WAIT)
    finally:
        hold.set()
        await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert outcome, "the agent's write never ended"
    assert outcome[0].startswith("InvalidStateError"), (outcome, rt.kv.get("k"))
    assert rt.kv.get("k") is None


async def test_sys_exit_in_an_async_inline_task_fails_the_task_not_the_program() -> None:
    """``sys.exit()`` in an inline agent's *async* code fails the task too (it ended the
    program)."""
    _, output = await _run_child_of("async", "task")
    assert "PROGRAM ENDED BY" not in output, output
    assert "FIRST failed SystemExit: 2" in output, output
    assert "SECOND completed" in output, output
    assert "RUNTIME STOPPED CLEANLY" in output, output


async def test_sys_exit_in_an_async_inline_on_message_does_not_end_the_program() -> None:
    """Likewise from an async ``on_message``: logged, the agent goes on."""
    _, output = await _run_child_of("async", "handler")
    assert "PROGRAM ENDED BY" not in output, output
    assert "SECOND completed" in output, output
    assert "RUNTIME STOPPED CLEANLY" in output, output


async def test_sys_exit_in_the_constructor_of_an_async_inline_agent_fails_its_start() -> None:
    """And from the constructor of an agent whose execute_task is async (built on the
    loop): its start fails with the reason."""
    _, output = await _run_child_of("async", "constructor")
    assert "PROGRAM ENDED BY" not in output, output
    assert "START failed failed to start: SystemExit: 2" in output, output
    assert "RUNTIME STOPPED CLEANLY" in output, output


async def test_on_error_of_an_agent_calling_sys_exit_gets_an_agent_exit_error(
    rt: AgentRuntime, isolation: str, tmp_path: Path
) -> None:
    """Its ``on_error`` gets an AgentExitError in both modes (a process agent's got a
    RemoteAgentError)."""
    out = tmp_path / "seen"
    agent_id = await rt.register_agent("exiting", SysExitReporter, isolation=isolation)
    await rt.start_agent(agent_id)
    task = await rt.wait_for_task(await rt.submit_task("t", {"out": str(out)}, max_retries=0), 30)
    assert task.status is TaskStatus.FAILED
    assert task.error_message == "SystemExit: 2"
    # on_error runs before the agent takes its next task: wait for it with one.
    await rt.wait_for_task(await rt.submit_task("t2", {"out": str(tmp_path / "x")}), 30)
    assert out.read_text() == "AgentExitError True"


class _Shared:
    def __init__(self) -> None:
        self.begun = threading.Event()
        self.finish = threading.Event()
        self.release_on_pause = threading.Event()
        self.on_pause_entered = threading.Event()
        self.on_pause_active = False
        self.task_code_active = False
        self.overlap = threading.Event()
        self.overlaps: list[str] = []


class SlowSyncPauseStepper:
    """Sync task with call_sync safe points; a sync on_pause that takes its time."""

    def __init__(self, shared: _Shared) -> None:
        self.s = shared

    def on_pause(self) -> dict[str, Any]:
        s = self.s
        s.on_pause_active = True
        s.on_pause_entered.set()
        try:
            if s.task_code_active:
                s.overlaps.append("on_pause began while the task's code was running")
                s.overlap.set()
            s.release_on_pause.wait(WAIT)
        finally:
            s.on_pause_active = False
        return {"paused": True}

    def on_resume(self, state: Any) -> None:
        pass

    def execute_task(self, task: Task) -> Any:
        s = self.s
        context = self.context  # type: ignore[attr-defined]
        s.begun.set()
        steps = 0
        while not s.finish.is_set():
            context.call_sync(context.checkpoint())  # a safe point
            if s.on_pause_active:
                s.overlaps.append("the task's code ran while on_pause was running")
                s.overlap.set()
            steps += 1
            time.sleep(0.01)
        return {"steps": steps}


async def test_a_timed_out_pause_does_not_let_the_task_run_beside_its_sync_on_pause(
    rt: AgentRuntime,
) -> None:
    """A pause of a sync task halted at ``call_sync`` whose sync ``on_pause`` is slow: the
    pause times out and is abandoned (the gate reopens), and the task goes on only once
    ``on_pause`` returned (run in a second thread, it ran beside the task's code)."""
    shared = _Shared()
    agent_id = await rt.register_agent(
        "slowpause", SlowSyncPauseStepper(shared), isolation="inline"
    )
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t", max_retries=0)
    assert await asyncio.to_thread(shared.begun.wait, WAIT)
    try:
        # (documented: the pause is abandoned and the agent keeps running)
        with contextlib.suppress(WaitTimeoutError):
            await rt.pause_agent(agent_id, timeout_seconds=1.0)
        # If the task's code now runs while on_pause still runs, it says so at its next step.
        await asyncio.to_thread(shared.overlap.wait, 5.0)
    finally:
        shared.release_on_pause.set()
        shared.finish.set()
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert shared.overlaps == [], shared.overlaps


class AbandonedSyncTask:
    """A sync task that never reaches a safe point (it times out and is abandoned, its
    thread runs on); a sync on_pause that notes whether that code still runs."""

    def __init__(self, shared: _Shared) -> None:
        self.s = shared

    def on_pause(self) -> dict[str, Any]:
        s = self.s
        s.on_pause_entered.set()
        if s.task_code_active:
            s.overlaps.append("on_pause ran while the abandoned task's code was still running")
        return {}

    def on_resume(self, state: Any) -> None:
        pass

    def execute_task(self, task: Task) -> Any:
        s = self.s
        s.task_code_active = True
        s.begun.set()
        try:
            s.finish.wait(WAIT)  # blocking library call: cannot be interrupted
        finally:
            s.task_code_active = False
        return {}


async def test_a_sync_on_pause_waits_for_an_abandoned_sync_call(
    rt: AgentRuntime,
) -> None:
    """docs/concepts.md: a timed-out sync task's thread runs to its end "and the agent's
    next synchronous call waits for it": a sync ``on_pause`` too (it ran at once in a
    second thread, beside the abandoned task's code)."""
    shared = _Shared()
    agent_id = await rt.register_agent("abandon", AbandonedSyncTask(shared), isolation="inline")
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t", max_retries=0, timeout_seconds=0.5)
    assert await asyncio.to_thread(shared.begun.wait, WAIT)
    timed_out = await rt.wait_for_task(task_id, WAIT)
    assert timed_out.status is TaskStatus.FAILED  # abandoned; its code still runs
    assert shared.task_code_active
    try:
        try:
            paused = await rt.pause_agent(agent_id, timeout_seconds=2.0)
            assert paused.status is AgentStatus.PAUSED
        except WaitTimeoutError:
            pass  # on_pause waited for the abandoned call, as documented
    finally:
        shared.finish.set()
    assert shared.overlaps == [], shared.overlaps


STEP_DONE = threading.Event()  # one long step of synchronous work ends when set
IN_A_STEP = threading.Event()
FINISH_STEPS = threading.Event()  # the test's own safety stop for the old code
SEEN_STOPPING: list[bool] = []
CHUNKED_CALLS: list[str] = []


def chunked_worker(task: Any, context: Any) -> dict[str, Any]:
    """Long synchronous work in steps, checking ``context.is_stopping`` between steps as
    the docs advise. Its second call (the re-queued task run again) returns at once."""
    CHUNKED_CALLS.append(task.task_id)
    if len(CHUNKED_CALLS) > 1:
        return {"rerun": True}
    steps = 0
    while True:
        IN_A_STEP.set()
        STEP_DONE.wait(10)  # a step of work longer than the stop's timeout
        stopping = context.is_stopping
        SEEN_STOPPING.append(stopping)
        if stopping or FINISH_STEPS.is_set():
            return {"steps": steps}
        steps += 1
        time.sleep(0.01)


async def test_abandoned_sync_code_still_sees_is_stopping_after_the_agent_restarts(
    rt: AgentRuntime,
) -> None:
    """docs/concepts.md ("Timeouts"): sync code given up on checks ``context.is_stopping``
    to end. Once its agent was started again, that read False again for the old code: it
    ran on for good, and the re-queued task, handed to the restarted agent, never ran."""
    try:
        agent = await start_agent(rt, "chunked", chunked_worker)
        task_id = await rt.submit_task("long")
        assert await asyncio.to_thread(IN_A_STEP.wait, WAIT_SECONDS)
        # The stop gives up on the step in progress: the task goes back to the queue and
        # the thread runs on (documented).
        await rt.stop_agent(agent, timeout_seconds=0.1)
        assert rt.get_task_status(task_id).status is TaskStatus.PENDING
        await rt.start_agent(agent)  # e.g. an operator restarting the agent
        STEP_DONE.set()  # the old step ends: the old code now checks is_stopping
        await wait_until(lambda: SEEN_STOPPING, "the stopped run's code checks is_stopping")
        # It was asked to stop (its agent was stopped under it): it must see that.
        assert SEEN_STOPPING[0] is True, (
            "the stopped run's code sees is_stopping False once its agent was started "
            f"again, and runs on ({SEEN_STOPPING[:3]})"
        )
        done = await rt.wait_for_task(task_id, WAIT_SECONDS)
        assert done.status is TaskStatus.COMPLETED
    finally:
        FINISH_STEPS.set()


class HandlerAndFailingTask:
    """A sync ``on_message`` handler that waits in ``call_sync`` (not halted: no pause);
    an async task that fails; a sync ``on_error`` that notes whether the handler's code is
    in the middle of its call."""

    def __init__(self) -> None:
        self.handler_in_progress = False
        self.handler_waiting = threading.Event()
        self.on_error_seen: list[bool] = []
        self.on_error_ran = threading.Event()
        self.release: asyncio.Event | None = None  # set by the test, on the loop
        self.handler_done = threading.Event()

    def on_message(self, message: Any) -> None:
        context = self.context  # type: ignore[attr-defined]
        self.handler_in_progress = True
        try:
            self.handler_waiting.set()
            assert self.release is not None
            context.call_sync(self.release.wait(), timeout_seconds=WAIT)
        finally:
            self.handler_in_progress = False
            self.handler_done.set()

    def on_error(self, error: BaseException, task: Any) -> None:
        self.on_error_seen.append(self.handler_in_progress)
        self.on_error_ran.set()

    async def execute_task(self, task: Task) -> Any:
        raise RuntimeError("boom")


async def test_sync_on_error_does_not_run_in_the_middle_of_a_sync_on_message_handler(
    rt: AgentRuntime,
) -> None:
    """docs/concepts.md: synchronous methods run in the agent's own thread, "one call at a
    time"; only a halted task's wait runs on_pause/on_resume. A sync ``on_error`` ran
    *inside* a sync ``on_message`` handler's ``call_sync`` wait, mid-call."""
    agent = HandlerAndFailingTask()
    agent.release = asyncio.Event()
    agent_id = await rt.register_agent("handler", agent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.send_message(agent_id, "hello")
    assert await asyncio.to_thread(agent.handler_waiting.wait, WAIT)
    task_id = await rt.submit_task("t", max_retries=0)
    failed = await rt.wait_for_task(task_id, WAIT)
    assert failed.status is TaskStatus.FAILED
    # on_error ran inside the handler's wait, at once; now after the handler. (Not waited
    # for longer than on_error's own bound, shutdown_timeout_seconds: 2 s in tests.)
    await asyncio.to_thread(agent.on_error_ran.wait, 0.5)
    agent.release.set()
    assert await asyncio.to_thread(agent.handler_done.wait, WAIT)
    assert await asyncio.to_thread(agent.on_error_ran.wait, WAIT)
    assert agent.on_error_seen == [False], (
        "on_error ran while the on_message handler's code was in the middle of its call"
    )


class HaltsAtFirstCallSync:
    """A sync task that runs plain code until told to go, then makes one ``call_sync``
    safe point, and a sync ``on_pause``."""

    def __init__(self) -> None:
        self.begun = threading.Event()
        self.go = threading.Event()
        self.on_pause_ran = threading.Event()

    def on_pause(self) -> dict[str, Any]:
        self.on_pause_ran.set()
        return {}

    def on_resume(self, state: Any) -> None:
        pass

    def execute_task(self, task: Task) -> Any:
        context = self.context  # type: ignore[attr-defined]
        self.begun.set()
        self.go.wait(WAIT)
        context.call_sync(context.checkpoint())  # the safe point the pause halts it at
        return {"done": True}


async def test_sync_on_pause_is_not_lost_when_the_halt_wins_the_race_with_the_wait(
    rt: AgentRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """call_sync handed the call to the loop before its thread counted as waiting: if the
    loop halted the task and submitted the sync on_pause first, the hook was queued behind
    the task, which waited for a resume that needs the hook (the pause hung). The thread
    being descheduled in between is simulated by holding it until the hook is submitted."""
    hook_submitted = threading.Event()
    original_submit = agent_thread_module._Meanwhile.submit
    original_wait = agent_module._SyncCall.wait

    def submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = original_submit(self, fn, *args, **kwargs)
        hook_submitted.set()
        return future

    def wait(self: Any, loop: Any, timeout_seconds: Any) -> Any:
        # (the OS deschedules the agent's thread right after call_soon_threadsafe)
        hook_submitted.wait(5.0)
        return original_wait(self, loop, timeout_seconds)

    monkeypatch.setattr(agent_thread_module._Meanwhile, "submit", submit)
    monkeypatch.setattr(agent_module._SyncCall, "wait", wait)

    agent = HaltsAtFirstCallSync()
    agent_id = await rt.register_agent("race", agent, isolation="inline")
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t", max_retries=0)
    assert await asyncio.to_thread(agent.begun.wait, WAIT)
    pausing = asyncio.ensure_future(rt.pause_agent(agent_id, timeout_seconds=5.0))
    agent.go.set()
    try:
        paused = await pausing
    except WaitTimeoutError as exc:
        pytest.fail(
            f"the pause never completed (on_pause ran: {agent.on_pause_ran.is_set()}): {exc}"
        )
    assert paused.status is AgentStatus.PAUSED
    await rt.resume_agent(agent_id)
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message


class SyncTaskAndSyncHandler:
    """A sync task that steps through ``call_sync`` safe points, and a sync on_message
    handler (both run in the agent's one thread, one call at a time)."""

    def __init__(self) -> None:
        self.begun = threading.Event()
        self.finish = threading.Event()
        self.handled = threading.Event()

    def on_message(self, message: Any) -> None:
        self.handled.set()

    def execute_task(self, task: Task) -> Any:
        context = self.context  # type: ignore[attr-defined]
        self.begun.set()
        while not self.finish.is_set():
            context.call_sync(context.checkpoint())  # a safe point
            time.sleep(0.01)
        return {"done": True}


async def test_pause_of_a_sync_agent_whose_sync_handler_is_queued_behind_its_task(
    rt: AgentRuntime,
) -> None:
    """A message arrives while a sync task runs: the sync handler is queued in the agent's
    thread behind the task. A pause halts the task, and does not wait for the handler to
    reach a safe point (it waited for good: the handler cannot even begin while the halted
    task holds the thread); the handler runs after the resume."""
    agent = SyncTaskAndSyncHandler()
    agent_id = await rt.register_agent("both", agent, isolation="inline")
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t", max_retries=0)
    assert await asyncio.to_thread(agent.begun.wait, WAIT)
    await rt.send_message(agent_id, "hello")
    runner = rt.agent_book.get(agent_id).host._runner  # type: ignore[attr-defined]
    # the delivery took the message and handed it to the (busy) thread
    await wait_until(lambda: runner._handling is not None, "the handler queued", within=WAIT)
    try:
        try:
            paused = await rt.pause_agent(agent_id, timeout_seconds=5.0)
        except WaitTimeoutError as exc:
            pytest.fail(f"the pause never completed: {exc}")
        assert paused.status is AgentStatus.PAUSED
        await rt.resume_agent(agent_id)
    finally:
        agent.finish.set()
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert await asyncio.to_thread(agent.handled.wait, WAIT)


class TimesOutWhilePausedThenSafePoint:
    """A sync task: halted at a call_sync with a timeout (the pause), the call times out,
    plain code runs until told to go, then a call_sync safe point."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.begun = threading.Event()
        self.timed_out = threading.Event()
        self.go = threading.Event()
        self.resumed = threading.Event()

    def on_pause(self) -> dict[str, Any]:
        return {}

    def on_resume(self, state: Any) -> None:
        self.resumed.set()

    def execute_task(self, task: Task) -> Any:
        context = self.context  # type: ignore[attr-defined]
        self.begun.set()
        self.ready.wait(WAIT)
        try:
            context.call_sync(context.checkpoint(), timeout_seconds=0.5)  # halted here
        except TimeoutError:
            self.timed_out.set()
        self.go.wait(WAIT)  # plain code, busy in the agent's thread
        context.call_sync(context.checkpoint())  # the next safe point
        return {"done": True}


@pytest.mark.miminions(agent_start_timeout_seconds=3.0)
async def test_a_sync_on_resume_given_while_the_task_runs_plain_code_is_run(
    rt: AgentRuntime,
) -> None:
    """The resume's sync on_resume is submitted (gate closed) while the task's code runs
    plain code (its call_sync gave up): the task's next safe point runs it (it was queued
    behind the task, which waited there for the gate on_resume opens: the agent failed)."""
    agent = TimesOutWhilePausedThenSafePoint()
    agent_id = await rt.register_agent("tp", agent, isolation="inline")
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t", max_retries=0)
    assert await asyncio.to_thread(agent.begun.wait, WAIT)
    pausing = asyncio.ensure_future(rt.pause_agent(agent_id, timeout_seconds=WAIT))
    agent.ready.set()
    paused = await pausing
    assert paused.status is AgentStatus.PAUSED
    assert await asyncio.to_thread(agent.timed_out.wait, WAIT)
    runner = rt.agent_book.get(agent_id).host._runner  # type: ignore[attr-defined]
    resuming = asyncio.ensure_future(rt.resume_agent(agent_id))
    # on_resume handed to the agent's thread (it is busy with the task's plain code)
    await wait_until(lambda: bool(runner._hook_calls), "on_resume under way", within=WAIT)
    await asyncio.sleep(0)  # (its executor call is submitted in the same step)
    agent.go.set()
    try:
        resumed = await asyncio.wait_for(resuming, WAIT)
    except (MiminionsError, TimeoutError) as exc:
        pytest.fail(
            f"the resume failed (on_resume ran: {agent.resumed.is_set()}): "
            f"{type(exc).__name__}: {exc}"
        )
    assert resumed.status is AgentStatus.RUNNING
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message


class SlowOnErrorAndSyncHandler:
    """A failing async task; a sync on_error held until told; a sync on_message handler
    that runs plain code until told, then makes a call_sync safe point; a sync on_pause."""

    def __init__(self) -> None:
        self.error_running = threading.Event()
        self.error_go = threading.Event()
        self.handler_begun = threading.Event()
        self.handler_go = threading.Event()
        self.handler_done = threading.Event()
        self.on_pause_ran = threading.Event()

    def on_error(self, error: BaseException, task: Any) -> None:
        self.error_running.set()
        self.error_go.wait(WAIT)

    def on_message(self, message: Any) -> None:
        context = self.context  # type: ignore[attr-defined]
        self.handler_begun.set()
        self.handler_go.wait(WAIT)
        context.call_sync(context.kv.get("k"))  # a safe point of the handler
        self.handler_done.set()

    def on_pause(self) -> dict[str, Any]:
        self.on_pause_ran.set()
        return {}

    def on_resume(self, state: Any) -> None:
        pass

    async def execute_task(self, task: Task) -> Any:
        raise RuntimeError("boom")


async def test_pause_with_a_sync_handler_queued_behind_a_sync_on_error(
    rt: AgentRuntime,
) -> None:
    """A sync handler is queued behind a sync on_error (not behind a halted task): the halt
    waits for it to reach its safe point, and the pause completes (it skipped the handler,
    whose safe point then waited for an on_pause queued behind it: the pause hung)."""
    agent = SlowOnErrorAndSyncHandler()
    agent_id = await rt.register_agent("eh", agent, isolation="inline")
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("t", max_retries=0)
    assert (await rt.wait_for_task(task_id, WAIT)).status is TaskStatus.FAILED
    try:
        assert await asyncio.to_thread(agent.error_running.wait, WAIT)
        await rt.send_message(agent_id, "hello")
        runner = rt.agent_book.get(agent_id).host._runner  # type: ignore[attr-defined]
        await wait_until(lambda: runner._handling is not None, "the handler queued", within=WAIT)
        pausing = asyncio.ensure_future(rt.pause_agent(agent_id, timeout_seconds=5.0))
        # the halt now waits for on_error (having skipped the handler)
        await wait_until(lambda: not runner._gate.is_set(), "the halt begun", within=WAIT)
        agent.error_go.set()
        assert await asyncio.to_thread(agent.handler_begun.wait, WAIT)
        # on_pause handed to the thread while the handler runs plain code (or, as before
        # f634dfe, the halt waiting for the handler to reach its safe point)
        await wait_until(
            lambda: (
                bool(runner._hook_calls) or bool(runner._handler_quiet._waiters) or pausing.done()
            ),
            "on_pause under way, or the halt waiting for the handler",
            within=WAIT,
        )
        await asyncio.sleep(0)
        agent.handler_go.set()
        try:
            paused = await pausing
        except WaitTimeoutError as exc:
            pytest.fail(
                f"the pause never completed (on_pause ran: {agent.on_pause_ran.is_set()}, "
                f"handler done: {agent.handler_done.is_set()}): {exc}"
            )
        assert paused.status is AgentStatus.PAUSED
        await rt.resume_agent(agent_id)
        assert await asyncio.to_thread(agent.handler_done.wait, WAIT)
    finally:
        agent.error_go.set()
        agent.handler_go.set()
