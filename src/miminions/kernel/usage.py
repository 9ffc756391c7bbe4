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
from miminions.kernel.models import MAX_COUNT, UsageBudget


@dataclass
class Usage:
    """What one agent or group reported so far."""

    tokens: int = 0
    cost: float = 0.0
    tripped: bool = False
    #: The breach that tripped the breaker, and (a group's) the members it has dealt with:
    #: one that joins the group later is paused as it runs (see :meth:`UsageBook.newcomer`).
    breach: BudgetBreach | None = None
    held: set[str] = field(default_factory=set)


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
        if self.resource == "tokens":  # counts in full, not rounded to "1.23457e+06"
            what, used, budget = "token", str(int(self.used)), str(int(self.budget))
        else:
            what, used, budget = "cost", _amount(self.used), _amount(self.budget)
        return f"{self.scope} {self.name!r} spent its {what} budget ({used} of {budget})"


def _amount(value: float) -> str:
    """A cost as people write it (``2.5``, ``1234.56``): twelve significant digits, so
    neither rounded away nor showing a float sum's noise (``0.30000000000000004``)."""
    return f"{value:.12g}"


@dataclass
class UsageBook:
    """Usage totals and budgets (see the module docstring)."""

    group_budgets: dict[str, UsageBudget] = field(default_factory=dict)
    by_agent: dict[str, Usage] = field(default_factory=dict)
    by_group: dict[str, Usage] = field(default_factory=dict)
    #: The breaches whose pause an agent still owes (it was not running as the breaker
    #: tripped: stopping, stopped, paused, not started yet), by agent id.
    owed: dict[str, list[BudgetBreach]] = field(default_factory=dict)

    def owe(self, agent_id: str, breach: BudgetBreach) -> None:
        """``agent_id`` is paused for ``breach`` as it next runs (see :meth:`collect`)."""
        self.owed.setdefault(agent_id, []).append(breach)

    def collect(self, agent_id: str) -> BudgetBreach | None:
        """The breach ``agent_id``, running now, is to be paused for, if it owes one (the
        latest): a breaker trips once, and its pause is not lost on an agent that was not
        running as it tripped."""
        breaches = self.owed.pop(agent_id, None)
        return breaches[-1] if breaches else None

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

    def newcomer(self, group: str, agent_id: str) -> BudgetBreach | None:
        """The breach ``agent_id``, running now, is to be paused for as a member ``group``'s
        tripped breaker has not dealt with yet (it joined the group after the breaker
        tripped), if so; it is dealt with from then on (a resume of it runs on)."""
        usage = self.by_group.get(group)
        if usage is None or usage.breach is None or agent_id in usage.held:
            return None
        usage.held.add(agent_id)
        return usage.breach

    def reset(self, agent_id: str | None = None, group: str | None = None) -> None:
        """Zero the totals (and re-arm the breaker) of an agent, a group, or everything."""
        if agent_id is None and group is None:
            self.by_agent.clear()
            self.by_group.clear()
            self.owed.clear()
            return
        if agent_id is not None:
            self.by_agent.pop(agent_id, None)
        if group is not None:
            self.by_group.pop(group, None)
        for owing, breaches in list(self.owed.items()):
            breaches[:] = [
                b
                for b in breaches
                if not (b.scope == "agent" and b.name == agent_id)
                and not (b.scope == "group" and b.name == group)
            ]
            if not breaches:
                del self.owed[owing]


def check_usage(tokens: object, cost: object) -> tuple[int, float]:
    """Validate one report: ``tokens`` a non-negative int, ``cost`` a non-negative number."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_COUNT:
        raise ValidationError(
            f"tokens must be an integer from 0 to {MAX_COUNT}, got {shown(tokens)}"
        )
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
        usage.breach = BudgetBreach(scope, name, "tokens", usage.tokens, budget.tokens)
        return usage.breach
    # Float sums miss by the last digit: ten reports of 0.1 add up to 0.9999999999999999,
    # which reaches a budget of 1.0 all the same.
    if budget.cost is not None and (
        usage.cost >= budget.cost or math.isclose(usage.cost, budget.cost, rel_tol=1e-9)
    ):
        usage.tripped = True
        usage.breach = BudgetBreach(scope, name, "cost", usage.cost, budget.cost)
        return usage.breach
    return None
