"""Lifecycle edges found by review: group stops of members waiting to restart, and the
pause state an abandoned ``on_resume`` got."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    ResourceLimits,
    RestartPolicy,
    RuntimeConfig,
    Task,
    TaskStatus,
    WaitTimeoutError,
)
from miminions.testing import started_runtime
from tests.support.process_agents import GatedSlowPauseAgent
from tests.support.waiting import WAIT_SECONDS, wait_until

S = AgentStatus
RESUMED: list[Any] = []


class IdleAgent(BaseAgent):
    """Completes every task at once."""

    async def execute_task(self, task: Task) -> Any:
        return {}


class CancellingHookAgent(BaseAgent):
    """Its lifecycle hook named in its config's ``hook`` raises CancelledError nobody asked
    for (it awaits a future another part of the program cancelled)."""

    async def _maybe(self, hook: str) -> None:
        if self.config.get("hook") == hook:
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled

    async def on_start(self) -> None:
        await self._maybe("on_start")

    async def on_pause(self) -> dict[str, Any]:
        await self._maybe("on_pause")
        return {}

    async def on_stop(self) -> None:
        await self._maybe("on_stop")

    async def execute_task(self, task: Task) -> Any:
        return {}


class SyncCountingAgent:
    """A plain ``def execute_task`` counting the calls running at once (``peak``); a task
    named ``block`` waits for ``release``."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.release = threading.Event()

    def execute_task(self, task: Task) -> Any:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if task.name == "block":
                self.release.wait(WAIT_SECONDS)
            return {"ok": task.name}
        finally:
            self.active -= 1


class FanOutAgent(BaseAgent):
    """A task that works in two concurrent branches (``asyncio.gather``), each reaching a
    safe point every 5 ms; ``started`` is set once it runs."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.steps = 0

    async def _branch(self) -> None:
        while self.steps < 100_000:
            await self.context.checkpoint()
            self.steps += 1
            await asyncio.sleep(0.005)

    async def execute_task(self, task: Task) -> Any:
        self.started.set()
        await asyncio.gather(self._branch(), self._branch())
        return {"steps": self.steps}


START_FAILS = {"on": False}


class FlakyStartAgent(BaseAgent):
    """``on_start`` raises while ``START_FAILS["on"]``."""

    async def on_start(self) -> None:
        if START_FAILS["on"]:
            raise RuntimeError("service still down")

    async def execute_task(self, task: Task) -> Any:
        return {}


class MutatingResumeAgent(BaseAgent):
    """``on_pause`` returns ``{"counter": 41}``; ``on_resume`` changes what it gets, records
    it, and never finishes (a shutdown abandons it)."""

    async def execute_task(self, task: Task) -> Any:
        return {}

    async def on_pause(self) -> dict[str, Any]:
        return {"counter": 41}

    async def on_resume(self, state: dict[str, Any]) -> None:
        state["counter"] += 1
        RESUMED.append(state)
        await asyncio.Event().wait()


async def test_stop_group_stops_a_member_waiting_to_restart(
    miminions_config: RuntimeConfig,
) -> None:
    """A member that crashed and waits out its restart backoff is stopped by stop_group
    (its restart cancelled) like any other member, not left to come back running."""
    config = miminions_config.model_copy(
        update={"restart": RestartPolicy(backoff_base_seconds=30, backoff_max_seconds=30)}
    )
    async with AgentRuntime(config=config) as rt:
        a = await rt.register_agent("a", IdleAgent, group="g")
        b = await rt.register_agent("b", IdleAgent, group="g")
        await rt.start_group("g")
        rt.report_host_failure(a, "worker died")
        await wait_until(lambda: rt.agent_book.get(a).restart_timer is not None, "a restart")
        stopped = await rt.stop_group("g")
        assert [agent.agent_id for agent in stopped] == [a, b]
        assert [x.status for x in rt.list_agents(group="g")] == [AgentStatus.STOPPED] * 2
        assert rt.agent_book.get(a).restart_timer is None


async def test_on_resume_gets_a_copy_of_the_stored_pause_state(
    miminions_config: RuntimeConfig,
) -> None:
    """F-09: what on_pause returned is handed back unchanged, also after an on_resume that
    changed what it got and was abandoned by the runtime's stop."""
    RESUMED.clear()
    config = miminions_config.model_copy(update={"shutdown_timeout_seconds": 0.2})
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent("m", MutatingResumeAgent)
        await rt.start_agent(agent_id)
        await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
        resuming = asyncio.ensure_future(rt.resume_agent(agent_id))
        await wait_until(lambda: RESUMED, "on_resume to begin")
        await rt.stop(timeout_seconds=0.2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(resuming, WAIT_SECONDS)
    assert RESUMED == [{"counter": 42}]
    async with AgentRuntime(config=config) as again:
        agent_id = await again.register_agent("m", MutatingResumeAgent)
        assert again.get_agent_status(agent_id).status is AgentStatus.PAUSED
        assert again.agent_book.get(agent_id).paused_state == {"counter": 41}


async def test_a_restart_that_queued_and_failed_to_start_is_tried_again(
    miminions_config: RuntimeConfig,
) -> None:
    """A restart that had to wait for a free slot and then failed to start counts as a
    crash like any failed restart: once the cause passes, the policy restarts it again."""
    config = miminions_config.model_copy(
        update={
            "limits": ResourceLimits(max_concurrent_agents=1),
            "restart": RestartPolicy(backoff_base_seconds=0.05, backoff_max_seconds=0.05),
        }
    )
    START_FAILS["on"] = False
    try:
        async with AgentRuntime(config=config) as rt:
            a = await rt.register_agent("a", FlakyStartAgent)
            b = await rt.register_agent("b", FlakyStartAgent)
            await rt.start_agent(a)
            rt.report_host_failure(a, "worker died")
            await rt.start_agent(b)  # takes the only slot before a's restart is due
            await wait_until(lambda: rt.get_agent_status(a).status is S.QUEUED, "a queued")
            START_FAILS["on"] = True
            await rt.stop_agent(b)  # a's queued restart starts now, and fails
            await wait_until(lambda: rt.get_agent_status(a).status is S.FAILED, "a failed")
            START_FAILS["on"] = False  # the cause passed
            await wait_until(lambda: rt.get_agent_status(a).status is S.RUNNING, "a restarted")
    finally:
        START_FAILS["on"] = False


async def test_a_sync_agent_runs_one_call_at_a_time_across_a_stop_and_start(
    rt: AgentRuntime,
) -> None:
    """A sync call abandoned by a stop (it ignores cancellation) still runs; after the
    agent starts again its next call waits behind it instead of running beside it."""
    agent = SyncCountingAgent()
    agent_id = await rt.register_agent("sync", agent)
    await rt.start_agent(agent_id)
    try:
        await rt.submit_task("block", agent_id=agent_id)
        await wait_until(lambda: agent.active == 1, "the blocking call to begin")
        await rt.stop_agent(agent_id, timeout_seconds=0.1)  # abandons the blocked call
        await rt.start_agent(agent_id)
        second = await rt.submit_task("second", agent_id=agent_id)
        # internal: the agent's thread, where the second call waits when it is queued
        runner = rt.agent_book.get(agent_id).host._runner  # type: ignore[attr-defined]
        await wait_until(
            lambda: (
                agent.active == 2
                or (runner._thread is not None and runner._thread._calls.qsize() == 1)
            ),
            "the second call to run beside the first or to wait behind it",
        )
    finally:
        agent.release.set()
    assert (await rt.wait_for_task(second, WAIT_SECONDS)).status is TaskStatus.COMPLETED
    assert agent.peak == 1


async def test_a_pause_halts_a_task_whose_safe_points_are_in_coroutines_it_started(
    rt: AgentRuntime,
) -> None:
    """A task that works in coroutines of its own (asyncio.gather) halts at their safe
    points: the pause completes (it used to wait for ever), and the task goes on after
    the resume."""
    agent = FanOutAgent()
    agent_id = await rt.register_agent("fan-out", agent)
    await rt.start_agent(agent_id)
    task_id = await rt.submit_task("fan", agent_id=agent_id)
    await asyncio.wait_for(agent.started.wait(), WAIT_SECONDS)
    await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
    assert rt.get_task_status(task_id).status is TaskStatus.RUNNING
    halted_at = agent.steps
    await rt.resume_agent(agent_id)
    await wait_until(lambda: agent.steps > halted_at + 2, "the task to go on")
    await rt.stop_agent(agent_id, graceful=False)


class SlowPauseAgent(BaseAgent):
    """Its ``on_pause`` waits for ``release``, which only the test sets."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def execute_task(self, task: Task) -> Any:
        return {"done": task.name}

    async def on_pause(self) -> dict[str, Any]:
        await self.release.wait()
        return {}


async def test_a_pause_whose_on_pause_outlasts_its_timeout_is_abandoned(
    rt: AgentRuntime,
) -> None:
    """The pause timeout bounds ``on_pause`` too: the error says so (not only "no safe
    point"), and the agent keeps running and taking tasks."""
    agent_id = await rt.register_agent("slow-pause", SlowPauseAgent, isolation="inline")
    await rt.start_agent(agent_id)
    with pytest.raises(WaitTimeoutError, match="on_pause did not return") as caught:
        await rt.pause_agent(agent_id, timeout_seconds=0.05)
    assert "keeps running" in str(caught.value)
    assert rt.get_agent_status(agent_id).status is S.RUNNING
    task = await rt.wait_for_task(await rt.submit_task("after"), timeout_seconds=WAIT_SECONDS)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == {"done": "after"}


class BackgroundLoopAgent(BaseAgent):
    """Starts a loop in ``on_start`` (a poller): each step, when the test allows it, is a
    context call, a safe point."""

    def __init__(self) -> None:
        self.step = asyncio.Event()
        self.loop: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        self.loop = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        n = 0
        while True:
            await self.step.wait()
            self.step.clear()
            n += 1
            await self.context.kv.set("polled", n)

    async def execute_task(self, task: Task) -> Any:
        return {}

    async def on_stop(self) -> None:
        if self.loop is not None:
            self.loop.cancel()


async def test_code_a_hook_started_halts_at_its_safe_points_while_paused(
    rt: AgentRuntime,
) -> None:
    """Lifecycle hooks' own context calls pass the pause gate; a loop on_start started does
    not once on_start has returned: while the agent is paused its next context call waits
    for the resume."""
    agent_id = await rt.register_agent("poller", BackgroundLoopAgent, isolation="inline")
    await rt.start_agent(agent_id)
    agent = rt.agent_book.get(agent_id).host._runner._agent  # type: ignore[attr-defined]
    agent.step.set()
    await wait_until(lambda: rt.kv.get("polled") == 1, "the first poll")
    await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
    agent.step.set()
    for _ in range(50):  # far more loop turns than the step takes when nothing holds it
        await asyncio.sleep(0)
    assert rt.kv.get("polled") == 1  # held at its safe point
    await rt.resume_agent(agent_id)
    await wait_until(lambda: rt.kv.get("polled") == 2, "the poll after the resume")


class SlowPausePoller(BackgroundLoopAgent):
    """The poller, whose ``on_pause`` waits for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.in_pause = asyncio.Event()
        self.let_pause = asyncio.Event()

    async def on_pause(self) -> dict[str, Any]:
        self.in_pause.set()
        await self.let_pause.wait()
        return {}


async def test_code_a_hook_started_stays_halted_while_another_hook_runs(
    rt: AgentRuntime,
) -> None:
    """While on_pause runs, its own context calls pass the gate, but not those of a loop
    on_start started: that one is held until the resume."""
    agent_id = await rt.register_agent("slow-pauser", SlowPausePoller, isolation="inline")
    await rt.start_agent(agent_id)
    agent = rt.agent_book.get(agent_id).host._runner._agent  # type: ignore[attr-defined]
    agent.step.set()
    await wait_until(lambda: rt.kv.get("polled") == 1, "the first poll")
    pausing = asyncio.ensure_future(rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS))
    await asyncio.wait_for(agent.in_pause.wait(), WAIT_SECONDS)
    agent.step.set()
    for _ in range(50):  # far more loop turns than the step takes when nothing holds it
        await asyncio.sleep(0)
    assert rt.kv.get("polled") == 1  # held, although on_pause is running
    agent.let_pause.set()
    assert (await pausing).status is S.PAUSED
    await rt.resume_agent(agent_id)
    await wait_until(lambda: rt.kv.get("polled") == 2, "the poll after the resume")


async def test_an_on_start_raising_cancelled_error_itself_fails_the_agent(
    make_config: Any,
) -> None:
    """An inline agent whose on_start raises CancelledError nobody asked for fails to
    start (agent_failed), like one whose on_start raises anything else. start_agent said
    the start was "abandoned because the agent is being stopped" (no stop was asked), and
    the agent stayed starting for good."""
    async with AgentRuntime(config=make_config()) as rt:
        agent = await rt.register_agent(
            "k", CancellingHookAgent, isolation="inline", config={"hook": "on_start"}
        )
        await rt.start_agent(agent)
        assert rt.get_agent_status(agent).status is S.FAILED
        [failed] = await rt.query_events(event_type="agent_failed", agent_id=agent)
        assert "failed to start" in failed.details["error"]
        assert "CancelledError" in failed.details["error"]


async def test_an_on_stop_raising_cancelled_error_itself_still_stops_the_agent(
    make_config: Any,
) -> None:
    """An inline agent whose on_stop raises CancelledError nobody asked for is stopped,
    with an agent_error event, like one whose on_stop raises anything else. stop_agent
    raised the bare CancelledError into its caller, and the agent stayed stopping."""
    async with AgentRuntime(config=make_config()) as rt:
        agent = await rt.register_agent(
            "k", CancellingHookAgent, isolation="inline", config={"hook": "on_stop"}
        )
        await rt.start_agent(agent)
        await rt.stop_agent(agent)
        assert rt.get_agent_status(agent).status is S.STOPPED
        errors = await rt.query_events(event_type="agent_error", agent_id=agent)
        assert any("on_stop failed" in str(e.details.get("error")) for e in errors)


class HangingOnStopAgent(BaseAgent):
    """Its on_stop never returns (or raises TimeoutError itself, with ``config["raise"]``)."""

    async def on_stop(self) -> None:
        if self.config.get("raise"):
            raise TimeoutError("the upstream API timed out")
        await asyncio.Event().wait()

    async def execute_task(self, task: Task) -> None:
        return None


@pytest.mark.parametrize("raises", [False, True], ids=["past-the-timeout", "raises-timeout"])
async def test_an_on_stop_cut_off_by_the_stop_timeout_is_reported_as_such(
    rt: AgentRuntime, raises: bool, isolation: str
) -> None:
    """An on_stop that runs past stop_agent's timeout is reported as not having finished
    within it, as a slow on_start is ("on_stop failed: TimeoutError" looked like the hook
    raising TimeoutError itself, which is still reported as its failure)."""
    agent = await rt.register_agent(
        "hanging", HangingOnStopAgent, isolation=isolation, config={"raise": raises}
    )
    await rt.start_agent(agent)
    assert (await rt.stop_agent(agent, timeout_seconds=0.2)).status is S.STOPPED
    [error] = await rt.query_events(event_type="agent_error", agent_id=agent)
    expected = (
        "on_stop failed: TimeoutError: the upstream API timed out"
        if raises
        else "on_stop did not finish within 0.2 s"
    )
    assert error.details["error"] == expected


class SlowOnErrorAgent(BaseAgent):
    """Every task fails; its on_error waits for ``release`` before it ends, and every hook
    is noted in ``log``."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.in_error = asyncio.Event()
        self.release = asyncio.Event()

    async def on_pause(self) -> dict[str, Any]:
        self.log.append("on_pause")
        return {}

    async def on_stop(self) -> None:
        self.log.append("on_stop")

    async def on_error(self, error: BaseException, task: Any) -> None:
        self.log.append("on_error begins")
        self.in_error.set()
        await self.release.wait()
        self.log.append("on_error ends")

    async def execute_task(self, task: Task) -> Any:
        raise RuntimeError("boom")


async def _in_on_error(rt: AgentRuntime) -> tuple[str, SlowOnErrorAgent]:
    agent = SlowOnErrorAgent()
    agent_id = await rt.register_agent("slow-error", agent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.submit_task("fails", agent_id=agent_id)
    await asyncio.wait_for(agent.in_error.wait(), WAIT_SECONDS)
    return agent_id, agent


async def test_a_stop_waits_for_on_error_before_on_stop(rt: AgentRuntime) -> None:
    """A graceful stop lets an on_error in progress end before on_stop runs (on_stop ran
    beside it, and on_error went on in a stopped agent)."""
    agent_id, agent = await _in_on_error(rt)
    stopping = asyncio.ensure_future(rt.stop_agent(agent_id, timeout_seconds=WAIT_SECONDS))
    await wait_until(lambda: rt.get_agent_status(agent_id).status is S.STOPPING)
    assert agent.log == ["on_error begins"]  # on_stop waits
    agent.release.set()
    assert (await asyncio.wait_for(stopping, WAIT_SECONDS)).status is S.STOPPED
    assert agent.log == ["on_error begins", "on_error ends", "on_stop"]


async def test_a_pause_waits_for_on_error(rt: AgentRuntime) -> None:
    """A pause waits for an on_error in progress (a paused agent runs none of its code):
    past its timeout it is abandoned, the agent running; once on_error ended it pauses
    (it paused at once, on_pause running beside on_error)."""
    agent_id, agent = await _in_on_error(rt)
    with pytest.raises(WaitTimeoutError):
        await rt.pause_agent(agent_id, timeout_seconds=0.1)
    assert rt.get_agent_status(agent_id).status is S.RUNNING
    assert agent.log == ["on_error begins"]
    agent.release.set()
    await wait_until(lambda: "on_error ends" in agent.log)
    assert (await rt.pause_agent(agent_id)).status is S.PAUSED
    assert agent.log == ["on_error begins", "on_error ends", "on_pause"]
    await rt.resume_agent(agent_id)


class SyncHooksAgent:
    """Synchronous hooks: ``on_stop`` blocks until ``release``; each hook notes the thread
    it ran in and whether another hook of the agent was running meanwhile."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.calls: list[tuple[str, int, bool]] = []

    def _enter(self, hook: str) -> None:
        self.calls.append((hook, threading.get_ident(), self.running > 0))
        self.running += 1

    def on_start(self) -> None:
        self._enter("on_start")
        self.running -= 1

    def on_stop(self) -> None:
        self._enter("on_stop")
        try:
            self.release.wait(WAIT_SECONDS)
        finally:
            self.running -= 1

    def execute_task(self, task: Task) -> None:
        return None


async def test_a_sync_hook_abandoned_by_a_stop_delays_the_next_start(rt: AgentRuntime) -> None:
    """A synchronous on_stop abandoned by the stop's timeout still runs in the agent's
    thread; the next start's on_start waits behind it in that thread (it ran at once in a
    new thread, beside it: sync code runs one call at a time, across starts too)."""
    agent = SyncHooksAgent()
    agent_id = await rt.register_agent("sync-hooks", agent)
    await rt.start_agent(agent_id)
    try:
        assert (await rt.stop_agent(agent_id, timeout_seconds=0.1)).status is S.STOPPED
        starting = asyncio.ensure_future(rt.start_agent(agent_id))
    finally:
        agent.release.set()
    assert (await asyncio.wait_for(starting, WAIT_SECONDS)).status is S.RUNNING
    _, (_, stop_thread, _), (hook, start_thread, overlapped) = agent.calls
    assert hook == "on_start"
    assert start_thread == stop_thread  # behind the abandoned on_stop, in its thread
    assert not overlapped


async def test_a_task_timeout_does_not_count_while_on_pause_runs(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """F-25: once the running task halted at its safe point for a pause, its timeout stops
    counting, also while ``on_pause`` runs (it used to count until on_pause returned: a
    slow on_pause timed the halted task out)."""
    log, gate = tmp_path / "log", tmp_path / "gate"
    async with started_runtime(make_config(default_isolation=isolation)) as rt:
        agent_id = await rt.register_agent(
            "slow-pause", GatedSlowPauseAgent, config={"pause_seconds": 1.5}
        )
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task(
            "work", {"log": str(log), "gate": str(gate)}, timeout_seconds=1.0
        )
        await wait_until(lambda: log.exists(), "the task to begin")
        # The task is at its safe point at once; on_pause then outlasts its whole timeout.
        await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
        gate.touch()
        await rt.resume_agent(agent_id)
        task = await rt.wait_for_task(task_id, WAIT_SECONDS)
        assert task.status is TaskStatus.COMPLETED, task.error_message


async def test_an_abandoned_pause_lets_the_halted_task_time_out(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """F-25: a pause given up (its on_pause outlasted the pause's timeout) gives the halted
    task its clock back: the task, whose gate never opens, times out as if never paused."""
    log, gate = tmp_path / "log", tmp_path / "gate"
    async with started_runtime(make_config(default_isolation=isolation)) as rt:
        agent_id = await rt.register_agent(
            "slow-pause", GatedSlowPauseAgent, config={"pause_seconds": WAIT_SECONDS}
        )
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task(
            "work", {"log": str(log), "gate": str(gate)}, timeout_seconds=1.0
        )
        await wait_until(lambda: log.exists(), "the task to begin")
        with pytest.raises(WaitTimeoutError):
            await rt.pause_agent(agent_id, timeout_seconds=0.2)
        task = await rt.wait_for_task(task_id, WAIT_SECONDS)
        assert task.status is TaskStatus.FAILED
        assert (task.error_message or "").startswith("TaskTimeoutError"), task.error_message
        gate.touch()
