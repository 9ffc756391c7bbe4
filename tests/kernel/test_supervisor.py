"""F-04: the agent state machine and the retry backoff rule."""

from __future__ import annotations

import pytest

from miminions import AgentStatus, InvalidStateError
from miminions.kernel.supervisor import (
    ALLOWED_FROM,
    TRANSITIONS,
    check_request,
    check_transition,
    group_clocks_frozen,
    retry_delay,
)

S = AgentStatus


def test_every_status_has_transitions() -> None:
    """Every status appears in the transition table."""
    assert set(TRANSITIONS) == set(AgentStatus)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.REGISTERED, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.RUNNING, S.PAUSED),
        (S.PAUSED, S.RUNNING),
        (S.RUNNING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        (S.STOPPED, S.STARTING),
        (S.FAILED, S.STARTING),
    ],
)
def test_allowed_transitions(current: AgentStatus, new: AgentStatus) -> None:
    """The documented lifecycle edges are allowed."""
    check_transition("a", current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.REGISTERED, S.RUNNING),
        (S.STOPPED, S.PAUSED),
        (S.QUEUED, S.RUNNING),
        (S.STOPPING, S.RUNNING),
    ],
)
def test_forbidden_transitions(current: AgentStatus, new: AgentStatus) -> None:
    """Shortcuts through the state machine are refused."""
    with pytest.raises(InvalidStateError, match=f"from {current.value} to {new.value}"):
        check_transition("a", current, new)


def test_requests_name_the_allowed_states() -> None:
    """A request in the wrong state says which states allow it."""
    for request, allowed in ALLOWED_FROM.items():
        for status in AgentStatus:
            if status in allowed:
                check_request("a", request, status)
            else:
                with pytest.raises(InvalidStateError, match="allowed when"):
                    check_request("a", request, status)


def test_retry_delay_doubles_up_to_the_cap() -> None:
    """F-19: exponential backoff base * 2**(n-1), capped."""
    assert [retry_delay(n, 0.5, 3.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("members", "frozen"),
    [
        ([S.PAUSED, S.PAUSED], True),
        ([S.PAUSED, S.STOPPED, S.FAILED, S.REGISTERED], True),
        ([S.PAUSED, S.RUNNING], False),
        ([S.PAUSED, S.STARTING], False),
        ([S.PAUSED, S.QUEUED], False),
        ([S.STOPPED, S.FAILED], False),
        ([], False),
    ],
)
def test_a_group_counts_as_paused_when_no_member_can_serve_it(
    members: list[AgentStatus], frozen: bool
) -> None:
    """F-25: a group's tasks' clocks stop only while some member is paused and none runs,
    starts or waits for a slot."""
    assert group_clocks_frozen(members) is frozen
