"""Lifecycle calls that hang or fail underneath a stop, a shutdown or a queued start
(F-04, F-08, F-09, F-14): a hanging ``on_resume`` or ``on_start`` never holds up
``stop_agent`` or ``rt.stop()``, a resume still queued at shutdown keeps the agent's saved
state, and a failing ``miminions_machine_load`` probe never strands queued starts."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentHookError,
    AgentRuntime,
    AgentStatus,
    EventType,
    InvalidStateError,
    ResourceLimits,
    RuntimeConfig,
    hookimpl,
)
from tests.support import agents
from tests.support.events import EventRecorder
from tests.support.lifecycle_agents import (
    RELEASE_SYNC_HOOKS,
    SYNC_HOOK_BLOCKING,
    HangingHooksAgent,
    PauseRaisesCrashedAgent,
    ResumeFailsAgent,
    SyncHangingResumeAgent,
    hook_log,
)
from tests.support.waiting import WAIT_SECONDS, wait_until

S = AgentStatus
# Long enough that only an abandoned hook, never the start timeout, ends a hanging start.
LONG_START_TIMEOUT = 120.0


@pytest.fixture(autouse=True)
def _release_sync_hooks() -> Iterator[None]:
    RELEASE_SYNC_HOOKS.clear()
    SYNC_HOOK_BLOCKING.clear()
    yield
    RELEASE_SYNC_HOOKS.set()  # the abandoned thread returns; nothing outlives the test


async def paused_agent(
    rt: AgentRuntime, log: Path, isolation: str, hang: tuple[str, ...] = ()
) -> str:
    """Register, start and pause a :class:`HangingHooksAgent` logging to ``log``."""
    agent_id = await rt.register_agent(
        "hooks",
        HangingHooksAgent,
        isolation=isolation,
        config={"log": str(log), "hang": list(hang)},
    )
    await rt.start_agent(agent_id)
    await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
    return agent_id


def hooks_run(log: Path) -> list[str]:
    return [entry[0] for entry in hook_log(log)]


async def test_a_failed_agent_keeps_no_paused_state(rt: AgentRuntime) -> None:
    """F-09, F-20: an agent failed by its on_resume drops the state on_pause returned: its
    next start is a fresh one, and a runtime restarted meanwhile does not take it for a
    paused agent (the stored record holds no state)."""
    agent_id = await rt.register_agent("resumer", ResumeFailsAgent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
    with pytest.raises(AgentHookError, match="cannot resume"):
        await rt.resume_agent(agent_id)
    assert rt.get_agent_status(agent_id).status is S.FAILED
    await rt.store.flush()
    [stored] = [a for a in await rt.store.load_agents() if a.agent_id == agent_id]
    assert stored.status is S.FAILED
    assert stored.paused_state is None


async def test_an_on_pause_raising_agent_crashed_error_is_a_hook_failure(
    rt: AgentRuntime,
) -> None:
    """F-11: an agent's own on_pause raising AgentCrashedError fails the agent like any
    raising hook (AgentHookError); only a host whose process died under the call leaves
    the agent to the crash handling. The agent is not left running yet taking no task."""
    agent_id = await rt.register_agent("odd", PauseRaisesCrashedAgent, isolation="inline")
    await rt.start_agent(agent_id)
    with pytest.raises(AgentHookError, match="on_pause failed: AgentCrashedError"):
        await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
    assert rt.get_agent_status(agent_id).status is S.FAILED


# ---------------------------------------------------------------------- hanging on_resume
async def test_stop_abandons_a_hanging_on_resume(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """F-14: stopping an agent whose ``on_resume`` never returns is bounded by the stop's
    timeout: the resume is abandoned (``resume_agent`` raises InvalidStateError) and the
    agent ends stopped, its host released."""
    log = tmp_path / "hooks.jsonl"
    config = make_config(agent_start_timeout_seconds=LONG_START_TIMEOUT)
    async with AgentRuntime(config=config) as rt:
        agent_id = await paused_agent(rt, log, isolation, hang=("resume",))
        resuming = asyncio.ensure_future(rt.resume_agent(agent_id))
        await wait_until(lambda: "resume" in hooks_run(log), "on_resume to begin")

        stopped = await asyncio.wait_for(rt.stop_agent(agent_id, timeout_seconds=0.2), WAIT_SECONDS)

        assert stopped.status is S.STOPPED
        assert stopped.process_id is None
        with pytest.raises(InvalidStateError, match=r"resume of agent .* was abandoned"):
            await asyncio.wait_for(resuming, WAIT_SECONDS)
        assert rt.get_agent_status(agent_id).status is S.STOPPED
        assert rt.get_capacity().active_agents == 0


async def test_stop_abandons_a_sync_on_resume_that_never_returns(rt: AgentRuntime) -> None:
    """F-14: a synchronous ``on_resume`` (in the agent's thread, which cannot be
    interrupted) is abandoned by a stop too."""
    agent_id = await rt.register_agent("sync", SyncHangingResumeAgent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.pause_agent(agent_id, timeout_seconds=WAIT_SECONDS)
    resuming = asyncio.ensure_future(rt.resume_agent(agent_id))
    await wait_until(SYNC_HOOK_BLOCKING.is_set, "on_resume to block")

    stopped = await asyncio.wait_for(rt.stop_agent(agent_id, timeout_seconds=0.2), WAIT_SECONDS)

    assert stopped.status is S.STOPPED
    with pytest.raises(InvalidStateError, match="abandoned"):
        await asyncio.wait_for(resuming, WAIT_SECONDS)
    RELEASE_SYNC_HOOKS.set()


async def test_shutdown_abandons_a_hanging_on_resume_and_the_agent_stays_paused(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-09, F-14: ``rt.stop()`` during a hanging ``on_resume`` is bounded by its timeout;
    the resume never completed, so the agent stays paused with the state ``on_pause``
    saved, and the next runtime resumes it with that state."""
    log = tmp_path / "hooks.jsonl"
    config = make_config(agent_start_timeout_seconds=LONG_START_TIMEOUT)
    rt = AgentRuntime(config=config)
    await rt.start()
    agent_id = await paused_agent(rt, log, "inline", hang=("resume",))
    resuming = asyncio.ensure_future(rt.resume_agent(agent_id))
    await wait_until(lambda: "resume" in hooks_run(log), "on_resume to begin")

    await asyncio.wait_for(rt.stop(timeout_seconds=0.2), WAIT_SECONDS)

    with pytest.raises(InvalidStateError, match="abandoned"):
        await asyncio.wait_for(resuming, WAIT_SECONDS)
    (saved,) = [entry[1] for entry in hook_log(log) if entry[0] == "resume"]
    async with AgentRuntime(config=config) as again:
        agent_id = await again.register_agent(
            "hooks", HangingHooksAgent, isolation="inline", config={"log": str(log)}
        )
        assert again.get_agent_status(agent_id).status is S.PAUSED
        assert (await again.resume_agent(agent_id)).status is S.RUNNING
    assert hook_log(log)[-3:] == [["start"], ["resume", saved], ["stop"]]
    assert saved["note"] == "saved by on_pause"


async def test_an_on_resume_past_the_start_timeout_fails_the_agent(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-07: ``on_resume`` has ``agent_start_timeout_seconds``, like a start: past it the
    agent is failed (its slot released) and ``resume_agent`` raises; it can start again."""
    log = tmp_path / "hooks.jsonl"
    async with AgentRuntime(config=make_config(agent_start_timeout_seconds=0.2)) as rt:
        agent_id = await paused_agent(rt, log, "inline", hang=("resume",))

        with pytest.raises(AgentHookError, match=r"on_resume did not finish within 0\.2 s"):
            await asyncio.wait_for(rt.resume_agent(agent_id), WAIT_SECONDS)

        failed = rt.get_agent_status(agent_id)
        assert failed.status is S.FAILED
        assert "on_resume did not finish" in (failed.error_message or "")
        assert rt.get_capacity().active_agents == 0
        assert (await rt.start_agent(agent_id)).status is S.RUNNING


# ---------------------------------------------------------------------- hanging on_start
async def test_stop_abandons_a_hanging_on_start(
    make_config: Callable[..., RuntimeConfig], isolation: str, tmp_path: Path
) -> None:
    """F-14: ``stop_agent`` on a ``starting`` agent is bounded by its timeout, not by
    ``agent_start_timeout_seconds``: the start is abandoned (``start_agent`` raises
    InvalidStateError) and the agent ends stopped without ``on_stop`` (its ``on_start``
    never finished). It can be started again."""
    log = tmp_path / "hooks.jsonl"
    config = make_config(agent_start_timeout_seconds=LONG_START_TIMEOUT)
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(
            "hooks",
            HangingHooksAgent,
            isolation=isolation,
            config={"log": str(log), "hang": ["start"]},
        )
        starting = asyncio.ensure_future(rt.start_agent(agent_id))
        await wait_until(lambda: "start" in hooks_run(log), "on_start to begin")
        assert rt.get_agent_status(agent_id).status is S.STARTING

        stopped = await asyncio.wait_for(rt.stop_agent(agent_id, timeout_seconds=0.2), WAIT_SECONDS)

        assert stopped.status is S.STOPPED
        assert stopped.process_id is None
        with pytest.raises(InvalidStateError, match=r"start of agent .* was abandoned"):
            await asyncio.wait_for(starting, WAIT_SECONDS)
        assert hooks_run(log) == ["start"]  # no on_stop
        assert rt.get_capacity().active_agents == 0

        assert (await rt.start_agent(agent_id)).status is S.RUNNING


async def test_shutdown_during_a_hanging_on_start_is_bounded(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-14: ``rt.stop(timeout_seconds=...)`` abandons a start whose ``on_start`` hangs."""
    log = tmp_path / "hooks.jsonl"
    rt = AgentRuntime(config=make_config(agent_start_timeout_seconds=LONG_START_TIMEOUT))
    await rt.start()
    agent_id = await rt.register_agent(
        "hooks", HangingHooksAgent, config={"log": str(log), "hang": ["start"]}
    )
    starting = asyncio.ensure_future(rt.start_agent(agent_id))
    await wait_until(lambda: "start" in hooks_run(log), "on_start to begin")

    await asyncio.wait_for(rt.stop(timeout_seconds=0.2), WAIT_SECONDS)

    with pytest.raises(InvalidStateError, match="abandoned"):
        await asyncio.wait_for(starting, WAIT_SECONDS)
    assert rt.get_agent_status(agent_id).status is S.STOPPED
    assert hooks_run(log) == ["start"]


# ---------------------------------------------------------------------- queued resumes
async def test_a_resume_queued_at_shutdown_keeps_the_paused_state(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-08, F-09: an agent paused before a restart whose resume waits for a slot is still
    paused, with its saved state, when the runtime stops: the next runtime resumes it with
    that state instead of starting it afresh."""
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config) as rt:
        paused = await rt.register_agent("paused", agents.RecordingAgent)
        await rt.start_agent(paused)
        await rt.pause_agent(paused)
    async with AgentRuntime(config=config) as rt:
        paused = await rt.register_agent("paused", agents.RecordingAgent)
        busy = await rt.register_agent("busy", agents.EchoAgent)
        await rt.start_agent(busy)
        assert (await rt.resume_agent(paused)).status is S.QUEUED
    agents.CALLS.clear()
    async with AgentRuntime(config=config) as rt:
        paused = await rt.register_agent("paused", agents.RecordingAgent)
        assert rt.get_agent_status(paused).status is S.PAUSED
        assert (await rt.resume_agent(paused)).status is S.RUNNING
    state = {"counter": 41, "nested": {"items": [1, "two", None, 3.5]}}
    assert agents.CALLS[:2] == [("on_start", "paused"), ("on_resume", state)]


async def test_a_queued_resume_of_an_agent_whose_worker_died_while_paused_keeps_its_state(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """F-09: a paused ``process`` agent whose worker was killed stays paused; its resume,
    queued for a slot, is still a resume at shutdown: the agent comes back paused with the
    state its ``on_pause`` saved in the dead worker."""
    log = tmp_path / "hooks.jsonl"
    recorder = EventRecorder()
    config = make_config(limits=ResourceLimits(max_concurrent_agents=1))
    async with AgentRuntime(config=config, plugins=[recorder]) as rt:
        agent_id = await paused_agent(rt, log, "process")
        pid = rt.get_agent_status(agent_id).process_id
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await recorder.wait_for(EventType.AGENT_FAILED, agent_id=agent_id, within=WAIT_SECONDS)
        assert rt.get_agent_status(agent_id).status is S.PAUSED
        busy = await rt.register_agent("busy", agents.EchoAgent)
        await rt.start_agent(busy)
        assert (await rt.resume_agent(agent_id)).status is S.QUEUED
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(
            "hooks", HangingHooksAgent, isolation="inline", config={"log": str(log)}
        )
        assert rt.get_agent_status(agent_id).status is S.PAUSED
        await rt.resume_agent(agent_id)
    resumed = [entry for entry in hook_log(log) if entry[0] == "resume"]
    assert resumed == [["resume", {"pid": pid, "note": "saved by on_pause"}]]


# ---------------------------------------------------------------------- load probe
class FlakyLoad:
    """A ``miminions_machine_load`` plugin answering ``load``, or raising while ``failing``."""

    miminions_plugin_name = "flaky_load"

    def __init__(self, load: float) -> None:
        self.load = load
        self.failing = False

    @hookimpl
    def miminions_machine_load(self) -> float:
        if self.failing:
            raise OSError("reading the cgroup's cpu.pressure failed")
        return self.load


def probe_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "miminions.lifecycle" and "miminions_machine_load" in r.getMessage()
    ]


async def test_a_failing_load_probe_counts_as_unknown_load(
    make_config: Callable[..., RuntimeConfig], caplog: pytest.LogCaptureFixture
) -> None:
    """F-08: a ``miminions_machine_load`` hook that raises does not make ``start_agent``
    raise and does not hold starts back (the load is unknown); it is logged once per run
    of failures, with its error."""
    probe = FlakyLoad(0.1)
    probe.failing = True
    config = make_config(limits=ResourceLimits(max_load_per_cpu=0.8))
    caplog.set_level(logging.INFO, logger="miminions.lifecycle")
    async with AgentRuntime(config=config, plugins=[probe]) as rt:
        for name in ("a", "b"):
            agent_id = await rt.register_agent(name, agents.EchoAgent)
            assert (await rt.start_agent(agent_id)).status is S.RUNNING
        (warning,) = probe_logs(caplog)
        assert warning.exc_info is not None
        assert isinstance(warning.exc_info[1], OSError)

        probe.failing = False
        probe.load = 5.0
        queued = await rt.register_agent("c", agents.EchoAgent)
        assert (await rt.start_agent(queued)).status is S.QUEUED
        probe.failing = True
        await rt.stop_agent(queued)
        assert (await rt.start_agent(queued)).status is S.RUNNING
        logged = [(r.levelname, r.getMessage()) for r in probe_logs(caplog)]
        assert [level for level, _ in logged] == ["WARNING", "INFO", "WARNING"]
        assert "answers again" in logged[1][1]


async def test_a_load_probe_failing_at_the_recheck_does_not_strand_queued_starts(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-08: starts queued for machine load are re-checked every second; a probe that
    raises at a re-check counts as unknown load, so they start rather than wait forever
    for a re-check nobody arms again."""
    probe = FlakyLoad(5.0)
    recorder = EventRecorder()
    config = make_config(limits=ResourceLimits(max_load_per_cpu=0.8))
    async with AgentRuntime(config=config, plugins=[probe, recorder]) as rt:
        first = await rt.register_agent("first", agents.EchoAgent)
        second = await rt.register_agent("second", agents.EchoAgent)
        assert (await rt.start_agent(first)).status is S.QUEUED
        assert (await rt.start_agent(second)).status is S.QUEUED

        probe.failing = True

        await recorder.wait_for(EventType.AGENT_STARTED, agent_id=second, within=WAIT_SECONDS)
        started: list[Any] = [e.agent_id for e in recorder.matching(EventType.AGENT_STARTED)]
        assert started == [first, second]
