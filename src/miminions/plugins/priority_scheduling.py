"""Built-in scheduling policy: aged priority order and longest-idle agent first.

The order key is ``priority * config.aging_seconds_per_level + ready_at``: one priority level
is worth ``aging_seconds_per_level`` seconds of waiting, so a LOW task that has waited long
enough runs before newer urgent work and nothing starves (F-03). The kernel calls this
plugin's functions directly when no other plugin implements these hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.models import AgentInstance, RuntimeConfig, Task


@hookimpl(trylast=True)  # built-in policy: any other scheduling plugin wins
def miminions_order_key(priority: int, ready_at: float, config: RuntimeConfig) -> float:
    """Aged priority: smaller runs first."""
    return priority * config.aging_seconds_per_level + ready_at


@hookimpl(trylast=True)  # built-in policy: any other scheduling plugin wins
def miminions_pick_agent(task: Task, candidates: Sequence[AgentInstance]) -> str:
    """The first candidate: idle longest, among those no waiting targeted task needs
    (the executor lists candidates in that order)."""
    return candidates[0].agent_id
