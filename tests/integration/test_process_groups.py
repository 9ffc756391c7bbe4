"""Processes an agent's code starts go with its worker (F-14, F-20, R-02).

A worker leads its own process group, which the subprocesses its agent starts join: pausing
the agent stops them too, stopping it ends them, and what a SIGKILLed runtime left behind is
killed by the next runtime on the same database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from miminions import AgentRuntime, AgentStatus, RuntimeConfig
from miminions.testing import started_runtime
from tests.support.process_agents import SpawningAgent
from tests.support.processes import alive, proc_state
from tests.support.runtime import run_child_runtime
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

WAIT = 15.0


async def _spawner_with_child(rt: AgentRuntime) -> tuple[str, int, int]:
    """Start a spawning agent and have it start a subprocess: the agent's id, its worker's
    pid and the subprocess's pid."""
    agent_id = await rt.register_agent("spawner", SpawningAgent)
    worker = (await rt.start_agent(agent_id)).process_id
    assert worker is not None
    task = await rt.wait_for_task(await rt.submit_task("spawn", agent_id=agent_id), WAIT)
    assert task.output_data is not None, task.error_message
    child: int = task.output_data["child_pid"]
    assert alive(child)
    return agent_id, worker, child


async def test_stopping_an_agent_ends_the_processes_it_started(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    async with started_runtime(make_config(default_isolation="process")) as rt:
        agent_id, _, child = await _spawner_with_child(rt)

        await rt.stop_agent(agent_id, timeout_seconds=WAIT)

        await wait_until(lambda: not alive(child), "the agent's subprocess to end", WAIT)


async def test_a_crashed_worker_leaves_no_subprocess_behind(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    async with started_runtime(make_config(default_isolation="process")) as rt:
        _, worker, child = await _spawner_with_child(rt)

        os.kill(worker, signal.SIGKILL)

        await wait_until(lambda: not alive(child), "the crashed agent's subprocess to end", WAIT)


async def test_pausing_an_agent_stops_the_processes_it_started(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    async with started_runtime(make_config(default_isolation="process")) as rt:
        agent_id, _, child = await _spawner_with_child(rt)

        assert (await rt.pause_agent(agent_id, timeout_seconds=WAIT)).status is AgentStatus.PAUSED
        await wait_until(lambda: proc_state(child) == "T", "the subprocess to stop", WAIT)

        assert (await rt.resume_agent(agent_id)).status is AgentStatus.RUNNING
        await wait_until(lambda: proc_state(child) == "S", "the subprocess to continue", WAIT)


async def test_the_next_runtime_kills_what_a_killed_runtimes_agents_started(
    make_config: Callable[..., RuntimeConfig], db_path: Path
) -> None:
    runtime = await run_child_runtime("spawning_child", db_path)
    assert runtime.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = await runtime.stdout.readline()
        assert line, "the child runtime exited early"
        started = json.loads(line)
    finally:
        runtime.send_signal(signal.SIGKILL)
        async with asyncio.timeout(WAIT):  # to the end of its output: its workers are gone
            await runtime.communicate()
    worker, child = started["worker_pid"], started["child_pid"]
    await wait_until(lambda: not alive(worker), "the worker to die with its runtime", WAIT)
    assert alive(child)  # nothing was left to end it

    async with started_runtime(make_config(default_isolation="process")) as rt:
        # a worker start waits for the check for leftovers to finish
        await rt.start_agent(await rt.register_agent("next", SpawningAgent))
        await wait_until(lambda: not alive(child), "the orphaned subprocess to be killed", WAIT)
