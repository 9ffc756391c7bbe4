"""When the runtime gives up on a process agent's task that winds down after a cancel, and
when it must not: only a stop gives up early (killing the worker before the task goes back
to the queue); a pause giving back prefetched tasks, a cancel from outside the runtime
followed by the runtime's own cancel, and every other extra cancel leave the worker alone
within its cancel grace; a worker killed for two runs at once is reported once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    EventType,
    ProcessSettings,
    RuntimeConfig,
    hookimpl,
)
from miminions.kernel.wire import FrameChannel
from miminions.plugins.asyncio_executor import AsyncioExecutor
from tests.support.agents import EchoAgent
from tests.support.cancelling import executor_workers
from tests.support.cleanup_agents import SteppingSlowCleanupAgent
from tests.support.process_agents import GatedAgent
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until

MakeConfig = Callable[..., RuntimeConfig]


def _process_config(
    make_config: MakeConfig, *, grace: float, shutdown: float | None = None
) -> RuntimeConfig:
    """Process agents with cancel grace ``grace`` (and the shutdown timeout ``shutdown``, if
    given); a heartbeat timeout that plays no part."""
    extra = {} if shutdown is None else {"shutdown_timeout_seconds": shutdown}
    process = ProcessSettings(cancel_grace_seconds=grace, heartbeat_timeout_seconds=120.0)
    return make_config(process=process, **extra)


async def _prefetched_behind_a_loop_blocking_task(
    rt: AgentRuntime,
    tmp_path: Path,
    c_input: dict[str, Any] | None = None,
    c_retries: int | None = None,
) -> tuple[str, str, str, Path]:
    """A process agent runs ``b``, which blocks its worker's loop until the returned
    ``release`` file exists, with ``c`` (``c_input`` added to its input, ``c_retries``
    its ``max_retries`` if given) waiting in its prefetch window: the agent's id, ``b``,
    ``c`` and ``release``."""
    log, gate, release = tmp_path / "log", tmp_path / "gate", tmp_path / "release"
    agent = await start_agent(rt, "a", GatedAgent, isolation="process")
    await rt.submit_task("a", input_data={"log": str(log), "gate": str(gate)})
    await wait_until(lambda: log.exists() and "start a" in log.read_text(), "a runs")
    b = await rt.submit_task("b", input_data={"log": str(log), "block": str(release)})
    retries: dict[str, Any] = {} if c_retries is None else {"max_retries": c_retries}
    c = await rt.submit_task("c", input_data={"log": str(log), **(c_input or {})}, **retries)
    gate.touch()  # a ends: the agent takes b and, ahead of time, c
    await wait_until(lambda: "start b" in log.read_text(), "b runs (its worker's loop blocked)")
    await wait_until(
        lambda: (
            rt.get_task_status(c).assigned_agent_id == agent
            and rt.get_task_status(c).status.value == "running"
        ),
        "c is in the agent's prefetch window",
    )
    # ... and its run request is on its way to the worker, so c begins there when b ends
    # even while the runtime's loop is held.
    live = rt.agent_book.slots[agent].host._live  # type: ignore[attr-defined]
    await wait_until(lambda: len(live.runs) == 2, "c's run request is made")
    live.channel.flush_now()
    await live.channel.drain()
    return agent, b, c, release


@pytest.mark.parametrize("what", ["agent", "queue"])
@pytest.mark.parametrize(
    ("shutdown", "grace"),
    [(0.3, 30.0), (10.0, 0.3)],
    ids=["past-the-shutdown-timeout", "past-the-cancel-grace"],
)
async def test_a_pause_giving_back_prefetched_tasks_does_not_kill_the_worker(
    make_config: MakeConfig, tmp_path: Path, what: str, shutdown: float, grace: float
) -> None:
    """pause_agent / pause_queue give back the task waiting in a process agent's prefetch
    window while the running one keeps the worker's loop busy (synchronous work, well
    within the heartbeat timeout) past the shutdown timeout, or past the cancel grace. The
    task given back was never begun; the worker just cannot answer yet. It was killed, as
    if a stop gave up on that task or the task ignored its cancel, and the running task,
    which nobody cancelled, failed as crashed."""
    rt = AgentRuntime(config=_process_config(make_config, grace=grace, shutdown=shutdown))
    await rt.start()
    release = tmp_path / "release"
    try:
        agent, b, c, release = await _prefetched_behind_a_loop_blocking_task(rt, tmp_path)
        pausing = asyncio.ensure_future(
            rt.pause_queue() if what == "queue" else rt.pause_agent(agent, timeout_seconds=30.0)
        )
        # What is tested is an absence: no kill once the shorter of the two has passed
        # three times over. Nothing happens to wait for, so the test lets that time pass.
        await asyncio.sleep(1.0)
        killed = await rt.query_events(event_type=EventType.AGENT_KILLED, agent_id=agent)
        release.touch()
        await asyncio.wait_for(asyncio.gather(pausing, return_exceptions=True), WAIT_SECONDS)
        assert [e.details for e in killed] == [], "the pause killed the agent's worker"
        if what == "queue":
            await rt.resume_queue()
        else:
            await rt.resume_agent(agent)
        finished = await rt.wait_for_task(b, timeout_seconds=WAIT_SECONDS)
        assert finished.status.value == "completed", finished.error_message
        given_back = await rt.wait_for_task(c, timeout_seconds=WAIT_SECONDS)
        assert given_back.status.value == "completed", given_back.error_message
        assert given_back.retry_count == 0
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


@pytest.mark.parametrize("then", ["cancel_task", "timeout"])
async def test_the_runtimes_cancel_after_an_outside_cancel_does_not_kill_the_worker(
    make_config: MakeConfig, tmp_path: Path, then: str
) -> None:
    """A process agent's worker is cancelled from outside the runtime and its task winds
    down; then the runtime cancels the task too (cancel_task, its timeout). That cancel is
    no stop giving up: the worker is left to wind down within its cancel grace."""
    log, release = tmp_path / "log", tmp_path / "release"
    config = make_config(
        process=ProcessSettings(cancel_grace_seconds=60.0, heartbeat_timeout_seconds=120.0)
    )
    rt = AgentRuntime(config=config)
    await rt.start()
    try:
        agent = await start_agent(rt, "a", SteppingSlowCleanupAgent, isolation="process")
        data = {"log": str(log), "release": str(release)}
        timeout = 1.0 if then == "timeout" else None
        task_id = await rt.submit_task("job", input_data=data, timeout_seconds=timeout)
        await wait_until(lambda: log.exists() and "start" in log.read_text(), "it runs")
        [worker] = executor_workers("_work_prefetched")
        worker.cancel()  # from outside the runtime (a supervisor of the program's own)
        await wait_until(lambda: "cancelled" in log.read_text(), "the cancel reached it")
        run = rt.executor._runs[task_id]  # type: ignore[attr-defined]
        if then == "cancel_task":
            ending = asyncio.ensure_future(rt.cancel_task(task_id))
            await wait_until(lambda: run.cancels_sent, "the runtime's cancel is sent")
        else:
            ending = asyncio.ensure_future(rt.wait_for_task(task_id, WAIT_SECONDS))
            await wait_until(lambda: run.timed_out, "the task's timeout passes")
        for _ in range(20):  # the host acts on a cancel within a few turns of the loop
            await asyncio.sleep(0)
        killed = await rt.query_events(event_type=EventType.AGENT_KILLED, agent_id=agent)
        release.touch()  # the wind-down ends (well within the 60 s grace)
        await asyncio.wait_for(ending, WAIT_SECONDS)
        assert [e.details for e in killed] == [], f"killed during its wind-down ({then})"
        assert "end" in log.read_text(), "the worker was killed before it wound down"
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(), 30)


@pytest.mark.parametrize(
    ("shutdown", "grace"),
    [(0.3, 30.0), (30.0, 0.3)],
    ids=["killed-when-the-stop-gives-up", "killed-at-the-end-of-the-cancel-grace"],
)
async def test_a_worker_killed_for_two_runs_at_once_is_reported_once(
    make_config: MakeConfig, tmp_path: Path, shutdown: float, grace: float
) -> None:
    """A forced stop of a process agent holding two runs (the running one blocks the
    worker's loop, the next waits in its prefetch window): both runs outlast the stop's
    patience or the cancel grace together, and each run's host killed the same worker,
    each reporting its own agent_killed."""
    rt = AgentRuntime(config=_process_config(make_config, grace=grace, shutdown=shutdown))
    await rt.start()
    release = tmp_path / "release"
    try:
        agent, _, _, release = await _prefetched_behind_a_loop_blocking_task(rt, tmp_path)
        pid = rt.get_agent_status(agent).process_id
        await asyncio.wait_for(
            rt.stop_agent(agent, graceful=False, timeout_seconds=0.1), WAIT_SECONDS
        )
        killed = await rt.query_events(event_type=EventType.AGENT_KILLED, agent_id=agent)
        assert [e.details["pid"] for e in killed] in ([], [pid]), [e.details for e in killed]
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


async def _read_together_behind_a_loop_blocking_task(
    rt: AgentRuntime, tmp_path: Path
) -> tuple[str, str, Path, Path]:
    """As :func:`_prefetched_behind_a_loop_blocking_task`, but the worker reads ``b``'s and
    ``c``'s run requests in one go (as whenever they arrive while its loop is busy for a
    moment: here ``a`` holds it after its end until both are sent): the agent's id, ``c``,
    ``release`` (ends ``b``) and the log."""
    log, gate, unhold = tmp_path / "log", tmp_path / "gate", tmp_path / "unhold"
    release = tmp_path / "release"
    agent = await start_agent(rt, "a", GatedAgent, isolation="process")
    await rt.submit_task(
        "a", input_data={"log": str(log), "gate": str(gate), "hold_after": str(unhold)}
    )
    await wait_until(lambda: log.exists() and "start a" in log.read_text(), "a runs")
    await rt.submit_task("b", input_data={"log": str(log), "block": str(release)})
    c = await rt.submit_task("c", input_data={"log": str(log)})
    gate.touch()
    await wait_until(lambda: "holding after a" in log.read_text(), "a ended; the loop is held")
    live = rt.agent_book.slots[agent].host._live  # type: ignore[attr-defined]
    await wait_until(lambda: len(live.runs) == 2, "b's and c's run requests are made")
    live.channel.flush_now()
    await live.channel.drain()  # both are in the worker's socket
    unhold.touch()
    await wait_until(lambda: "blocking b" in log.read_text(), "b blocks the worker's loop")
    assert rt.get_task_status(c).started_at is None  # taken ahead of time, not begun
    return agent, c, release, log


def _cancel_sent_and_waiting(rt: AgentRuntime, agent: str) -> bool:
    """The host's cancel of the run taken ahead of time is sent to the worker and waits for
    the run ahead to leave (see ProcessHost._cancel_run)."""
    live = rt.agent_book.slots[agent].host._live  # type: ignore[attr-defined]
    return live is not None and live.head_moved is not None


def _give_back_sent(rt: AgentRuntime, agent: str) -> bool:
    """The host asked the worker to give back the run taken ahead of time (see
    ProcessHost.give_back) and waits for its answer."""
    live = rt.agent_book.slots[agent].host._live  # type: ignore[attr-defined]
    return live is not None and bool(live.giving_back)


async def test_a_cancelled_task_taken_ahead_of_time_never_begins(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """cancel_task of a task taken ahead of time (no started_at) while the run ahead blocks
    the worker's loop: when that run ended, the worker began the cancelled task before it
    read the cancel waiting in its socket, and the task's code ran to its end."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    release = tmp_path / "release"
    try:
        agent, c, release, log = await _read_together_behind_a_loop_blocking_task(rt, tmp_path)
        cancelling = asyncio.ensure_future(rt.cancel_task(c))
        await wait_until(lambda: _cancel_sent_and_waiting(rt, agent), "the cancel is sent")
        release.touch()  # b ends; the worker's loop is free again
        cancelled = await asyncio.wait_for(cancelling, WAIT_SECONDS)
        assert cancelled.status.value == "cancelled"
        assert cancelled.started_at is None
        lines = log.read_text().splitlines()
        assert not any(line.startswith("start c") for line in lines), lines
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


async def test_a_task_taken_ahead_of_time_and_given_back_on_a_pause_runs_once(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """pause_queue gives back the task taken ahead of time (re-queued as never begun) while
    the run ahead blocks the worker's loop: the worker ran it anyway, and it ran again after
    resume_queue."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    release = tmp_path / "release"
    try:
        agent, c, release, log = await _read_together_behind_a_loop_blocking_task(rt, tmp_path)
        pausing = asyncio.ensure_future(rt.pause_queue())
        await wait_until(lambda: _give_back_sent(rt, agent), "the give-back is sent")
        release.touch()
        await asyncio.wait_for(pausing, WAIT_SECONDS)
        await wait_until(lambda: rt.get_task_status(c).status.value == "pending", "c given back")
        await rt.resume_queue()
        done = await rt.wait_for_task(c, timeout_seconds=WAIT_SECONDS)
        assert done.status.value == "completed", done.error_message
        starts = [line for line in log.read_text().splitlines() if line.startswith("start c")]
        assert len(starts) == 1, f"c ran {len(starts)} times: {starts}"
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


@pytest.mark.parametrize("whole", [False, True], ids=["stop_agent", "stop"])
async def test_a_forced_stop_of_a_task_that_would_stop_reports_no_misbehaving_worker(
    make_config: MakeConfig, tmp_path: Path, whole: bool
) -> None:
    """A forced stop of a process agent whose task ends at once when cancelled: the kill is
    the stop's own. It was reported as agent_killed (severity error, "task_ignored_cancel"),
    the event for a misbehaving worker, on every forced stop of a busy process agent."""
    rt = AgentRuntime(config=make_config())
    await rt.start()
    log, gate = tmp_path / "log", tmp_path / "gate"
    stopped = False
    try:
        agent = await start_agent(rt, "a", GatedAgent, isolation="process")
        await rt.submit_task("a", input_data={"log": str(log), "gate": str(gate)})
        await wait_until(lambda: log.exists() and "start a" in log.read_text(), "a runs")
        if whole:
            await asyncio.wait_for(rt.stop(graceful=False), WAIT_SECONDS)
            stopped = True
            again = AgentRuntime(config=make_config(storage_path=rt.config.storage_path))
            await again.start()
            try:
                killed = await again.query_events(event_type=EventType.AGENT_KILLED)
            finally:
                await again.stop()
        else:
            await asyncio.wait_for(rt.stop_agent(agent, graceful=False), WAIT_SECONDS)
            killed = await rt.query_events(event_type=EventType.AGENT_KILLED, agent_id=agent)
        assert [e.details for e in killed] == []
    finally:
        gate.touch()
        if not stopped:
            await asyncio.wait_for(rt.stop(graceful=False), 30)


class _ExecutorOfTheOldProtocol(AsyncioExecutor):
    """An executor plugin written before ``interrupt_agent`` and ``drain`` took
    ``at_once`` (overriding them, to audit them say)."""

    async def interrupt_agent(self, agent_id: str, reason: str) -> bool:  # type: ignore[override]
        return await super().interrupt_agent(agent_id, reason)

    async def drain(self, timeout_seconds: float) -> list[str]:  # type: ignore[override]
        return await super().drain(timeout_seconds)


class _OldProtocolPlugin:
    miminions_plugin_name = "test_old_protocol_executor"

    @hookimpl
    def miminions_make_executor(self, runtime: Any) -> AsyncioExecutor:
        return _ExecutorOfTheOldProtocol(runtime)


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "forced"])
async def test_an_executor_written_before_at_once_still_stops_agents_and_the_runtime(
    make_config: MakeConfig, graceful: bool
) -> None:
    """The kernel passed ``at_once`` to every executor: one written to the protocol before
    failed every agent stop with TypeError, leaving the agent stopping."""
    rt = AgentRuntime(config=make_config(), plugins=[_OldProtocolPlugin()])
    await rt.start()
    try:
        agent = await start_agent(rt, "echo", EchoAgent)
        await rt.stop_agent(agent, graceful=graceful)
        assert rt.get_agent_status(agent).status.value == "stopped"
    finally:
        await asyncio.wait_for(rt.stop(graceful=graceful), WAIT_SECONDS)


def _hold_the_runtimes_loop_until(predicate: Callable[[], bool]) -> None:
    """Keep the runtime's loop busy (synchronous work: many agents, a plugin, the
    application) until ``predicate`` holds (bounded)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, "timed out holding the runtime's loop"
        time.sleep(0.01)


def _starts(log: Path, name: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith(f"start {name} "))


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_a_task_taken_back_after_it_began_unseen_is_not_run_twice(
    make_config: MakeConfig, tmp_path: Path, outcome: str
) -> None:
    """The worker begins the task taken ahead of time as soon as the run ahead ends, while
    the runtime, busy for a moment, has not read that run's reply: pause_queue gives the
    task back as never begun although its code ran to its end, and it ran again after
    resume_queue. Its outcome now stands: its result, or its failure (no retries left;
    it was re-queued, and failed a second time)."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, release = tmp_path / "log", tmp_path / "release"
    failing = outcome == "failed"
    try:
        _, b, c, release = await _prefetched_behind_a_loop_blocking_task(
            rt, tmp_path, {"fail": True} if failing else None, c_retries=0
        )
        release.touch()  # b ends in the worker, and c begins there...
        _hold_the_runtimes_loop_until(lambda: "end c" in log.read_text())
        assert rt.get_task_status(c).started_at is None  # ...unseen by the runtime yet
        await rt.pause_queue()  # gives c back
        await rt.wait_for_task(b, timeout_seconds=WAIT_SECONDS)
        await rt.resume_queue()
        done = await rt.wait_for_task(c, timeout_seconds=WAIT_SECONDS)
        assert done.status.value == outcome, done.error_message
        if failing:
            assert "failed on purpose" in (done.error_message or "")
        assert done.started_at is not None
        assert _starts(log, "c") == 1, log.read_text()
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


@pytest.mark.parametrize("how", ["pause_queue", "cancel_task"])
async def test_a_task_taken_back_behind_a_big_run_request_runs_once_and_says_so(
    make_config: MakeConfig, tmp_path: Path, how: str
) -> None:
    """The agent's fast tasks grow its prefetch window past two: it holds ``n`` (blocks
    the worker's loop), ``m1`` and ``m2`` (a 2 MB input). ``m1`` is given back (or
    cancelled) while ``n`` blocks; its cancel waits in the worker's socket behind ``m2``'s
    big request, so the worker may begin ``m1`` before reading it. Then the task must run
    once, and its record say what happened: never begun (cancelled or given back, no
    start), or run to its end (completed). It ran to its end yet was given back and ran
    again, or reported cancelled and never started."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, release = tmp_path / "log", tmp_path / "release"
    try:
        agent = await start_agent(rt, "a", GatedAgent, isolation="process")
        slot = rt.agent_book.slots[agent]
        for _ in range(10):
            fast = [await rt.submit_task("w", input_data={"log": str(log)}) for _ in range(8)]
            await rt.wait_for_tasks(fast, WAIT_SECONDS)
            if rt.executor._window(slot) >= 3:  # type: ignore[attr-defined]
                break
        assert rt.executor._window(slot) >= 3, "the agent's tasks were not fast enough"  # type: ignore[attr-defined]
        await rt.pause_queue()
        await rt.submit_task("p", input_data={"log": str(log)})
        n = await rt.submit_task("n", input_data={"log": str(log), "block": str(release)})
        m1 = await rt.submit_task("m1", input_data={"log": str(log)})
        m2 = await rt.submit_task("m2", input_data={"log": str(log), "pad": "x" * 2_000_000})
        await rt.resume_queue()  # the agent takes p; as p ends, n, m1 and m2 at once
        await wait_until(lambda: "blocking n" in log.read_text(), "n blocks its worker")
        await wait_until(
            lambda: all(rt.get_task_status(t).status.value == "running" for t in (m1, m2)),
            "m1 and m2 are in the agent's prefetch window",
        )
        taking_back = asyncio.ensure_future(
            rt.pause_queue() if how == "pause_queue" else rt.cancel_task(m1)
        )
        live = slot.host._live  # type: ignore[attr-defined]
        await wait_until(
            lambda: live.head_moved is not None or bool(live.giving_back),
            "the cancel (or the give-back) is sent",
        )
        release.touch()
        await asyncio.wait_for(taking_back, WAIT_SECONDS)
        await rt.wait_for_task(n, timeout_seconds=WAIT_SECONDS)
        if how == "pause_queue":
            await rt.resume_queue()
            await rt.wait_for_tasks([m1, m2], WAIT_SECONDS)
        else:
            await rt.wait_for_tasks([m1, m2], WAIT_SECONDS)
        m1_now = rt.get_task_status(m1)
        runs = _starts(log, "m1")
        if how == "pause_queue":
            assert runs == 1, log.read_text()
            assert m1_now.status.value == "completed"
        elif runs:
            assert runs == 1
            assert m1_now.status.value == "completed"
            assert m1_now.started_at is not None
        else:
            assert m1_now.status.value == "cancelled"
            assert m1_now.started_at is None
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


@pytest.mark.parametrize("seen", [False, True], ids=["taken-ahead", "seen-begun"])
async def test_a_task_that_swallows_its_cancel_ends_cancelled(
    make_config: MakeConfig, tmp_path: Path, seen: bool
) -> None:
    """cancel_task of a process agent's task that catches the cancel and returns a value:
    the value is dropped and the task ends cancelled, also when the worker had begun it
    ahead of time unseen by the runtime (it came back completed, with the partial value)."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, gate = tmp_path / "log", tmp_path / "gate_c"
    release = tmp_path / "release"
    try:
        if seen:
            await start_agent(rt, "a", GatedAgent, isolation="process")
            data = {"log": str(log), "gate": str(gate), "swallow": True}
            c = await rt.submit_task("c", input_data=data)
            await wait_until(lambda: log.exists() and "start c" in log.read_text(), "c runs")
        else:
            _, _, c, release = await _prefetched_behind_a_loop_blocking_task(
                rt, tmp_path, {"gate": str(gate), "swallow": True}
            )
            release.touch()  # b ends in the worker, and c begins there...
            _hold_the_runtimes_loop_until(lambda: "start c" in log.read_text())
            assert rt.get_task_status(c).started_at is None  # ...unseen by the runtime yet
        cancelled = await asyncio.wait_for(rt.cancel_task(c), WAIT_SECONDS)
        assert "swallowed c" in log.read_text()
        assert cancelled.status.value == "cancelled", cancelled.output_data
        assert cancelled.output_data is None
    finally:
        release.touch()
        gate.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


@pytest.mark.parametrize("graceful", [False, True], ids=["forced", "graceful"])
async def test_a_stop_after_the_tasks_ran_to_their_end_does_not_run_them_again(
    make_config: MakeConfig, tmp_path: Path, graceful: bool
) -> None:
    """``b`` ends in the worker and ``c`` (taken ahead of time) begins and ends there too,
    both replies on their way, while the runtime's loop is busy; then stop_agent. The
    runtime held both results yet re-queued the tasks as interrupted, and each ran a second
    time when the agent started again."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, release = tmp_path / "log", tmp_path / "release"
    try:
        b, c = await _ran_unseen_behind(rt, tmp_path)
        agent = rt.get_task_status(b).assigned_agent_id
        assert agent is not None
        await asyncio.wait_for(rt.stop_agent(agent, graceful=graceful), WAIT_SECONDS)
        await rt.start_agent(agent)
        await rt.wait_for_tasks([b, c], WAIT_SECONDS)
        assert {name: _starts(log, name) for name in ("b", "c")} == {"b": 1, "c": 1}
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


async def _ran_unseen_behind(rt: AgentRuntime, tmp_path: Path) -> tuple[str, str]:
    """``b`` and ``c`` (taken ahead of time) both run to their end in the worker while the
    runtime's loop is busy: their ids."""
    log = tmp_path / "log"
    _, b, c, release = await _prefetched_behind_a_loop_blocking_task(rt, tmp_path)
    release.touch()
    _hold_the_runtimes_loop_until(lambda: "end c" in log.read_text())
    assert rt.get_task_status(c).started_at is None
    return b, c


@pytest.mark.parametrize("why", ["cancel_task", "timeout"])
async def test_a_task_still_running_when_its_cancel_reached_the_worker_is_not_completed(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """A process agent's task (the runtime saw it begin) blocks its worker's loop past
    its cancel or its timeout: the cancel is in the worker's socket, unread, when the
    task returns. Its outcome is the cancel's (cancelled, timed out), not its result: it
    was booked completed, and a timeout of a task that ran far longer was ignored."""
    sent: list[FrameChannel] = []
    notify = FrameChannel.notify

    def recording_notify(self: FrameChannel, op: str, **payload: Any) -> None:
        notify(self, op, **payload)
        if op == "cancel":
            sent.append(self)

    monkeypatch.setattr(FrameChannel, "notify", recording_notify)
    rt = AgentRuntime(config=_process_config(make_config, grace=60.0))
    await rt.start()
    log, release = tmp_path / "log", tmp_path / "release"
    try:
        await start_agent(rt, "a", GatedAgent, isolation="process")
        b = await rt.submit_task(
            "b",
            input_data={"log": str(log), "block": str(release)},
            timeout_seconds=0.3 if why == "timeout" else None,
            max_retries=0,
        )
        await wait_until(lambda: log.exists() and "blocking b" in log.read_text(), "b blocks")
        run = rt.executor._runs[b]  # type: ignore[attr-defined]
        ending = asyncio.ensure_future(
            rt.cancel_task(b) if why == "cancel_task" else rt.wait_for_task(b, WAIT_SECONDS)
        )
        await wait_until(lambda: run.cancels_sent == 1, "the executor cancelled the run")

        def cancel_in_the_socket() -> bool:
            if not sent:
                return False
            channel, transport = sent[0], sent[0]._transport
            return not channel._out and (
                transport is None or transport.get_write_buffer_size() == 0
            )

        await wait_until(cancel_in_the_socket, "the cancel notice is in the worker's socket")
        assert "end b" not in log.read_text()  # b still runs
        release.touch()
        task = await asyncio.wait_for(ending, WAIT_SECONDS)
        assert "end b" in log.read_text()
        if why == "cancel_task":
            assert task.status.value == "cancelled", (task.status, task.output_data)
        else:
            assert task.status.value == "failed", (task.status, task.output_data)
            assert "timed out" in (task.error_message or "")
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


async def test_a_task_given_back_ahead_of_time_leaves_the_agents_current_task(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """pause_queue gives back the task waiting in a process agent's prefetch window while
    the agent runs another (waiting, its loop free): the agent's status still names the
    task it runs. It named none once the task given back had ended."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, gate_a, gate_b = tmp_path / "log", tmp_path / "gate_a", tmp_path / "gate_b"
    try:
        agent = await start_agent(rt, "a", GatedAgent, isolation="process")
        await rt.submit_task("a", input_data={"log": str(log), "gate": str(gate_a)})
        await wait_until(lambda: log.exists() and "start a" in log.read_text(), "a runs")
        b = await rt.submit_task("b", input_data={"log": str(log), "gate": str(gate_b)})
        c = await rt.submit_task("c", input_data={"log": str(log)})
        gate_a.touch()  # a ends: the agent takes b and, ahead of time, c
        await wait_until(lambda: "start b" in log.read_text(), "b runs")
        await wait_until(lambda: rt.get_task_status(c).status.value == "running", "c taken")
        await rt.pause_queue()
        await wait_until(lambda: rt.get_task_status(c).status.value == "pending", "c given back")
        assert rt.get_task_status(b).status.value == "running"
        assert rt.get_agent_status(agent).task_id == b
    finally:
        gate_b.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


@pytest.mark.parametrize("how", ["pause_queue", "pause_agent", "both"])
async def test_a_task_taken_back_while_it_runs_unseen_runs_on_and_only_once(
    make_config: MakeConfig, tmp_path: Path, how: str
) -> None:
    """The task taken ahead of time begins in the worker while the runtime is busy, and is
    still running (waiting at safe points) when a pause takes it back: the worker keeps
    it, as the agent's running task (a paused agent halts it at its next safe point), and
    it ends once, completed. It was cancelled part-way and re-queued: it ran twice. With
    the queue and the agent paused at once (``both``), the second give-back found the
    first one's reason on the run and interrupted ``c`` without asking the worker."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, release, gate_c = tmp_path / "log", tmp_path / "release", tmp_path / "gate_c"
    try:
        agent, b, c, release = await _prefetched_behind_a_loop_blocking_task(
            rt, tmp_path, {"gate": str(gate_c)}
        )
        release.touch()  # b ends in the worker, and c begins there...
        _hold_the_runtimes_loop_until(lambda: "start c" in log.read_text())
        assert rt.get_task_status(c).started_at is None  # ...unseen by the runtime yet
        if how == "pause_queue":
            await rt.pause_queue()
        elif how == "pause_agent":
            await rt.pause_agent(agent)
        else:
            await asyncio.wait_for(
                asyncio.gather(rt.pause_queue(), rt.pause_agent(agent)), WAIT_SECONDS
            )
        await rt.wait_for_task(b, timeout_seconds=WAIT_SECONDS)
        running = rt.get_task_status(c)
        assert running.status.value == "running", running.status
        assert running.assigned_agent_id == agent
        await wait_until(lambda: rt.get_task_status(c).started_at is not None, "c's start")
        assert rt.get_agent_status(agent).task_id == c
        gate_c.touch()
        if how != "pause_agent":
            await rt.resume_queue()
        if how != "pause_queue":
            assert "end c" not in log.read_text()  # halted at a safe point while paused
            await rt.resume_agent(agent)
        done = await rt.wait_for_task(c, timeout_seconds=WAIT_SECONDS)
        assert done.status.value == "completed", done.error_message
        assert _starts(log, "c") == 1, log.read_text()
    finally:
        release.touch()
        gate_c.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


def _live_of(rt: AgentRuntime, agent: str) -> Any:
    return rt.agent_book.slots[agent].host._live  # type: ignore[attr-defined]


def _run_id_of(rt: AgentRuntime, agent: str, task_id: str) -> int:
    runs: dict[int, str] = _live_of(rt, agent).runs
    [run_id] = [run for run, task in runs.items() if task == task_id]
    return run_id


def _unread(live: Any) -> bytes:
    """What the worker sent that the runtime has not read yet (peeked, left in place)."""
    fd = live.channel._transport.get_extra_info("socket").fileno()
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""
    finally:
        sock.close()


def _gone(pid: int) -> bool:
    """The process has exited (a zombie counts: its end of the socket is closed)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True


async def test_a_failure_read_just_before_pause_queue_is_not_requeued_and_run_again(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """``c`` (taken ahead of time) begins and fails in the worker unseen; the runtime reads
    its failure reply (with ``b``'s), and in that same turn of the loop, before the
    executor's worker resumes with it, the application calls pause_queue. ``c`` had begun
    and failed: its failure counts (no retries left: failed), as when pause_queue comes a
    moment earlier. It was re-queued as never begun (no attempt used), and ran, and
    failed, again."""
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, release = tmp_path / "log", tmp_path / "release"
    try:
        agent, b, c, release = await _prefetched_behind_a_loop_blocking_task(
            rt, tmp_path, {"fail": True}, c_retries=0
        )
        live = _live_of(rt, agent)
        c_reply = live.channel._pending[_run_id_of(rt, agent, c)]
        release.touch()  # b ends in the worker, and c begins and fails there...
        # ... both replies waiting, unread, in the runtime's socket:
        _hold_the_runtimes_loop_until(lambda: b"failed on purpose" in _unread(live))
        assert rt.get_task_status(c).started_at is None  # ...unseen by the runtime yet
        for _ in range(10_000):  # the runtime reads both replies (one turn of the loop)
            if c_reply.done():
                break
            await asyncio.sleep(0)
        assert c_reply.done()
        run = rt.executor._runs[c]  # type: ignore[attr-defined]
        assert not run.finished  # c is still in the window
        assert run.interrupt_reason is None
        await rt.pause_queue()  # in the turn the replies were read: takes c back
        await rt.wait_for_task(b, timeout_seconds=WAIT_SECONDS)
        await wait_until(
            lambda: rt.get_task_status(c).status.value != "running", "c's run is settled"
        )
        settled = rt.get_task_status(c)
        await rt.resume_queue()
        final = await rt.wait_for_task(c, timeout_seconds=WAIT_SECONDS)
        assert (settled.status.value, _starts(log, "c")) == ("failed", 1), (
            f"c was {settled.status.value} (retry_count {settled.retry_count}) after its "
            f"failure; it ended {final.status.value} after running {_starts(log, 'c')} times"
        )
    finally:
        release.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


async def test_a_reply_sent_before_the_worker_died_is_read_though_a_write_to_it_failed(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """``b`` completes in the worker (its reply is flushed out before ``c`` begins), then
    ``c`` (taken ahead of time) begins and the worker dies under it, while the runtime is
    busy; then pause_queue takes ``c`` back. ``b`` completed: its reply is in the
    runtime's socket. The give-back request written to the dead worker fails (EPIPE) and
    the transport drops the connection without reading what waits in it: ``b`` was failed
    as crashed ("killed ... while running the task"), its result lost, and ``c``, the task
    the worker died running, went back to the queue without an attempt counted. What
    waits is read first now."""
    status, task, events = await _c_dies_with_its_worker(
        make_config, tmp_path, "pause_queue", wait_for_the_exit=False
    )
    assert status == "failed", f"c: {status} (retry_count {task.retry_count}); {events}"
    assert "AgentCrashedError" in (task.error_message or "")


async def _c_dies_with_its_worker(
    make_config: MakeConfig, tmp_path: Path, how: str, *, wait_for_the_exit: bool
) -> tuple[str, Any, list[tuple[str, dict[str, Any]]]]:
    rt = AgentRuntime(config=_process_config(make_config, grace=30.0))
    await rt.start()
    log, release, gate_c = tmp_path / "log", tmp_path / "release", tmp_path / "gate_c"
    try:
        agent, b, c, release = await _prefetched_behind_a_loop_blocking_task(
            rt, tmp_path, {"gate": str(gate_c)}, c_retries=0
        )
        live = _live_of(rt, agent)
        pid = rt.get_agent_status(agent).process_id
        assert pid is not None
        release.touch()  # b ends in the worker, and c begins there...
        _hold_the_runtimes_loop_until(lambda: "start c" in log.read_text())
        os.kill(pid, signal.SIGKILL)  # ... and the worker dies while it runs c
        _hold_the_runtimes_loop_until(lambda: _gone(pid))
        assert _unread(live)  # b's reply waits unread
        if wait_for_the_exit:
            # The runtime's loop sees the worker's exit (and reads b's reply); the
            # application acts in the next turn, before the executor has ended b.
            for _ in range(10_000):
                if not live.process.alive:
                    break
                await asyncio.sleep(0)
            assert not live.process.alive
        executor: Any = rt.executor
        run = executor._runs[c]
        assert executor._agent_runs[agent].index(run) == 1  # c is still in the window
        if how == "pause_queue":
            await rt.pause_queue()
        else:
            with contextlib.suppress(Exception):
                await rt.stop_agent(agent, graceful=True, timeout_seconds=WAIT_SECONDS)
        finished_b = await rt.wait_for_task(b, timeout_seconds=WAIT_SECONDS)
        assert finished_b.status.value == "completed", finished_b.error_message
        await wait_until(
            lambda: rt.get_task_status(c).status.value != "running", "c's run is settled"
        )
        settled_c = rt.get_task_status(c)
        events = [(str(e.event_type), dict(e.details)) for e in await rt.query_events(task_id=c)]
        return settled_c.status.value, settled_c, events
    finally:
        release.touch()
        gate_c.touch()
        await asyncio.wait_for(rt.stop(graceful=False), 30)


@pytest.mark.parametrize("how", ["pause_queue", "stop_agent"])
async def test_a_task_its_worker_died_running_is_not_requeued_by_a_give_back(
    make_config: MakeConfig, tmp_path: Path, how: str
) -> None:
    """``c`` (taken ahead of time) begins in the worker unseen, and the worker dies
    running it; in the turn after the runtime saw the worker's exit (standard asyncio
    loop), before it has ended ``b``, the application pauses the queue (or stops the
    agent). ``c`` fails as crashed (an attempt used). The host's give-back raised (no
    running worker), the executor took that for "given back" and cancelled ``c``'s run
    before it could report the crash: ``c`` was re-queued as never begun."""
    status, task, events = await _c_dies_with_its_worker(
        make_config, tmp_path, how, wait_for_the_exit=True
    )
    assert status == "failed", (
        f"c, running when its worker died, ended {status} (retry_count {task.retry_count}, "
        f"started_at {task.started_at}); its events: {events}"
    )
    assert "AgentCrashedError" in (task.error_message or "")


def test_on_uvloop_a_task_its_worker_died_running_is_not_requeued_by_a_give_back(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """The same on uvloop (what ``miminions.run`` uses with the ``uvloop`` extra), where
    the worker's exit is handled before the give-back task first runs, with nothing
    between the worker's death and pause_queue."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status, task, events = runner.run(
            _c_dies_with_its_worker(make_config, tmp_path, "pause_queue", wait_for_the_exit=False)
        )
    assert status == "failed", (
        f"c, running when its worker died, ended {status} (retry_count {task.retry_count}, "
        f"started_at {task.started_at}); its events: {events}"
    )
