"""The executor's workers cancelled from outside (a program cancelling every task of its
loop, Ctrl-C): a stop afterwards is prompt and gives the tasks back to the queue, nothing
is dispatched again meanwhile, and a program that ends without stopping leaves no noise.
One worker cancelled while the runtime goes on gives its task back at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from miminions import AgentRuntime, BaseAgent, ProcessSettings, RuntimeConfig, Task
from miminions.cli import main
from tests.support.cancelling import cancel_everything, executor_workers
from tests.support.process_agents import SlowToStopAgent, SteppingAgent
from tests.support.runtime import ROOT, start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until

MakeConfig = Callable[..., RuntimeConfig]


async def test_cancel_everything_then_stop_with_a_second_agent_does_not_rerun_the_task(
    make_config: MakeConfig,
) -> None:
    """The cancel-everything test of test_start_stop_races with a second (idle) agent: the
    task of the cancelled worker must not be handed to the other agent while the program is
    cancelling everything, and the stop after it must not wait for such a run."""
    calls: list[str] = []
    started = asyncio.Event()

    async def slow(task: object, context: object) -> str:
        calls.append("run")
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return "never"

    config = make_config(shutdown_timeout_seconds=300.0)
    rt = AgentRuntime(config=config)
    await rt.start()
    first = await rt.register_agent("first", slow, isolation="inline")
    second = await rt.register_agent("second", slow, isolation="inline")
    await rt.start_agent(first)
    await rt.start_agent(second)
    task_id = await rt.submit_task("job")
    await asyncio.wait_for(started.wait(), WAIT_SECONDS)
    others = cancel_everything()
    await asyncio.wait(others, timeout=WAIT_SECONDS)
    stopping = asyncio.ensure_future(rt.stop())
    done, _ = await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    ran = list(calls)
    if not done:  # let the stop go: cancel the run the second agent was given
        rt.executor.cancel_task(task_id, "cancelled by user")
        await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    assert done, "the stop waits out its shutdown timeout for the run given to the second agent"
    assert ran == ["run"], "the task was handed to the other agent during the cancel-all"
    assert rt.get_task_status(task_id).status.value == "pending"


async def test_cancel_everything_then_stop_with_a_process_agent(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """The cancel-everything scenario with a process agent: the stop after cancelling every task
    of the loop is prompt and leaves the task waiting, and the next runtime on the database
    finds it waiting."""
    config = make_config(shutdown_timeout_seconds=300.0)
    rt, agent = await _runtime_with_a_process_agent(config)
    progress = tmp_path / "progress"
    task_id = await rt.submit_task(
        "job",
        agent_id=agent,
        input_data={"progress": str(progress), "release": str(tmp_path / "never")},
    )
    await wait_until(progress.exists, "the process agent is running its task")
    others = cancel_everything()
    await asyncio.wait(others, timeout=WAIT_SECONDS)
    await asyncio.wait_for(rt.stop(), WAIT_SECONDS)  # not the 300 s shutdown timeout
    assert rt.get_task_status(task_id).status.value == "pending"
    async with AgentRuntime(config=config) as again:
        assert again.get_task_status(task_id).status.value == "pending"
        assert not await again.query_events(event_type="runtime_recovered")


async def _runtime_with_a_process_agent(config: RuntimeConfig) -> tuple[AgentRuntime, str]:
    """A started runtime (stop it yourself) with a started process agent."""
    rt = AgentRuntime(config=config)
    await rt.start()
    try:
        agent = await start_agent(rt, "stepper", SteppingAgent, isolation="process")
    except BaseException:
        await rt.stop()
        raise
    return rt, agent


def _error_file(db: Path) -> BinaryIO:
    return open(f"{db}.err", "wb")


def _errors(db: Path) -> str:
    return Path(f"{db}.err").read_text()


async def _child(mode: str, db: Path) -> asyncio.subprocess.Process:
    """The child, its stdout piped, its stderr in ``db`` + ".err"."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    errors = _error_file(db)
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.outside_cancel_child",
            mode,
            str(db),
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            env=env,
            cwd=ROOT,
        )
    finally:
        errors.close()  # the child has its own copy


async def _pending_and_clean(db: Path) -> None:
    async with AgentRuntime(config=RuntimeConfig(storage_path=str(db))) as again:
        statuses = [task.status.value for task in again.list_tasks()]
        recovered = await again.query_events(event_type="runtime_recovered")
    assert statuses == ["pending"]
    assert not recovered


async def test_ctrl_c_while_a_task_runs_stops_promptly_and_leaves_it_waiting(
    tmp_path: Path,
) -> None:
    """asyncio.run(main()) with the runtime in ``async with``: Ctrl-C cancels main, the
    runtime stops in __aexit__ (the worker is interrupted by the stop, not by the loop)."""
    db = tmp_path / "ctrl-c.sqlite"
    child = await _child("ctrl-c", db)
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), WAIT_SECONDS)
    assert line.strip() == b"ready"
    child.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(child.communicate(), WAIT_SECONDS)
    except TimeoutError:
        child.kill()
        await child.wait()
        err = _errors(db)
        raise AssertionError("no exit after Ctrl-C: " + err[-3000:]) from None
    text = _errors(db)
    assert "KeyboardInterrupt" in text
    for noise in ("destroyed but it is pending", "never retrieved", "never awaited"):
        assert noise not in text
    await _pending_and_clean(db)


async def test_a_program_ending_without_stopping_the_runtime_hands_out_no_task_at_exit(
    tmp_path: Path,
) -> None:
    """A main that returns (or raises) without stopping its runtime: asyncio.run cancels
    every task left. Before c96a2e9 that exited silently; now the worker's task is given back
    to the queue, dispatched at once to the other idle agent on a new worker that the loop
    never runs to its end: "Task was destroyed but it is pending!" and a "no running event
    loop" traceback at exit."""
    db = tmp_path / "no-stop.sqlite"
    child = await _child("no-stop", db)
    await asyncio.wait_for(child.communicate(), WAIT_SECONDS)
    text = _errors(db)
    assert child.returncode == 0
    assert "destroyed but it is pending" not in text, text
    assert "no running event loop" not in text, text


async def test_cancel_everything_then_stop_with_a_prefetching_process_agent(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """A process agent holding tasks in its prefetch window when every task of the loop is
    cancelled: each goes back to the queue unattempted and the stop is prompt."""
    config = make_config(shutdown_timeout_seconds=300.0)
    rt, agent = await _runtime_with_a_process_agent(config)
    progress = tmp_path / "progress"
    data = {"progress": str(progress), "release": str(tmp_path / "never")}
    ids = await rt.submit_tasks(
        [{"name": f"job{i}", "agent_id": agent, "input_data": data} for i in range(4)]
    )
    await wait_until(progress.exists, "the process agent is running its task")
    held = [t for t in ids if rt.get_task_status(t).status.value == "running"]
    others = cancel_everything()
    await asyncio.wait(others, timeout=WAIT_SECONDS)
    await asyncio.wait_for(rt.stop(), WAIT_SECONDS)
    statuses = [rt.get_task_status(t) for t in ids]
    assert [s.status.value for s in statuses] == ["pending"] * 4, held
    assert [s.retry_count for s in statuses] == [0] * 4
    async with AgentRuntime(config=config) as again:
        assert [again.get_task_status(t).status.value for t in ids] == ["pending"] * 4
        assert not await again.query_events(event_type="runtime_recovered")


async def test_one_worker_cancelled_from_outside_gives_its_task_back_and_its_agent_goes_on(
    make_config: MakeConfig,
) -> None:
    """Code of the program cancels the asyncio task running an agent's task while the
    runtime goes on (a cancel meant for something else, a supervisor of its own): the task
    goes back to the queue without using an attempt, runs again and completes, and the
    agent keeps taking tasks. (Before, the task stayed "running" and the agent took no task
    again until the runtime was stopped.)"""
    workers: list[asyncio.Task[object]] = []
    started = asyncio.Event()

    async def once_stuck(task: object, context: object) -> str:
        if not workers:
            current = asyncio.current_task()
            assert current is not None
            workers.append(current)
            started.set()
            await asyncio.Event().wait()  # until cancelled
        return "done"

    async with AgentRuntime(config=make_config()) as rt:
        agent = await start_agent(rt, "once-stuck", once_stuck, isolation="inline")
        task_id = await rt.submit_task("job")
        await asyncio.wait_for(started.wait(), WAIT_SECONDS)
        workers[0].cancel()
        finished = await rt.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)
        assert finished.status.value == "completed"
        assert finished.output_data == "done"
        assert finished.retry_count == 0
        requeued = await rt.query_events(event_type="task_requeued", task_id=task_id)
        assert ["cancelled from outside" in e.details["reason"] for e in requeued] == [True]
        again = await rt.submit_task("next")
        assert (await rt.wait_for_task(again, timeout_seconds=WAIT_SECONDS)).output_data == "done"
        assert rt.get_agent_status(agent).status.value == "running"


async def test_a_process_agents_worker_cancelled_from_outside_gives_its_task_back(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """The same for a process agent (whose runs go through a prefetch window): the run's
    task goes back to the queue, is handed out again, and completes."""
    rt, agent = await _runtime_with_a_process_agent(make_config())
    try:
        progress, release = tmp_path / "progress", tmp_path / "release"
        data = {"progress": str(progress), "release": str(release)}
        task_id = await rt.submit_task("job", agent_id=agent, input_data=data)
        await wait_until(progress.exists, "the process agent is running its task")
        [worker] = executor_workers("_work_prefetched")
        worker.cancel()
        await wait_until(worker.done, "the cancelled worker ends")
        release.touch()
        finished = await rt.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)
        assert finished.status.value == "completed"
        assert finished.retry_count == 0
        requeued = await rt.query_events(event_type="task_requeued", task_id=task_id)
        assert any("cancelled from outside" in e.details["reason"] for e in requeued)
    finally:
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)


class FailsOnceSlowOnError(BaseAgent):
    """Fails its first task; its on_error then waits for ever (a slow report)."""

    entered: asyncio.Event
    failed = False

    async def execute_task(self, task: Task) -> str:
        if not FailsOnceSlowOnError.failed:
            FailsOnceSlowOnError.failed = True
            raise RuntimeError("first task fails")
        return "done"

    async def on_error(self, error: BaseException, task: Task | None) -> None:
        FailsOnceSlowOnError.entered.set()
        await asyncio.Event().wait()


async def test_a_worker_cancelled_from_outside_in_on_error_leaves_its_agent_serving(
    make_config: MakeConfig,
) -> None:
    """The cancel reaches the worker while it waits for the agent's on_error (after the
    task ended), not in the agent's task: the agent still takes tasks again."""
    FailsOnceSlowOnError.entered = asyncio.Event()
    FailsOnceSlowOnError.failed = False
    async with AgentRuntime(config=make_config()) as rt:
        await start_agent(rt, "slow-on-error", FailsOnceSlowOnError, isolation="inline")
        first = await rt.submit_task("first", max_retries=0)
        await asyncio.wait_for(FailsOnceSlowOnError.entered.wait(), WAIT_SECONDS)
        [worker] = executor_workers("_work")
        worker.cancel()
        await wait_until(worker.done, "the cancelled worker ends")
        assert rt.get_task_status(first).status.value == "failed"
        again = await rt.submit_task("next")
        finished = await rt.wait_for_task(again, timeout_seconds=WAIT_SECONDS)
        assert finished.status.value == "completed"


async def test_a_process_task_cancelled_twice_from_outside_never_runs_twice_at_once(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """A process agent's worker cancelled from outside, and again while the host waits for
    the worker process to confirm the cancel: the task is not handed to another agent while
    the first one's process may still run it (the host sees the cancel through: confirmed,
    or the process killed)."""
    log, release = tmp_path / "log", tmp_path / "release"
    config = make_config(process=ProcessSettings(cancel_grace_seconds=60.0))
    rt = AgentRuntime(config=config)
    await rt.start()
    try:
        slow = await rt.register_agent(
            "slow", SlowToStopAgent, isolation="process", config={"slow": True}
        )
        fast = await rt.register_agent("fast", SlowToStopAgent, isolation="process")
        await rt.start_agent(slow)
        # Once released, the first run takes half a second more to end: a task handed out
        # again at once would start in the other agent well before.
        data = {"log": str(log), "release": str(release), "wind_down": 0.5}
        task_id = await rt.submit_task("job", input_data=data)
        await wait_until(lambda: log.exists() and "start slow" in log.read_text(), "slow runs")
        await rt.start_agent(fast)
        [worker] = executor_workers("_work_prefetched")
        worker.cancel()
        await wait_until(lambda: "cancelled slow" in log.read_text(), "the cancel reached it")
        worker.cancel()  # once more, while the host waits for the worker process
        release.touch()  # the first run may now wind down
        finished = await rt.wait_for_task(task_id, timeout_seconds=WAIT_SECONDS)
        lines = log.read_text().splitlines()
        assert finished.status.value == "completed", lines
        assert "start fast" in lines[-1], lines
        assert lines.index("end slow") < len(lines) - 1, f"ran twice at once: {lines}"
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(), WAIT_SECONDS)


async def test_a_worker_cancelled_from_outside_during_a_graceful_stop_does_not_hold_it(
    make_config: MakeConfig,
) -> None:
    """A graceful stop waits for running tasks; the worker of one is cancelled from outside
    meanwhile: the stop does not wait out its timeout for a run nobody will end, and the
    task is back in the queue."""
    started = asyncio.Event()

    async def stuck(task: object, context: object) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    rt = AgentRuntime(config=make_config(shutdown_timeout_seconds=300.0))
    await rt.start()
    await start_agent(rt, "stuck", stuck, isolation="inline")
    task_id = await rt.submit_task("job")
    await asyncio.wait_for(started.wait(), WAIT_SECONDS)
    [worker] = executor_workers("_work")
    stopping = asyncio.ensure_future(rt.stop())

    # (the executor's own flag: the moment the stop begins to wait for the running task)
    def draining() -> bool:
        return not rt.executor._accepting  # type: ignore[attr-defined]

    await wait_until(draining, "the stop is draining")
    worker.cancel()
    done, _ = await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    if not done:  # let the stop go
        rt.executor.cancel_task(task_id, "cancelled by user")
        await asyncio.wait({stopping}, timeout=WAIT_SECONDS)
    assert done, "the stop waits out its shutdown timeout for a run whose worker is gone"
    assert rt.get_task_status(task_id).status.value == "pending"


class _RunsUntilInterrupted(BaseAgent):
    """Its task runs until the runtime interrupts it."""

    running: asyncio.Event

    async def execute_task(self, task: Task) -> dict[str, object]:
        type(self).running.set()
        await asyncio.Event().wait()
        return {}


async def test_a_stop_cut_short_records_what_it_did(
    make_config: MakeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """A graceful stop cancelled while it waits for a running task (Ctrl-C twice) still
    gives the task back; runtime_stopped counts it (it said 0), and the agent is recorded
    stopped without on_stop (it stayed 'running', in queries and in the database, under a
    runtime recorded as stopped cleanly)."""
    _RunsUntilInterrupted.running = asyncio.Event()
    config = make_config()
    rt = AgentRuntime(config=config)
    await rt.start()
    agent_id = await start_agent(rt, "runner", _RunsUntilInterrupted)
    task_id = await rt.submit_task("long")
    await asyncio.wait_for(_RunsUntilInterrupted.running.wait(), WAIT_SECONDS)
    stopping = asyncio.create_task(rt.stop(timeout_seconds=30))
    await wait_until(lambda: rt.get_task_status(task_id).status.value == "running", "running")
    await asyncio.sleep(0)  # the stop reaches its wait for the running task
    stopping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopping
    assert not rt.is_running
    status = rt.get_agent_status(agent_id)
    assert status.status.value == "stopped", status
    assert "cut short" in (status.status_reason or "")
    async with AgentRuntime(config=config) as again:
        [stopped] = await again.query_events(event_type="runtime_stopped")
        requeued = await again.query_events(event_type="task_requeued", task_id=task_id)
        assert stopped.details["tasks_requeued"] == len(requeued) == 1
        assert again.get_task_status(task_id).status.value == "pending"
    # What the command line shows: no agent running under a runtime stopped cleanly.
    assert await asyncio.to_thread(main, ["status", "--db", config.storage_path]) == 0
    shown = capsys.readouterr().out
    assert "stopped cleanly" in shown
    [row] = [line for line in shown.splitlines() if line.strip().startswith("runner")]
    assert "stopped" in row.split(), shown
