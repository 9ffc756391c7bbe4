"""Self-reported usage (LLM tokens, cost) and the budgets that trip a circuit breaker (F-27).

Agents report what they consumed with ``await context.report_usage(tokens=..., cost=...)``.
Totals are kept per agent and per group. When a total reaches its budget the breaker trips
once: the runtime pauses the agent (an agent budget) or the whole group (a group budget)
and records BUDGET_EXHAUSTED. It trips once: an agent resumed while still over budget is
not paused again until the totals are reset with ``rt.reset_usage(...)`` (which re-arms
the breaker). Pure bookkeeping: no I/O, no asyncio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from miminions.kernel.errors import ValidationError, shown
from miminions.kernel.models import UsageBudget


@dataclass
class Usage:
    """What one agent or group reported so far."""

    tokens: int = 0
    cost: float = 0.0
    tripped: bool = False


@dataclass(frozen=True)
class BudgetBreach:
    """A budget that was just spent: whose (``scope`` is ``agent`` or ``group``), which."""

    scope: str
    name: str
    resource: str
    used: float
    budget: float

    @property
    def message(self) -> str:
        """One sentence for the event and the agent's status."""
        what = "token" if self.resource == "tokens" else "cost"
        return (
            f"{self.scope} {self.name!r} spent its {what} budget ({self.used:g} of {self.budget:g})"
        )


@dataclass
class UsageBook:
    """Usage totals and budgets (see the module docstring)."""

    group_budgets: dict[str, UsageBudget] = field(default_factory=dict)
    by_agent: dict[str, Usage] = field(default_factory=dict)
    by_group: dict[str, Usage] = field(default_factory=dict)

    def record(
        self,
        agent_id: str,
        group: str | None,
        tokens: int,
        cost: float,
        agent_budget: UsageBudget | None,
    ) -> list[BudgetBreach]:
        """Add a report; return the budgets it spent (each trips only once)."""
        tokens, cost = check_usage(tokens, cost)
        breaches = []
        own = self.by_agent.setdefault(agent_id, Usage())
        breach = _add(own, tokens, cost, agent_budget, "agent", agent_id)
        if breach is not None:
            breaches.append(breach)
        if group is not None:
            total = self.by_group.setdefault(group, Usage())
            breach = _add(total, tokens, cost, self.group_budgets.get(group), "group", group)
            if breach is not None:
                breaches.append(breach)
        return breaches

    def reset(self, agent_id: str | None = None, group: str | None = None) -> None:
        """Zero the totals (and re-arm the breaker) of an agent, a group, or everything."""
        if agent_id is None and group is None:
            self.by_agent.clear()
            self.by_group.clear()
            return
        if agent_id is not None:
            self.by_agent.pop(agent_id, None)
        if group is not None:
            self.by_group.pop(group, None)


def check_usage(tokens: object, cost: object) -> tuple[int, float]:
    """Validate one report: ``tokens`` a non-negative int, ``cost`` a non-negative number."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValidationError(f"tokens must be a non-negative integer, got {shown(tokens)}")
    if (
        isinstance(cost, bool)
        or not isinstance(cost, (int, float))
        or cost < 0
        or not math.isfinite(cost)
    ):
        raise ValidationError(f"cost must be a non-negative finite number, got {shown(cost)}")
    return tokens, float(cost)


def _add(
    usage: Usage,
    tokens: int,
    cost: float,
    budget: UsageBudget | None,
    scope: str,
    name: str,
) -> BudgetBreach | None:
    usage.tokens += tokens
    usage.cost += cost
    if budget is None or usage.tripped:
        return None
    if budget.tokens is not None and usage.tokens >= budget.tokens:
        usage.tripped = True
        return BudgetBreach(scope, name, "tokens", usage.tokens, budget.tokens)
    if budget.cost is not None and usage.cost >= budget.cost:
        usage.tripped = True
        return BudgetBreach(scope, name, "cost", usage.cost, budget.cost)
    return None
