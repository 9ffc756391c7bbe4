"""The scheduler with a custom order key that raises: every operation is all or nothing.

A key function is called in the middle of operations (a task becoming ready, a priority
inherited or withdrawn). When it raises, the operation must raise and leave the scheduler
exactly as it was, so the caller's own bookkeeping (which is not updated on an error) still
matches it, and the scheduler goes on working once the key answers again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from miminions.kernel.models import Priority
from miminions.kernel.scheduler import ANY_ROUTE, NewTask, NodeState, Scheduler

HIGH = int(Priority.HIGH)
MEDIUM = int(Priority.MEDIUM)
LOW = int(Priority.LOW)
NOW = 1000.0


class KeyFailed(Exception):
    """What the test's key function raises."""


class FlakyKey:
    """The aged order key (one level per second), raising for the priorities in
    ``broken``."""

    def __init__(self) -> None:
        self.broken: set[int] = set()

    def __call__(self, priority: int, ready_at: float) -> float:
        if priority in self.broken:
            raise KeyFailed(f"no key for priority {priority}")
        return priority + ready_at


def make() -> tuple[Scheduler, FlakyKey]:
    key = FlakyKey()
    return Scheduler(clock=lambda: NOW, order_key=key), key


def add(sched: Scheduler, task_id: str, priority: int, deps: Iterable[str] = ()) -> None:
    sched.add([NewTask(task_id, priority, tuple(deps))])


def snapshot(sched: Scheduler, task_ids: Iterable[str]) -> dict[str, Any]:
    """Everything a caller can observe about ``task_ids``, and the counts."""
    return {
        "waiting": sched.waiting_count,
        "ready": sched.ready_count,
        "best": sched.best_per_route(),
        "tasks": {
            task_id: (
                sched.state(task_id),
                sched.effective_priority(task_id),
                sched.position(task_id),
                sched.waiting_on(task_id),
                sched.dependents(task_id),
            )
            for task_id in task_ids
        },
    }


def drain(sched: Scheduler) -> list[str]:
    taken = []
    while (task_id := sched.take([ANY_ROUTE])) is not None:
        taken.append(task_id)
    return taken


def test_a_rejected_add_leaves_no_trace() -> None:
    """A new task whose key cannot be computed is not added and takes no queue slot."""
    sched, key = make()
    add(sched, "p", LOW)
    before = snapshot(sched, ["p"])
    key.broken = {HIGH}
    with pytest.raises(KeyFailed):
        add(sched, "x", HIGH)
    assert "x" not in sched
    assert snapshot(sched, ["p"]) == before
    key.broken = set()
    add(sched, "x", HIGH)  # the same id again
    assert drain(sched) == ["x", "p"]


def test_a_batch_failing_part_way_is_undone_as_a_whole() -> None:
    """Tasks of the batch inserted before the failing one go again, and a prerequisite they
    made more urgent gets back its own priority and place."""
    sched, key = make()
    add(sched, "p", LOW)
    add(sched, "q", MEDIUM)  # ahead of p
    before = snapshot(sched, ["p", "q"])
    key.broken = {HIGH}
    batch = [NewTask("b", MEDIUM, ("p",)), NewTask("a", MEDIUM), NewTask("c", HIGH)]
    with pytest.raises(KeyFailed):
        sched.add(batch)  # b lifts p to MEDIUM, a is ready, then c fails
    assert [task_id for task_id in "abc" if task_id in sched] == []
    assert snapshot(sched, ["p", "q"]) == before
    key.broken = set()
    sched.add(batch)  # the same ids again: no stale entry of the first try is left
    assert drain(sched) == ["c", "p", "q", "a"]
    sched.complete("p")
    assert drain(sched) == ["b"]


def test_a_failing_inheritance_rejects_the_dependent() -> None:
    """A dependent whose urgency cannot be passed on to its prerequisite is not added."""
    sched, key = make()
    add(sched, "p", LOW)
    before = snapshot(sched, ["p"])
    key.broken = {HIGH}
    with pytest.raises(KeyFailed):
        add(sched, "d", HIGH, ["p"])
    assert "d" not in sched
    assert snapshot(sched, ["p"]) == before


def test_a_completion_failing_to_release_a_dependent_changes_nothing() -> None:
    """The completed task stays running and every dependent stays blocked; the completion
    succeeds once the key answers and releases them all."""
    sched, key = make()
    add(sched, "p", MEDIUM)
    assert sched.take([ANY_ROUTE]) == "p"
    add(sched, "d1", MEDIUM, ["p"])
    add(sched, "d2", LOW, ["p"])
    before = snapshot(sched, ["p", "d1", "d2"])
    key.broken = {LOW}
    with pytest.raises(KeyFailed):
        sched.complete("p")
    assert snapshot(sched, ["p", "d1", "d2"]) == before
    key.broken = set()
    assert sorted(sched.complete("p").ready) == ["d1", "d2"]
    assert drain(sched) == ["d1", "d2"]


def test_release_requeue_and_revive_failing_change_nothing() -> None:
    """A held task stays held, a running one running, a failed one failed."""
    sched, key = make()
    for task_id in ("held", "running", "failed"):
        add(sched, task_id, LOW)
        assert sched.take([ANY_ROUTE]) == task_id
    sched.hold("held")
    sched.fail("failed", "boom")
    ids = ["held", "running", "failed"]
    before = snapshot(sched, ids)
    key.broken = {LOW}
    with pytest.raises(KeyFailed):
        sched.release("held")
    with pytest.raises(KeyFailed):
        sched.requeue("running")
    with pytest.raises(KeyFailed):
        sched.revive("failed")
    assert snapshot(sched, ids) == before
    key.broken = set()
    assert sched.release("held")
    sched.requeue("running")
    sched.revive("failed")
    assert drain(sched) == ids


def test_a_cancel_failing_to_withdraw_urgency_changes_nothing() -> None:
    """Cancelling a dependent gives its prerequisite back its own priority; when that key
    fails, the dependent is not cancelled and the prerequisite keeps its urgency."""
    sched, key = make()
    add(sched, "p", LOW)
    add(sched, "d", HIGH, ["p"])
    assert sched.effective_priority("p") == HIGH
    before = snapshot(sched, ["p", "d"])
    key.broken = {LOW}
    with pytest.raises(KeyFailed):
        sched.cancel("d", "not needed")
    assert snapshot(sched, ["p", "d"]) == before
    key.broken = set()
    assert sched.cancel("d", "not needed").finished == []
    assert sched.state("d") is NodeState.CANCELLED
    assert sched.effective_priority("p") == LOW
