"""F-08, R-03: a process agent's limits count what its subprocesses use, and a CPU limit
reached while it starts is reported as the limit.

Agents come from :mod:`tests.support.process_agents`; they run real subprocesses, which
stay in their worker's process group (and are killed with it)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    EventType,
    ResourceLimits,
    RuntimeConfig,
    TaskStatus,
)
from miminions.kernel.models import ProcessSettings, RestartPolicy
from tests.support.process_agents import StartSpinningAgent, SubprocessAgent
from tests.support.processes import alive
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

WAIT = 30.0
FAST = ProcessSettings(
    heartbeat_interval_seconds=0.2,
    heartbeat_timeout_seconds=10.0,
    cancel_grace_seconds=0.5,
    usage_interval_seconds=0.05,
)


@pytest.fixture
def config(make_config: Callable[..., RuntimeConfig]) -> Callable[..., RuntimeConfig]:
    def make(**overrides: Any) -> RuntimeConfig:
        values: dict[str, Any] = {
            "default_isolation": "process",
            "process": FAST,
            "restart": RestartPolicy(max_restarts=0),
        }
        return make_config(**{**values, **overrides})

    return make


async def test_the_memory_of_an_agents_subprocess_counts_against_its_limit(
    config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """An agent whose tool (a subprocess) holds 80 MiB is over a 60 MB limit: its worker is
    stopped, the subprocess with it, and its task fails (only the worker's own memory was
    watched: the task waited for ever)."""
    limits = ResourceLimits(max_memory_per_agent_mb=60)
    async with AgentRuntime(config=config(limits=limits)) as rt:
        agent_id = await rt.register_agent("hog", SubprocessAgent)
        await rt.start_agent(agent_id)
        held, pid_file = tmp_path / "held", tmp_path / "pid"
        task_id = await rt.submit_task(
            "tool",
            {"hold_mb": 80, "held": str(held), "pid": str(pid_file)},
            agent_id=agent_id,
        )
        task = await rt.wait_for_task(task_id, WAIT)
        assert task.status is TaskStatus.FAILED
        assert "ResourceLimitExceeded" in (task.error_message or ""), task.error_message
        [event] = await rt.query_events(event_type=EventType.RESOURCE_LIMIT_EXCEEDED)
        assert event.details["resource"] == "memory"
        child = int(pid_file.read_text())
        await wait_until(lambda: not alive(child), "the subprocess to die with its worker")


async def test_the_cpu_time_of_an_agents_subprocesses_counts_against_its_limit(
    config: Callable[..., RuntimeConfig],
) -> None:
    """Three tools of 0.8 CPU-seconds each are 2.4 s of the agent's CPU time, over its 1 s
    limit (each subprocess had an RLIMIT_CPU of its own, and the task completed)."""
    limits = ResourceLimits(max_cpu_time_per_agent_seconds=1)
    async with AgentRuntime(config=config(limits=limits)) as rt:
        agent_id = await rt.register_agent("spinner", SubprocessAgent)
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task("tools", {"spin": 3, "seconds": 0.8}, agent_id=agent_id)
        task = await rt.wait_for_task(task_id, WAIT)
        assert task.status is TaskStatus.FAILED, task.output_data
        [event] = await rt.query_events(event_type=EventType.RESOURCE_LIMIT_EXCEEDED)
        assert event.details["resource"] == "cpu"


async def test_a_cpu_limit_reached_while_starting_is_reported_as_the_limit(
    config: Callable[..., RuntimeConfig],
) -> None:
    """An on_start that spends the CPU limit fails the start with ResourceLimitExceeded and
    a resource_limit_exceeded event, whichever the runtime sees first of the closed
    connection and the worker's exit (it was a plain crash, "killed by SIGXCPU", when the
    connection came first)."""
    async with AgentRuntime(config=config()) as rt:
        for n in range(3):
            agent_id = await rt.register_agent(
                f"spinner{n}",
                StartSpinningAgent,
                limits=ResourceLimits(max_cpu_time_per_agent_seconds=1),
            )
            started = await rt.start_agent(agent_id)
            assert started.status is AgentStatus.FAILED
            assert "ResourceLimitExceeded" in (started.error_message or ""), started
        exceeded = await rt.query_events(event_type=EventType.RESOURCE_LIMIT_EXCEEDED)
        assert len(exceeded) == 3
