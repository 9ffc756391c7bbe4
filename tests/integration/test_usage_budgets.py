"""Usage budgets (F-27): the breaker trips when a total reaches its budget, and its pause
is not lost on an agent that was not running as it tripped."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    EventType,
    ResourceLimits,
    RestartPolicy,
    RuntimeConfig,
    Task,
    UsageBudget,
)
from miminions.kernel.errors import MiminionsError
from tests.support import agents
from tests.support.waiting import wait_until


async def _paused_by_the_breaker(rt: AgentRuntime, agent_id: str, what: str) -> None:
    """Wait until the agent is paused by a circuit breaker."""
    await wait_until(
        lambda: (
            (status := rt.get_agent_status(agent_id)).status is AgentStatus.PAUSED
            and (status.status_reason or "").startswith("circuit breaker")
        ),
        what,
    )


async def test_cost_reports_adding_up_to_the_budget_trip_the_breaker(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """docs/concepts.md: "When a total reaches its budget the breaker trips". Ten reports
    of 0.1 reach a cost budget of 1.0, though their float sum is 0.9999999999999999: it
    did not trip, the agent ran on."""
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent(
            "spender",
            agents.UsageAgent,
            limits=ResourceLimits(usage_budget=UsageBudget(cost=1.0)),
        )
        await rt.start_agent(agent_id)
        for _ in range(10):
            await rt.wait_for_task(await rt.submit_task("t", {"cost": 0.1}), 10)
        status = rt.get_agent_status(agent_id)
        assert await rt.query_events(event_type=EventType.BUDGET_EXHAUSTED, agent_id=agent_id), (
            f"ten reports of 0.1 (cost_used={status.cost_used!r}) did not trip a 1.0 budget"
        )
        await wait_until(
            lambda: rt.get_agent_status(agent_id).status is AgentStatus.PAUSED,
            "the breaker's pause",
        )
        reason = rt.get_agent_status(agent_id).status_reason or ""
        assert reason.endswith("spent its cost budget (1 of 1)"), reason


async def test_budget_message_names_the_token_count_not_a_rounded_float(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A tripped token budget's status reason gives the counts in full, as the docs show
    ("(120 of 100)"): 1,234,567 of 1,000,000 read "(1.23457e+06 of 1e+06)"."""
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent(
            "spender",
            agents.UsageAgent,
            limits=ResourceLimits(usage_budget=UsageBudget(tokens=1_000_000)),
        )
        await rt.start_agent(agent_id)
        await rt.wait_for_task(await rt.submit_task("t", {"tokens": 1_234_567}), 10)
        await wait_until(
            lambda: rt.get_agent_status(agent_id).status is AgentStatus.PAUSED,
            "the breaker's pause",
        )
        reason = rt.get_agent_status(agent_id).status_reason or ""
        assert "token budget (1234567 of 1000000)" in reason, reason


class _StopSpender(BaseAgent):
    """Reports ``config["on_stop"]`` tokens from ``on_stop`` (a last LLM call summarising
    its work); each task reports ``input_data["tokens"]``."""

    async def on_stop(self) -> None:
        await self.context.report_usage(tokens=self.config.get("on_stop", 0))

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.report_usage(tokens=task.input_data.get("tokens", 0))
        return {}


async def test_a_budget_spent_while_stopping_still_holds_when_the_agent_starts_again(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-27: usage reported while the agent stops (its ``on_stop``) spends its budget: the
    breaker trips, but the agent is not running, so there is nothing to pause then. It
    is paused as it next runs (as a breaker trips once, the agent started again ran
    unchecked: 25 + 3 * 5 = 40 tokens of a 10-token budget, still running)."""
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent(
            "spender",
            _StopSpender,
            limits=ResourceLimits(usage_budget=UsageBudget(tokens=10)),
            config={"on_stop": 25},
        )
        await rt.start_agent(agent_id)
        await rt.stop_agent(agent_id)
        assert await rt.query_events(event_type=EventType.BUDGET_EXHAUSTED, agent_id=agent_id)
        assert rt.get_agent_status(agent_id).tokens_used == 25

        await rt.start_agent(agent_id)  # no reset_usage: the budget is still spent
        task_id = await rt.submit_task("t", {"tokens": 5})
        await wait_until(
            lambda: rt.get_agent_status(agent_id).status is AgentStatus.PAUSED,
            "the breaker's pause",
        )
        status = rt.get_agent_status(agent_id)
        assert status.status_reason == (
            f"circuit breaker: agent {agent_id!r} spent its token budget (25 of 10)"
        )
        assert status.tokens_used <= 30  # the task ran before the pause, or waits
        rt.reset_usage(agent_id)
        await rt.resume_agent(agent_id)
        assert (await rt.wait_for_task(task_id, 10)).output_data is not None


async def test_a_group_member_started_after_its_group_budget_is_spent_is_held(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-27: "a circuit breaker that pauses the ... group when a budget is spent". A member
    not running when the group's breaker tripped (registered, stopped, queued for a slot)
    is paused as it starts (it spent on without limit: the breaker trips once)."""
    config = make_config(group_budgets={"team": UsageBudget(tokens=10)})
    async with AgentRuntime(config=config) as rt:
        first = await rt.register_agent("first", agents.UsageAgent, group="team")
        second = await rt.register_agent("second", agents.UsageAgent, group="team")
        await rt.start_agent(first)
        await rt.wait_for_task(await rt.submit_task("t", {"tokens": 20}, agent_id=first), 10)
        await wait_until(
            lambda: rt.get_agent_status(first).status is AgentStatus.PAUSED, "the group breaker"
        )
        await rt.start_agent(second)  # the group's budget is spent and not reset
        await wait_until(
            lambda: rt.get_agent_status(second).status is AgentStatus.PAUSED,
            "the group breaker's pause of the member started later",
        )
        reason = rt.get_agent_status(second).status_reason
        assert reason == "circuit breaker: group 'team' spent its token budget (20 of 10)"


async def test_a_reset_lets_an_agent_that_owed_the_breakers_pause_run(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """``reset_usage`` re-arms the breaker and forgets the pause an agent still owed: it
    starts and runs (the pause would otherwise catch it after a reset)."""
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent(
            "spender",
            _StopSpender,
            limits=ResourceLimits(usage_budget=UsageBudget(tokens=10)),
            config={"on_stop": 25},
        )
        await rt.start_agent(agent_id)
        await rt.stop_agent(agent_id)
        rt.reset_usage(agent_id)
        await rt.start_agent(agent_id)
        await rt.wait_for_task(await rt.submit_task("t", {"tokens": 5}), 10)
        status = rt.get_agent_status(agent_id)
        assert (status.status, status.tokens_used) == (AgentStatus.RUNNING, 5)


_GATE: dict[str, asyncio.Event] = {}


class _PauseSpender(BaseAgent):
    """Reports 25 tokens from on_pause (flushing its accounting as it pauses)."""

    async def on_pause(self) -> dict[str, Any]:
        await self.context.report_usage(tokens=25)
        return {}

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.report_usage(tokens=task.input_data.get("tokens", 0))
        return {}


class _SlowStartSpender(BaseAgent):
    """Its first on_start reports 25 tokens, then waits (a model warming up); later starts
    are quick."""

    async def on_start(self) -> None:
        gate = _GATE.get("start")
        if gate is not None:
            await self.context.report_usage(tokens=25)
            await gate.wait()

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.report_usage(tokens=task.input_data.get("tokens", 0))
        return {}


class _FailingStartSpender(BaseAgent):
    """Its first on_start reports 25 tokens, then fails; later starts succeed."""

    async def on_start(self) -> None:
        if _GATE.pop("fail", None) is not None:
            await self.context.report_usage(tokens=25)
            raise RuntimeError("model failed to load")

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.report_usage(tokens=task.input_data.get("tokens", 0))
        return {}


async def test_budget_spent_by_on_pause_holds_when_the_user_resumes(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The agent's on_pause spends its budget while a user pause is in progress: the breaker
    trips, the agent ends up paused (by the user). Like the on_stop case, the breaker's
    pause is owed, so resuming it (no reset_usage) must pause it again for the breaker.
    Instead the breaker's pause is swallowed (InvalidStateError suppressed) and the resumed
    agent runs on unchecked."""
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent(
            "spender", _PauseSpender, limits=ResourceLimits(usage_budget=UsageBudget(tokens=10))
        )
        await rt.start_agent(agent_id)
        await rt.pause_agent(agent_id)
        assert await rt.query_events(event_type=EventType.BUDGET_EXHAUSTED, agent_id=agent_id)
        assert rt.get_agent_status(agent_id).tokens_used == 25
        await rt.resume_agent(agent_id)  # no reset: the budget is still spent
        await _paused_by_the_breaker(
            rt, agent_id, "the breaker's pause of the agent whose on_pause spent its budget"
        )


async def test_budget_spent_by_on_start_holds_after_a_stop_during_the_start(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """on_start spends the budget, and the agent is stopped before on_start returns (stop
    during start). The breaker's pause (queued behind the start's lock) meets a stopped
    agent: it is owed, and paid as the agent next starts (it was dropped)."""
    _GATE["start"] = asyncio.Event()
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent(
            "spender",
            _SlowStartSpender,
            limits=ResourceLimits(usage_budget=UsageBudget(tokens=10)),
        )
        starting = asyncio.ensure_future(rt.start_agent(agent_id))
        await wait_until(
            lambda: rt.get_agent_status(agent_id).tokens_used == 25, "on_start's report"
        )
        await rt.stop_agent(agent_id, graceful=False)
        with pytest.raises(MiminionsError):
            await starting
        assert rt.get_agent_status(agent_id).status is AgentStatus.STOPPED
        del _GATE["start"]
        await rt.start_agent(agent_id)  # no reset: the budget is still spent
        await _paused_by_the_breaker(rt, agent_id, "the breaker's pause of the agent started again")


async def test_budget_spent_by_a_failed_on_start_holds_on_the_next_start(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """on_start spends the budget, then fails: the agent is failed. The breaker's pause
    meets a failed agent: owed, it is paid as the agent starts again (it was dropped, and
    the agent ran on unchecked)."""
    _GATE["fail"] = asyncio.Event()
    async with AgentRuntime(config=make_config()) as rt:
        agent_id = await rt.register_agent(
            "spender",
            _FailingStartSpender,
            limits=ResourceLimits(usage_budget=UsageBudget(tokens=10)),
        )
        await rt.start_agent(agent_id)
        assert rt.get_agent_status(agent_id).status is AgentStatus.FAILED
        assert await rt.query_events(event_type=EventType.BUDGET_EXHAUSTED, agent_id=agent_id)
        await rt.start_agent(agent_id)
        await _paused_by_the_breaker(
            rt, agent_id, "the breaker's pause of the agent started again after its failed start"
        )


class _SpendThenHang(BaseAgent):
    """Reports input_data["tokens"], then (input_data["hang"]) waits without a safe point."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.report_usage(tokens=task.input_data.get("tokens", 0))
        if task.input_data.get("hang"):
            await asyncio.Event().wait()
        return {}


@pytest.mark.slow
async def test_budget_spent_before_a_crash_holds_after_the_restart(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A process agent's task spends its budget; the breaker's pause waits for a safe point
    the task never reaches, and the worker dies meanwhile (killed: OOM killer, segfault).
    The pause fails with the host's end (suppressed), the crash path restarts the agent,
    and the restarted agent runs on unchecked: the breaker tripped once and never paused
    it, nothing is owed."""
    config = make_config(restart=RestartPolicy(backoff_base_seconds=0.01))
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(
            "spender",
            _SpendThenHang,
            limits=ResourceLimits(usage_budget=UsageBudget(tokens=10)),
            isolation="process",
        )
        await rt.start_agent(agent_id)
        pid = rt.get_agent_status(agent_id).process_id
        assert pid
        await rt.submit_task("t", {"tokens": 25, "hang": True}, max_retries=0)
        await wait_until(
            lambda: rt.get_agent_status(agent_id).tokens_used == 25, "the task's report"
        )
        assert await wait_until(
            lambda: rt.query_events(event_type=EventType.BUDGET_EXHAUSTED, agent_id=agent_id),
            "the breaker",
        )
        slot = rt.agent_book.get(agent_id)
        await wait_until(
            lambda: slot.call == "pause", "the breaker's pause, waiting for a safe point"
        )
        os.kill(pid, signal.SIGKILL)
        await wait_until(
            lambda: (
                rt.get_agent_status(agent_id).restart_count >= 1
                and rt.get_agent_status(agent_id).status
                in (AgentStatus.RUNNING, AgentStatus.PAUSED)
            ),
            "the restart",
            within=15.0,
        )
        # no reset_usage: the budget is still spent, the breaker never paused the agent
        await _paused_by_the_breaker(rt, agent_id, "the breaker's pause of the restarted agent")


async def test_a_member_that_joins_a_group_after_its_budget_is_spent_is_held(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The group's budget is spent and not reset; an agent registered into the group after
    the breaker tripped (the application scaling the team up) starts and spends on with no
    limit: the owed pause covers only the members the group had as it tripped, and the
    breaker trips once. Its spending even adds to the spent group's total."""
    config = make_config(group_budgets={"team": UsageBudget(tokens=10)})
    async with AgentRuntime(config=config) as rt:
        first = await rt.register_agent("first", agents.UsageAgent, group="team")
        await rt.start_agent(first)
        await rt.wait_for_task(await rt.submit_task("t", {"tokens": 20}, agent_id=first), 10)
        await wait_until(
            lambda: rt.get_agent_status(first).status is AgentStatus.PAUSED, "the group breaker"
        )
        late = await rt.register_agent("late", agents.UsageAgent, group="team")
        await rt.start_agent(late)  # the group's budget is spent and not reset
        await rt.submit_task("t", {"tokens": 1000}, agent_id=late)
        await _paused_by_the_breaker(
            rt, late, "the group breaker's pause of the member that joined after it tripped"
        )
