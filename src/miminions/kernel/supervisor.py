"""The agent state machine and the retry backoff rule. Pure rules: no I/O, no asyncio.

::

    registered ──start──▶ starting ──ok──▶ running ◀──resume── paused
        │                  ▲   │            │   │                 │
        └──(no slot)──▶ queued  └─error─▶ failed  └──pause──────────┘
                                             ▲
    running / paused / starting ──stop──▶ stopping ──▶ stopped ──start──▶ …

``queued`` means a start request waits for a free agent slot (``max_concurrent_agents``).
A stopped or failed agent can be started again.
"""

from __future__ import annotations

from collections.abc import Iterable

from miminions.kernel.errors import InvalidStateError
from miminions.kernel.models import AgentStatus

S = AgentStatus

TRANSITIONS: dict[AgentStatus, frozenset[AgentStatus]] = {
    S.REGISTERED: frozenset({S.QUEUED, S.STARTING, S.PAUSED, S.STOPPED}),
    S.QUEUED: frozenset({S.STARTING, S.STOPPED, S.PAUSED}),
    S.STARTING: frozenset({S.RUNNING, S.FAILED, S.STOPPING, S.PAUSED}),
    S.RUNNING: frozenset({S.PAUSED, S.STOPPING, S.FAILED}),
    # PAUSED -> STOPPED: an agent that came back paused after a restart was never started
    # in this run, so stopping it has nothing to wind down.
    S.PAUSED: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.FAILED, S.QUEUED, S.STARTING}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset({S.QUEUED, S.STARTING}),
    S.FAILED: frozenset({S.QUEUED, S.STARTING, S.STOPPED}),
}

# Agents in these states hold one of the max_concurrent_agents slots.
ACTIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING})

# Members in these states serve (or are about to serve) the tasks targeted at their group.
_SERVING_STATES = frozenset({S.QUEUED, S.STARTING, S.RUNNING})


def group_clocks_frozen(member_statuses: Iterable[AgentStatus]) -> bool:
    """Whether a group counts as paused for its tasks' clocks (F-25): some member is
    paused and none is running, starting or waiting to start. Then nothing can run the
    tasks targeted at the group, so their retry backoffs stop counting."""
    paused = False
    for status in member_statuses:
        if status in _SERVING_STATES:
            return False
        paused = paused or status is S.PAUSED
    return paused


# What the user can ask for, and the states it is allowed from.
ALLOWED_FROM: dict[str, frozenset[AgentStatus]] = {
    "start": frozenset({S.REGISTERED, S.STOPPED, S.FAILED}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED}),
    "stop": frozenset({S.QUEUED, S.STARTING, S.RUNNING, S.PAUSED}),
}


def check_transition(agent_id: str, current: AgentStatus, new: AgentStatus) -> None:
    """Raise :class:`InvalidStateError` if the state machine has no edge current -> new."""
    if new not in TRANSITIONS[current]:
        raise InvalidStateError(f"agent {agent_id!r} cannot go from {current.value} to {new.value}")


def check_request(agent_id: str, request: str, current: AgentStatus) -> None:
    """Raise a clear :class:`InvalidStateError` if ``request`` is not allowed now."""
    allowed = ALLOWED_FROM[request]
    if current not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise InvalidStateError(
            f"cannot {request} agent {agent_id!r}: it is {current.value} (allowed when {names})"
        )


def retry_delay(attempt: int, base: float, cap: float) -> float:
    """Backoff before retry number ``attempt`` (1-based): ``base * 2 ** (attempt - 1)``."""
    exponent = min(max(attempt - 1, 0), 64)  # past 2**64 the cap has long applied
    return float(min(base * 2**exponent, cap))
