"""Cancels that meet a task already winding down from a cancel, or a worker not yet
started: nothing is handed out while a program cancels everything, a resumed agent's worker
is not stopped again, a stop after a cancel of everything is prompt, a forced stop does not
wait for a task's slow cleanup, and a worker cancelled before its first step is recovered."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from miminions import (
    AgentRuntime,
    Event,
    EventType,
    ProcessSettings,
    RuntimeConfig,
    WaitTimeoutError,
    hookimpl,
)
from tests.support.cancelling import AtTheWorkersCreation, cancel_everything, executor_workers
from tests.support.cleanup_agents import SteppingSlowCleanupAgent
from tests.support.runtime import ROOT, start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until

MakeConfig = Callable[..., RuntimeConfig]


async def test_cancel_everything_while_a_cancel_task_winds_down_hands_out_no_task(
    make_config: MakeConfig,
) -> None:
    """docs/operations.md: "If the program cancels *every* task of its loop ... nothing is
    handed out again". An inline agent whose first task is being cancelled by the runtime
    (cancel_task) and winds down (cleanup that awaits) when the program cancels every task of
    its loop: the worker takes the next queued task and begins it during the cancel-all."""
    calls: list[str] = []
    winding_down = asyncio.Event()
    started = asyncio.Event()

    async def agent(task: object, context: object) -> str:
        name = task.name  # type: ignore[attr-defined]
        calls.append(name)
        started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            if name == "first":
                winding_down.set()
                await asyncio.Event().wait()  # cleanup (cut short by the cancel-all)
            raise
        return "never"

    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=300.0))
    await rt.start()
    try:
        await start_agent(rt, "a", agent, isolation="inline")
        first = await rt.submit_task("first")
        await asyncio.wait_for(started.wait(), WAIT_SECONDS)
        second = await rt.submit_task("second")
        # the runtime's own cancel (as rt.cancel_task does, with its reason)
        rt.executor.cancel_task(first, "cancelled by user")
        await asyncio.wait_for(winding_down.wait(), WAIT_SECONDS)
        [worker] = executor_workers("_work")
        cancel_everything()  # as asyncio.run ending, or a shutdown handler
        await wait_until(
            lambda: worker.done() or "second" in calls, "the worker ends or runs the next task"
        )
        handed_out = list(calls)
        status = rt.get_task_status(second).status.value
        assert handed_out == ["first"], f"handed out during the cancel-all: {handed_out}"
        assert status == "pending", status
    finally:
        # let the stop go whatever the worker was given
        for task_id in list(rt.executor._runs):  # type: ignore[attr-defined]
            rt.executor.cancel_task(task_id, "cancelled by user")
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0]


async def _a_stepper_running_a_task(rt: AgentRuntime, tmp_path: Path) -> tuple[str, str, Path]:
    """Start a process agent (SteppingSlowCleanupAgent) and give it a task whose cancelled
    run winds down until ``tmp_path / "release"`` exists; return once it runs: the agent's
    id, the task's id and the agent's log."""
    log, release = tmp_path / "log", tmp_path / "release"
    agent = await start_agent(rt, "stepper", SteppingSlowCleanupAgent, isolation="process")
    data = {"log": str(log), "release": str(release)}
    task_id = await rt.submit_task("first", agent_id=agent, input_data=data)
    await wait_until(lambda: log.exists() and "start" in log.read_text(), "it runs")
    return agent, task_id, log


async def test_resume_while_a_cancel_of_the_paused_agents_task_winds_down_leaves_it_running(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """A paused process agent's task is cancelled (cancel_task), and the agent is resumed
    while the task winds down. Once the run ends, the host SIGSTOPs the worker again (it
    was paused when the cancel began): the agent reports running, but its worker process is
    stopped, so its next task never runs (no heartbeat checks a frozen worker)."""
    release = tmp_path / "release"
    rt = AgentRuntime(config=make_config(process=ProcessSettings(cancel_grace_seconds=60.0)))
    await rt.start()
    try:
        agent, first, log = await _a_stepper_running_a_task(rt, tmp_path)
        await asyncio.wait_for(rt.pause_agent(agent), WAIT_SECONDS)
        cancelling = asyncio.ensure_future(rt.cancel_task(first))
        await wait_until(lambda: "cancelled" in log.read_text(), "the cancel reached it")
        await asyncio.wait_for(rt.resume_agent(agent), WAIT_SECONDS)
        release.touch()  # the cancelled task's cleanup ends
        cancelled = await asyncio.wait_for(cancelling, WAIT_SECONDS)
        assert cancelled.status.value == "cancelled"
        assert rt.get_agent_status(agent).status.value == "running"
        pid = rt.get_agent_status(agent).process_id
        assert pid is not None
        second = await rt.submit_task("second", agent_id=agent, input_data={"quick": True})
        try:
            finished = await rt.wait_for_task(second, timeout_seconds=5.0)
        except WaitTimeoutError:
            finished = None
        state = _process_state(pid)
        assert state != "T", "the running agent's worker process is stopped (SIGSTOP)"
        assert finished is not None
        assert finished.status.value == "completed"
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


def _open_for_writing(path: Path) -> BinaryIO:
    return open(path, "wb")


def _read(path: Path) -> str:
    return path.read_text()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    return Path(f"/proc/{pid}").exists() and _process_state(pid) != "Z"


async def _run_child(mode: str, db: Path) -> tuple[int | None, str, str]:
    """Run ``tests.support.exit_child MODE DB``; its return code (None: it had not
    exited after WAIT_SECONDS, and was killed), stdout and stderr."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out_path, err_path = Path(f"{db}.out"), Path(f"{db}.err")
    with _open_for_writing(out_path) as out, _open_for_writing(err_path) as err:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.exit_child",
            mode,
            str(db),
            stdout=out,
            stderr=err,
            env=env,
            cwd=ROOT,
        )
    try:
        code: int | None = await asyncio.wait_for(child.wait(), WAIT_SECONDS)
    except TimeoutError:
        child.kill()
        await child.wait()
        code = None
    return code, _read(out_path), _read(err_path)


async def test_a_program_ending_while_a_task_times_out_exits(tmp_path: Path) -> None:
    """asyncio.run(main()) where main returns without stopping the runtime while an inline
    agent's timed-out task is winding down (its cleanup awaits), and a second task waits in
    the queue. asyncio.run cancels every task left: the worker, whose run the runtime was
    already cancelling, takes the program's cancel for its own, begins the second task and
    asyncio.run never returns (the program hangs until that task ends, then takes the next)."""
    code, out, err = await _run_child("timeout-at-exit", tmp_path / "a.sqlite")
    assert "start second" not in out, f"a task was handed out at exit: {out!r}"
    assert code == 0, f"the program did not exit: {out!r} {err[-2000:]}"


async def test_a_program_ending_while_a_process_task_times_out_leaves_no_noise(
    tmp_path: Path,
) -> None:
    """The same with a process agent whose timed-out task winds down in its worker: the
    worker swallows the program's cancel, refills the agent's prefetch window with a new
    asyncio task asyncio.run never waits for: "Task was destroyed but it is pending!" (and
    an aiosqlite "Event loop is closed" traceback) at exit."""
    code, out, err = await _run_child("process-timeout-at-exit", tmp_path / "b.sqlite")
    assert code == 0, f"the program did not exit: {out!r} {err[-2000:]}"
    assert "destroyed but it is pending" not in err, err[-3000:]
    assert "Event loop is closed" not in err, err[-3000:]


async def test_a_program_ending_while_a_process_task_ignores_its_cancel_leaves_no_noise(
    tmp_path: Path,
) -> None:
    """A program returns from main without stopping its runtime while a process agent runs
    a task that ignores cancellation: asyncio.run's cancel of every task reaches the run,
    and the host kills the worker when the cancel grace ends, while asyncio.run waits. The
    kill started the crash handling (a restart), whose asyncio tasks nobody waits for:
    "Task was destroyed but it is pending!" and an "Event loop is closed" traceback."""
    code, out, err = await _run_child("process-cancel-at-exit", tmp_path / "c.sqlite")
    assert code == 0, f"the program did not exit: {out!r} {err[-2000:]}"
    assert "exited" in out, out
    assert "destroyed but it is pending" not in err, err[-3000:]
    assert "Event loop is closed" not in err, err[-3000:]


async def test_a_restart_planned_before_the_program_ends_is_not_started_at_exit(
    tmp_path: Path,
) -> None:
    """A process agent crashed and its restart is due shortly when main returns without
    stopping the runtime, while another process agent's task ignores its cancel, so
    asyncio.run's wind-down lasts that agent's cancel grace. The restart timer fired
    meanwhile and started the agent again on a new worker, whose tasks the closing loop
    destroyed ("Task was destroyed but it is pending!")."""
    code, out, err = await _run_child("restart-at-exit", tmp_path / "r.sqlite")
    assert code == 0, f"the program did not exit: {out!r} {err[-2000:]}"
    assert "exited" in out, out
    after_return = out.split("returning", 1)[1]
    assert "agent_start" not in after_return, f"an agent was started at exit:\n{out}"
    assert "destroyed but it is pending" not in err, err[-3000:]


async def test_a_worker_cancelled_from_outside_before_its_first_step_is_recovered(
    make_config: MakeConfig,
) -> None:
    """A worker cancelled from outside in the loop turn it was created in (before its
    coroutine first ran: a cancel meant for something else, a supervisor sweeping tasks).
    Its coroutine never runs, so no ``except CancelledError`` of _work sees the cancel: the
    task stays "running" for ever, and the agent (still marked as served by the dead
    worker) never takes another task until the runtime stops."""
    ran: list[str] = []

    async def agent(task: object, context: object) -> str:
        ran.append(task.name)  # type: ignore[attr-defined]
        return "done"

    swept: list[asyncio.Task[object]] = []

    def sweep() -> None:  # cancels the runtime's worker created just before
        for task in asyncio.all_tasks():
            if task.get_coro().__name__ == "_work":  # type: ignore[union-attr]
                swept.append(task)
                task.cancel()

    async with AgentRuntime(config=make_config(), plugins=[AtTheWorkersCreation(sweep)]) as rt:
        agent_id = await start_agent(rt, "a", agent, isolation="inline")
        await rt.pause_agent(agent_id)
        task_id = await rt.submit_task("job")
        await rt.resume_agent(agent_id)
        await wait_until(lambda: swept and all(t.done() for t in swept), "the sweep ran")
        try:
            finished = await rt.wait_for_task(task_id, timeout_seconds=5.0)
        except WaitTimeoutError:
            finished = None
        status = rt.get_task_status(task_id).status.value
        assert finished is not None, f"task left {status!r}; the agent ran {ran}"
        assert finished.status.value == "completed"
        again = await rt.submit_task("next")
        assert (await rt.wait_for_task(again, timeout_seconds=WAIT_SECONDS)).output_data == "done"


async def _cleaning_up_after_a_cancel_all(
    make_config: MakeConfig, release: asyncio.Event
) -> tuple[AgentRuntime, str]:
    """A started runtime (stop it yourself) whose inline agent runs a task when the program
    cancels every task of the loop; returns the runtime and the task's id once the agent's
    cleanup (until ``release``) began."""
    cleaning = asyncio.Event()

    async def agent(task: object, context: object) -> str:
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            cleaning.set()
            await release.wait()
            raise
        return "never"

    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=300.0))
    await rt.start()
    await start_agent(rt, "a", agent, isolation="inline")
    task_id = await rt.submit_task("job")
    await wait_until(lambda: rt.get_task_status(task_id).status.value == "running", "it runs")
    cancel_everything()
    await asyncio.wait_for(cleaning.wait(), WAIT_SECONDS)
    return rt, task_id


async def test_stop_cutting_short_a_cleanup_after_a_cancel_all_is_prompt(
    make_config: MakeConfig,
) -> None:
    """The agent's task cleans up (awaits) after the program cancelled everything; a stop
    that cuts the cleanup short (its timeout) is prompt: the run, which its worker ended
    without booking, is settled at once, not after the shutdown timeout."""
    never = asyncio.Event()  # a cleanup that does not end: the stop cuts it short
    rt, task_id = await _cleaning_up_after_a_cancel_all(make_config, never)
    stopping = asyncio.ensure_future(rt.stop(timeout_seconds=0.2))
    done, _ = await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    seen = [
        (run.worker.done(), run.finished)
        for run in rt.executor._runs.values()  # type: ignore[attr-defined]
    ]
    if not done:  # let the stop go (it would take 300 s)
        for run in list(rt.executor._runs.values()):  # type: ignore[attr-defined]
            run.finish()
        await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    assert done, (
        f"rt.stop(timeout_seconds=0.2) still waiting after {WAIT_SECONDS} s; "
        f"(worker done, run finished): {seen}"
    )
    assert rt.get_task_status(task_id).status.value == "pending"


async def test_stop_during_a_cleanup_after_a_cancel_all_is_prompt(
    make_config: MakeConfig,
) -> None:
    """The same, but the cleanup ends on its own while the stop's drain waits for it: the
    drain ends with the worker, not after its timeout, and the task is back in the queue."""
    release = asyncio.Event()  # a short cleanup
    rt, task_id = await _cleaning_up_after_a_cancel_all(make_config, release)
    stopping = asyncio.ensure_future(rt.stop())  # as `async with AgentRuntime()` exits

    # (the executor's own flag: the drain has begun to wait for the running task)
    def draining() -> bool:
        return not rt.executor._accepting  # type: ignore[attr-defined]

    await wait_until(draining, "the stop is draining")
    release.set()  # the cleanup ends; the agent re-raises
    done, _ = await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    if not done:  # let the stop go (it would take 300 s)
        for run in list(rt.executor._runs.values()):  # type: ignore[attr-defined]
            run.finish()
        await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    assert done, f"rt.stop() still waiting after {WAIT_SECONDS} s"
    assert rt.get_task_status(task_id).status.value == "pending"


@pytest.mark.parametrize("whole", [False, True], ids=["stop_agent", "stop"])
async def test_a_forced_stop_does_not_wait_for_the_cancel_grace(
    make_config: MakeConfig, tmp_path: Path, whole: bool
) -> None:
    """A forced stop (of the agent or the runtime) of a process agent whose cancelled task
    winds down slowly waits neither for the worker's cancel grace period nor for the
    shutdown timeout (a graceful stop's patience; the forced stop waited it out before
    killing): the worker is killed at once and the task re-queued."""
    release = tmp_path / "release"
    config = make_config(
        shutdown_timeout_seconds=120.0,
        process=ProcessSettings(cancel_grace_seconds=120.0, heartbeat_timeout_seconds=120.0),
    )
    rt = AgentRuntime(config=config)
    await rt.start()
    try:
        agent, task_id, _ = await _a_stepper_running_a_task(rt, tmp_path)
        stopping = asyncio.ensure_future(
            rt.stop(graceful=False) if whole else rt.stop_agent(agent, graceful=False)
        )
        done, _ = await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
        release.touch()  # let it go
        await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
        assert done, f"a forced stop still waiting after {WAIT_SECONDS} s (cancel grace 120 s)"
        if not whole:
            assert rt.get_task_status(task_id).status.value == "pending"
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


class _WorkerAliveAtStart:
    """Notes, as each TASK_STARTED is recorded, whether the process ``pid`` is alive."""

    miminions_plugin_name = "test_worker_alive_at_start"

    def __init__(self) -> None:
        self.pid: int | None = None
        self.seen: list[tuple[str | None, bool]] = []  # (agent id, pid alive)

    @hookimpl
    def miminions_event(self, event: Event) -> None:
        if event.event_type is EventType.TASK_STARTED and self.pid is not None:
            self.seen.append((event.agent_id, _alive(self.pid)))


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "forced"])
async def test_a_run_given_up_on_is_not_handed_out_while_its_worker_still_runs_it(
    make_config: MakeConfig, tmp_path: Path, graceful: bool
) -> None:
    """A stop of a process agent whose cancelled task winds down for longer than the
    shutdown timeout, with a cancel grace longer still: the runtime gives up on the run and
    re-queues the task. Its worker must be gone by then: the task was handed to another
    agent while the first worker still ran it (until the stop ended that worker a moment
    later), so it ran twice at once."""
    log, release = tmp_path / "log", tmp_path / "release"
    config = make_config(
        shutdown_timeout_seconds=0.5,
        process=ProcessSettings(cancel_grace_seconds=120.0, heartbeat_timeout_seconds=120.0),
    )
    watch = _WorkerAliveAtStart()
    rt = AgentRuntime(config=config, plugins=[watch])
    await rt.start()
    try:
        first = await rt.register_agent("first", SteppingSlowCleanupAgent, isolation="process")
        second = await rt.register_agent("second", SteppingSlowCleanupAgent, isolation="process")
        await rt.start_agent(first)
        data = {"log": str(log), "release": str(release)}
        task_id = await rt.submit_task("job", input_data=data)
        await wait_until(lambda: log.exists() and "start" in log.read_text(), "it runs")
        watch.pid = rt.get_agent_status(first).process_id
        assert watch.pid is not None
        await rt.start_agent(second)
        await asyncio.wait_for(
            rt.stop_agent(first, graceful=graceful, timeout_seconds=0.2), WAIT_SECONDS
        )
        await wait_until(lambda: watch.seen, "the second agent is handed the task")
        assert watch.seen == [(second, False)], "handed out while its first worker ran it"
        assert rt.get_task_status(task_id).assigned_agent_id == second
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)
