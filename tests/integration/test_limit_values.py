"""Limit values: checked however they were set, and applied as documented."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable

import pytest

from miminions import AgentRuntime, ResourceLimits, RuntimeConfig, UsageBudget, ValidationError
from tests.support import agents


def _set_attribute(limits: ResourceLimits) -> ResourceLimits:
    limits.task_timeout_seconds = -1
    return limits


@pytest.mark.parametrize(
    "spoil",
    [
        lambda limits: limits.model_copy(update={"task_timeout_seconds": 0}),
        _set_attribute,
    ],
    ids=["model_copy", "attribute"],
)
async def test_limits_changed_after_construction_are_checked_at_registration(
    make_config: Callable[..., RuntimeConfig],
    spoil: Callable[[ResourceLimits], ResourceLimits],
) -> None:
    """R-04: a model's attributes (and ``model_copy(update=...)``) are not validated. A
    per-agent ``task_timeout_seconds`` of 0 was taken (every task of the agent timed out at
    once) and stored, and every later runtime on the database failed to start: its
    stored agent was "malformed". It is refused at registration; the database opens."""
    limits = spoil(ResourceLimits(max_memory_per_agent_mb=512))
    async with AgentRuntime(config=make_config()) as rt:
        with pytest.raises(ValidationError, match="task_timeout_seconds"):
            await rt.register_agent("a", agents.EchoAgent, limits=limits)
    async with AgentRuntime(config=make_config()) as rt:
        assert rt.is_running


async def test_limits_changed_after_registration_change_nothing(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The agent keeps the limits it was registered with (a checked copy): changing the
    application's object later, unchecked, does not reach it."""
    limits = ResourceLimits(task_timeout_seconds=30)
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent("a", agents.EchoAgent, limits=limits)
        limits.task_timeout_seconds = -1
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("t", {"x": 1}, agent_id=agent_id), 10)
        assert task.output_data is not None
        assert task.output_data["echo"] == {"x": 1}
    async with AgentRuntime(config=make_config()) as rt:
        assert rt.is_running


def test_the_cpu_rlimit_is_the_limit_rounded_up_not_down() -> None:
    """docs/operations.md: the worker's "RLIMIT_CPU is the limit rounded up to whole
    seconds". ``int(cpu_seconds + 0.999)`` rounded 2.0004 s *down* to 2: the kernel ended
    the worker before it reached its limit, reported as over it."""
    probe = (
        "import resource\n"
        "from miminions.plugins.process_worker import _apply_limits\n"
        "_apply_limits({'max_cpu_seconds': 2.0004})\n"
        "print(resource.getrlimit(resource.RLIMIT_CPU)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert int(out.stdout) == math.ceil(2.0004), out.stdout


@pytest.mark.parametrize(
    "build",
    [
        lambda: ResourceLimits(max_memory_per_agent_mb=True),  # was a 1 MB limit
        lambda: ResourceLimits(task_timeout_seconds=True),  # was 1 s
        lambda: ResourceLimits(max_cpu_time_per_agent_seconds="5"),  # was 5 s
        lambda: UsageBudget(cost=True),
    ],
    ids=["max_memory_mb", "task_timeout", "max_cpu_time", "budget_cost"],
)
def test_a_limit_given_as_a_bool_or_a_string_is_refused(build: Callable[[], object]) -> None:
    """Numbers given as limits are strict, as the count limits, ``submit_task``'s
    ``timeout_seconds`` and ``report_usage``'s ``cost`` are: ``True`` was taken as 1
    (``max_memory_per_agent_mb=True``: every worker killed at 1 MB) and ``"5"`` as 5."""
    with pytest.raises(ValueError, match="Input should be a valid number"):
        build()


def test_a_limit_given_as_an_int_is_taken() -> None:
    """Strict numbers still take ints (a timeout of 30, not only 30.0)."""
    limits = ResourceLimits(task_timeout_seconds=30, max_memory_per_agent_mb=512)
    assert limits.task_timeout_seconds == 30.0
    assert limits.max_memory_per_agent_mb == 512.0
