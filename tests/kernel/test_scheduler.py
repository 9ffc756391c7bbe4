"""Unit tests of the pure scheduler (``miminions.kernel.scheduler``).

Every test drives the scheduler with a fake clock, so aging is exact and nothing sleeps.
Requirement IDs: F-03 (priorities, FIFO, aging), F-05 (queue position), F-08 (queue
capacity), F-10 (dependencies), F-19 (retry hold / requeue), F-20 (restore after restart),
F-24 (why a task waits), F-26 (effective priority, inheritance), F-28 (re-queue of dead
letters), R-04 (typed errors, nothing changed on rejection).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from miminions.kernel.errors import (
    AlreadyExistsError,
    DependencyCycleError,
    InvalidStateError,
    NotFoundError,
    QueueFullError,
    ValidationError,
)
from miminions.kernel.models import Priority
from miminions.kernel.scheduler import (
    ANY_ROUTE,
    Change,
    NewTask,
    NodeState,
    Scheduler,
    agent_route,
    group_route,
    route_for,
)

HIGH = int(Priority.HIGH)
MEDIUM = int(Priority.MEDIUM)
LOW = int(Priority.LOW)

START = 1000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    *, aging_seconds: float = 1.0, max_waiting: int | None = None
) -> tuple[Scheduler, FakeClock]:
    clock = FakeClock()
    return Scheduler(aging_seconds=aging_seconds, max_waiting=max_waiting, clock=clock), clock


def add(
    sched: Scheduler,
    task_id: str,
    priority: int = MEDIUM,
    deps: Sequence[str] = (),
    route: str = ANY_ROUTE,
) -> Change:
    return sched.add([NewTask(task_id, priority, tuple(deps), route)])


def drain(sched: Scheduler, routes: Iterable[str] = (ANY_ROUTE,)) -> list[str]:
    """Take every ready task of ``routes`` in order (they stay running)."""
    routes = list(routes)
    taken = []
    while (task_id := sched.take(routes)) is not None:
        taken.append(task_id)
    return taken


def run(sched: Scheduler, task_id: str, routes: Iterable[str] = (ANY_ROUTE,)) -> None:
    """Take ``task_id`` (which must be the next task on ``routes``) and complete it."""
    assert sched.take(list(routes)) == task_id
    sched.complete(task_id)


def snapshot(sched: Scheduler, ids: Iterable[str]) -> tuple[object, ...]:
    """Everything observable about ``ids``, to prove a rejected call changed nothing."""
    return (
        sched.waiting_count,
        sched.ready_count,
        tuple(
            (
                task_id,
                task_id in sched,
                sched.state(task_id) if task_id in sched else None,
                sched.position(task_id) if task_id in sched else None,
                sched.effective_priority(task_id) if task_id in sched else None,
            )
            for task_id in ids
        ),
    )


# ---------------------------------------------------------------------------- routes helpers
def test_route_helpers() -> None:
    """F-02/F-18: a task targets one agent, a group or any agent; agent wins over group."""
    assert agent_route("x") == "a:x"
    assert group_route("g") == "g:g"
    assert ANY_ROUTE == ""
    assert route_for("x", "g") == agent_route("x")
    assert route_for(None, "g") == group_route("g")
    assert route_for(None, None) == ANY_ROUTE


def test_aging_seconds_must_be_positive() -> None:
    """R-04: a nonsensical configuration is rejected with a clear error."""
    with pytest.raises(ValueError, match="aging_seconds"):
        Scheduler(aging_seconds=0, clock=FakeClock())
    with pytest.raises(ValueError, match="aging_seconds"):
        Scheduler(aging_seconds=-1.0, clock=FakeClock())


# ---------------------------------------------------------------------------- priorities (F-03)
def test_take_on_empty_scheduler_returns_none() -> None:
    """F-03: nothing ready, nothing taken."""
    sched, _ = make()
    assert sched.take([ANY_ROUTE]) is None
    assert sched.take([]) is None


def test_high_before_medium_before_low() -> None:
    """F-03: HIGH=0 is assigned before MEDIUM=50 before LOW=100, whatever the submit order."""
    sched, _ = make()
    add(sched, "low", LOW)
    add(sched, "medium", MEDIUM)
    add(sched, "high", HIGH)
    assert drain(sched) == ["high", "medium", "low"]


def test_any_integer_priority_orders_tasks() -> None:
    """F-03: integer priorities 0..100, smaller is more urgent."""
    sched, _ = make()
    for task_id, priority in [("p37", 37), ("p100", 100), ("p0", 0), ("p1", 1), ("p99", 99)]:
        add(sched, task_id, priority)
    assert drain(sched) == ["p0", "p1", "p37", "p99", "p100"]


def test_equal_priorities_are_fifo_across_adds() -> None:
    """F-03: equal priorities are taken in submission order."""
    sched, _ = make()
    for i in range(5):
        add(sched, f"t{i}", MEDIUM)
    add(sched, "urgent", HIGH)
    assert drain(sched) == ["urgent", "t0", "t1", "t2", "t3", "t4"]


def test_equal_priorities_are_fifo_within_one_batch() -> None:
    """F-03: tasks submitted together in one ``add`` keep their submission order."""
    sched, _ = make()
    sched.add([NewTask("a", MEDIUM), NewTask("b", MEDIUM), NewTask("c", MEDIUM)])
    assert drain(sched) == ["a", "b", "c"]


def test_equal_priorities_are_fifo_within_one_batch_by_position() -> None:
    """F-03/F-05: queue positions of one batch follow the submission order."""
    sched, _ = make()
    sched.add([NewTask("a", LOW), NewTask("b", LOW), NewTask("c", LOW)])
    assert [sched.position(t) for t in ("a", "b", "c")] == [0, 1, 2]


def test_fifo_counts_from_when_a_task_became_ready() -> None:
    """F-03: the order key is fixed when a task becomes ready, so a task that was blocked and
    becomes ready later goes behind an equal-priority task that was ready before it."""
    sched, clock = make()
    add(sched, "prereq", HIGH)
    add(sched, "blocked", LOW, ["prereq"])
    clock.advance(0.5)
    add(sched, "early", LOW)
    clock.advance(0.25)
    run(sched, "prereq")
    assert sched.state("blocked") is NodeState.READY
    assert drain(sched) == ["early", "blocked"]


def test_custom_order_key_replaces_aging() -> None:
    """F-03/F-21: an injected order key decides the order; equal keys stay FIFO."""
    clock = FakeClock()
    sched = Scheduler(clock=clock, order_key=lambda priority, ready_at: float(priority))
    add(sched, "old-low", LOW)
    clock.advance(10_000)
    add(sched, "new-high", HIGH)
    add(sched, "medium-1", MEDIUM)
    add(sched, "medium-2", MEDIUM)
    expected = ["new-high", "medium-1", "medium-2", "old-low"]
    assert [sched.position(t) for t in expected] == [0, 1, 2, 3]
    assert drain(sched) == expected


# ---------------------------------------------------------------------------- aging (F-03, F-26)
def test_low_task_ready_long_enough_goes_before_new_high_task() -> None:
    """F-03/F-26: aging — one level per aging_seconds, so LOW work never starves."""
    sched, clock = make(aging_seconds=1.0)
    add(sched, "old-low", LOW)
    clock.advance(101)
    add(sched, "new-high", HIGH)
    assert drain(sched) == ["old-low", "new-high"]


def test_aging_boundary_is_exact() -> None:
    """F-03/F-26: LOW ready 99 levels earlier still loses to a new HIGH, at exactly 100 levels
    they tie and FIFO applies, beyond that LOW wins."""
    sched, clock = make(aging_seconds=2.0)
    add(sched, "low-99", LOW)
    clock.advance(2.0 * 99)
    add(sched, "high-1", HIGH)
    assert drain(sched) == ["high-1", "low-99"]

    sched, clock = make(aging_seconds=2.0)
    add(sched, "low-100", LOW)
    clock.advance(2.0 * 100)
    add(sched, "high-2", HIGH)
    assert drain(sched) == ["low-100", "high-2"]


def test_aging_between_medium_and_high() -> None:
    """F-03: a MEDIUM task ready 30 levels ago still loses to a new HIGH; 60 levels ago wins."""
    sched, clock = make(aging_seconds=0.5)
    add(sched, "medium", MEDIUM)
    clock.advance(0.5 * 30)
    add(sched, "high", HIGH)
    assert sched.effective_priority("medium") == MEDIUM - 30
    assert drain(sched) == ["high", "medium"]

    sched, clock = make(aging_seconds=0.5)
    add(sched, "medium", MEDIUM)
    clock.advance(0.5 * 60)
    add(sched, "high", HIGH)
    assert drain(sched) == ["medium", "high"]


def test_effective_priority_decreases_one_level_per_aging_period() -> None:
    """F-26: effective priority = inherited - floor(waited / aging_seconds), never below 0."""
    sched, clock = make(aging_seconds=2.0)
    add(sched, "t", MEDIUM)
    assert sched.effective_priority("t") == 50
    clock.advance(1.9)
    assert sched.effective_priority("t") == 50
    clock.advance(0.1)
    assert sched.effective_priority("t") == 49
    clock.advance(8.0)
    assert sched.effective_priority("t") == 45
    clock.advance(2.0 * 45)
    assert sched.effective_priority("t") == 0
    clock.advance(10_000)
    assert sched.effective_priority("t") == 0


def test_high_priority_task_effective_priority_stays_zero() -> None:
    """F-26: effective priority never goes below 0."""
    sched, clock = make()
    add(sched, "t", HIGH)
    clock.advance(500)
    assert sched.effective_priority("t") == 0


def test_blocked_task_does_not_age() -> None:
    """F-26: only ready tasks age; a blocked task shows its (inherited) priority."""
    sched, clock = make()
    add(sched, "prereq", HIGH)
    add(sched, "blocked", LOW, ["prereq"])
    clock.advance(1000)
    assert sched.effective_priority("blocked") == LOW


# ---------------------------------------------------------------------------- inheritance (F-26)
def test_prerequisite_of_urgent_task_inherits_its_priority() -> None:
    """F-26: a ready LOW prerequisite of a HIGH task becomes HIGH and jumps the queue."""
    sched, _ = make()
    add(sched, "prereq", LOW)
    add(sched, "medium", MEDIUM)
    assert sched.effective_priority("prereq") == LOW
    assert sched.position("prereq") == 1
    add(sched, "urgent", HIGH, ["prereq"])
    assert sched.effective_priority("prereq") == HIGH
    assert sched.position("prereq") == 0
    assert sched.effective_priority("urgent") == HIGH
    assert drain(sched) == ["prereq", "medium"]


def test_inheritance_is_transitive() -> None:
    """F-26: urgency flows down a whole chain of prerequisites."""
    sched, _ = make()
    add(sched, "root", LOW)
    add(sched, "middle", LOW, ["root"])
    add(sched, "medium", MEDIUM)
    add(sched, "urgent", HIGH, ["middle"])
    assert sched.effective_priority("middle") == HIGH
    assert sched.effective_priority("root") == HIGH
    assert drain(sched) == ["root", "medium"]
    sched.complete("root")
    assert sched.state("middle") is NodeState.READY
    add(sched, "medium-2", MEDIUM)
    assert drain(sched) == ["middle", "medium-2"]


def test_inheritance_reaches_a_blocked_prerequisite_before_it_is_ready() -> None:
    """F-26: a blocked prerequisite that inherited urgency is ordered by it once ready."""
    sched, _ = make()
    add(sched, "gate", HIGH)
    add(sched, "prereq", LOW, ["gate"])
    add(sched, "urgent", 10, ["prereq"])
    add(sched, "medium", MEDIUM)
    assert sched.effective_priority("prereq") == 10
    run(sched, "gate")
    assert sched.effective_priority("prereq") == 10
    assert drain(sched) == ["prereq", "medium"]


def test_inheritance_takes_the_most_urgent_dependent() -> None:
    """F-26: the inherited priority is the minimum over all waiting dependents."""
    sched, _ = make()
    add(sched, "prereq", LOW)
    add(sched, "d60", 60, ["prereq"])
    assert sched.effective_priority("prereq") == 60
    add(sched, "d20", 20, ["prereq"])
    assert sched.effective_priority("prereq") == 20
    add(sched, "d40", 40, ["prereq"])
    assert sched.effective_priority("prereq") == 20


@pytest.mark.parametrize("end", ["cancel", "fail"])
def test_an_ended_prerequisite_no_longer_shows_its_ended_dependents_urgency(end: str) -> None:
    """F-26: a prerequisite that was cancelled or failed (its waiting dependents with it)
    shows its own priority, as a completed one does and as it does after a restart:
    nothing waits for it any more."""
    sched, _ = make()
    add(sched, "prereq", LOW)
    add(sched, "urgent", HIGH, ["prereq"])
    if end == "fail":
        assert sched.take([ANY_ROUTE]) == "prereq"
        assert sched.effective_priority("prereq") == HIGH  # running, still awaited
        sched.fail("prereq", "it broke")
    else:
        sched.cancel("prereq", "not needed")
    assert sched.state("urgent") in (NodeState.FAILED, NodeState.CANCELLED)
    assert sched.effective_priority("prereq") == LOW
    assert sched.effective_priority("urgent") == HIGH


def test_own_priority_kept_when_more_urgent_and_not_pushed_to_dependents() -> None:
    """F-26: inheritance only lowers a prerequisite's priority; dependents keep their own."""
    sched, _ = make()
    add(sched, "prereq", HIGH)
    add(sched, "dependent", LOW, ["prereq"])
    assert sched.effective_priority("prereq") == HIGH
    assert sched.effective_priority("dependent") == LOW
    add(sched, "unrelated", 70)
    assert sched.effective_priority("unrelated") == 70


def test_held_prerequisite_inherits_and_uses_it_when_released() -> None:
    """F-26/F-19: a prerequisite waiting for its retry inherits too."""
    sched, _ = make()
    add(sched, "prereq", LOW)
    assert sched.take([ANY_ROUTE]) == "prereq"
    sched.hold("prereq")
    add(sched, "medium", MEDIUM)
    add(sched, "urgent", HIGH, ["prereq"])
    assert sched.effective_priority("prereq") == HIGH
    assert sched.release("prereq") is True
    assert drain(sched) == ["prereq", "medium"]


def test_inherited_priority_ages_from_original_ready_time() -> None:
    """F-26: when a ready task inherits, its aging keeps counting from when it became ready."""
    sched, clock = make()
    add(sched, "prereq", LOW)
    clock.advance(5)
    add(sched, "urgent", 30, ["prereq"])
    assert sched.effective_priority("prereq") == 25


# ---------------------------------------------------------------------------- dependencies (F-10)
def test_task_is_blocked_until_all_prerequisites_complete() -> None:
    """F-10: a task runs only after every prerequisite completed."""
    sched, _ = make()
    add(sched, "a", HIGH)
    add(sched, "b", MEDIUM)
    change = add(sched, "c", HIGH, ["a", "b"])
    assert change.ready == []
    assert sched.state("c") is NodeState.BLOCKED
    assert sched.waiting_on("c") == ["a", "b"]
    assert sched.position("c") is None

    assert sched.take([ANY_ROUTE]) == "a"
    assert sched.complete("a").ready == []
    assert sched.state("c") is NodeState.BLOCKED
    assert sched.waiting_on("c") == ["b"]

    assert sched.take([ANY_ROUTE]) == "b"
    assert sched.take([ANY_ROUTE]) is None
    change = sched.complete("b")
    assert change.ready == ["c"]
    assert change.finished == []
    assert sched.state("c") is NodeState.READY
    assert sched.waiting_on("c") == []
    assert sched.take([ANY_ROUTE]) == "c"


def test_dependents_lists_tasks_that_depend_on_a_task() -> None:
    """F-10/F-24: the dependency graph can be read back in both directions."""
    sched, _ = make()
    add(sched, "a")
    add(sched, "b", deps=["a"])
    add(sched, "c", deps=["a", "b"])
    assert sched.dependents("a") == ["b", "c"]
    assert sched.dependents("b") == ["c"]
    assert sched.dependents("c") == []
    assert sched.waiting_on("c") == ["a", "b"]


def test_completion_releases_every_dependent() -> None:
    """F-10: completing a prerequisite readies all dependents whose prerequisites are done."""
    sched, _ = make()
    add(sched, "a")
    add(sched, "other")
    add(sched, "d1", deps=["a"])
    add(sched, "d2", deps=["a"])
    add(sched, "d3", deps=["a", "other"])
    assert sched.take([ANY_ROUTE]) == "a"
    change = sched.complete("a")
    assert sorted(change.ready) == ["d1", "d2"]
    assert sched.state("d3") is NodeState.BLOCKED


def test_dependency_on_completed_task_is_ready_at_once() -> None:
    """F-10: a prerequisite that already completed does not block."""
    sched, _ = make()
    add(sched, "done")
    run(sched, "done")
    change = add(sched, "next", deps=["done"])
    assert change.ready == ["next"]
    assert sched.state("next") is NodeState.READY


def test_batch_may_list_dependents_before_prerequisites() -> None:
    """F-10: one ``add`` may contain a small DAG in any order."""
    sched, _ = make()
    add(sched, "outside")
    change = sched.add(
        [
            NewTask("top", HIGH, ("left", "right")),
            NewTask("left", LOW, ("base",)),
            NewTask("right", LOW, ("base", "outside")),
            NewTask("base", LOW),
        ]
    )
    assert change.ready == ["base"]
    assert sched.state("top") is NodeState.BLOCKED
    assert sched.effective_priority("base") == HIGH
    assert sched.effective_priority("outside") == HIGH
    assert sched.waiting_count == 5


def test_unknown_dependency_is_rejected() -> None:
    """F-10/R-04: an unknown dependency id is rejected at submit time, naming the id."""
    sched, _ = make()
    add(sched, "a")
    before = snapshot(sched, ["a", "b"])
    with pytest.raises(NotFoundError, match="nope"):
        add(sched, "b", deps=["a", "nope"])
    assert snapshot(sched, ["a", "b"]) == before
    assert "b" not in sched


def test_self_dependency_is_a_cycle() -> None:
    """F-10/R-04: a task depending on itself is rejected."""
    sched, _ = make()
    with pytest.raises(DependencyCycleError):
        add(sched, "me", deps=["me"])
    assert "me" not in sched
    assert sched.waiting_count == 0
    assert issubclass(DependencyCycleError, ValidationError)


@pytest.mark.parametrize(
    "batch",
    [
        [NewTask("x", 1, ("y",)), NewTask("y", 1, ("x",))],
        [NewTask("x", 1, ("z",)), NewTask("y", 1, ("x",)), NewTask("z", 1, ("y",))],
        [NewTask("ok", 1), NewTask("x", 1, ("ok", "y")), NewTask("y", 1, ("x",))],
    ],
    ids=["two", "three", "with-acyclic-part"],
)
def test_cycle_inside_one_batch_is_rejected(batch: list[NewTask]) -> None:
    """F-10/R-04: cycles are rejected at submit time; all or nothing."""
    sched, _ = make()
    add(sched, "existing", LOW)
    ids = ["existing", "ok", "x", "y", "z"]
    before = snapshot(sched, ids)
    with pytest.raises(DependencyCycleError, match="cycle"):
        sched.add(batch)
    assert snapshot(sched, ids) == before
    with pytest.raises(DependencyCycleError):
        sched.check_new(batch)


def test_a_cycle_error_names_the_cycle_not_what_depends_on_it() -> None:
    """The error names the tasks of the cycle, in dependency order, and counts those that
    only depend on it (they were all listed as the cycle: in a big batch the loop was lost
    among them)."""
    sched, _ = make()
    batch = [
        NewTask("d", 1, ("c",)),
        NewTask("c", 1, ("b",)),
        NewTask("b", 1, ("a",)),
        NewTask("a", 1, ("b",)),
        NewTask("free", 1),
    ]
    with pytest.raises(DependencyCycleError) as info:
        sched.add(batch)
    message = str(info.value)
    assert "tasks ['a', 'b'] form a cycle (a -> b -> a: each depends on the next)" in message
    assert "2 other task(s) of the batch cannot be ordered either" in message


def test_duplicate_ids_are_rejected() -> None:
    """R-04: a task id can be used once, in the scheduler and within one batch."""
    sched, _ = make()
    add(sched, "a")
    before = snapshot(sched, ["a", "b"])
    with pytest.raises(AlreadyExistsError):
        add(sched, "a")
    with pytest.raises(AlreadyExistsError):
        sched.add([NewTask("b", 1), NewTask("b", 2)])
    assert snapshot(sched, ["a", "b"]) == before


def test_rejected_batch_adds_nothing_even_its_valid_tasks() -> None:
    """F-10/R-04: after a rejected call nothing changed: same counts, states, priorities."""
    sched, _ = make(max_waiting=10)
    add(sched, "p", LOW)
    add(sched, "q", LOW, ["p"])
    ids = ["p", "q", "good", "bad"]
    before = snapshot(sched, ids)
    bad_batches = [
        [NewTask("good", HIGH, ("q",)), NewTask("bad", HIGH, ("missing",))],
        [NewTask("good", HIGH, ("q",)), NewTask("bad", HIGH, ("bad",))],
        [NewTask("good", HIGH, ("q", "bad")), NewTask("bad", HIGH, ("good",))],
        [NewTask("good", HIGH, ("q",)), NewTask("p", HIGH)],
    ]
    for batch in bad_batches:
        with pytest.raises((NotFoundError, DependencyCycleError, AlreadyExistsError)):
            sched.add(batch)
        assert snapshot(sched, ids) == before
    # The HIGH task that was rejected must not have lent its priority to p or q.
    assert sched.effective_priority("p") == LOW
    assert sched.effective_priority("q") == LOW


def test_check_new_validates_without_changing_anything() -> None:
    """F-10: check_new raises like add but never adds."""
    sched, _ = make()
    add(sched, "a")
    sched.check_new([NewTask("b", 1, ("a",))])
    assert "b" not in sched
    assert sched.waiting_count == 1
    with pytest.raises(NotFoundError):
        sched.check_new([NewTask("b", 1, ("zzz",))])


# ---------------------------------------------------------------------------- failure cascade
def test_fail_cascades_to_waiting_dependents_transitively() -> None:
    """F-10: a failed prerequisite fails its dependents (with the reason), transitively."""
    sched, _ = make()
    add(sched, "task-a")
    add(sched, "task-b", deps=["task-a"])
    add(sched, "task-c", deps=["task-b"])
    add(sched, "task-x")
    add(sched, "task-d", deps=["task-c", "task-x"])
    add(sched, "task-e", deps=["task-a"])
    add(sched, "unrelated")
    assert sched.waiting_count == 7

    assert sched.take([ANY_ROUTE]) == "task-a"
    change = sched.fail("task-a", "boom")
    assert sched.state("task-a") is NodeState.FAILED
    finished = {task_id: (state, reason) for task_id, state, reason in change.finished}
    assert set(finished) == {"task-b", "task-c", "task-d", "task-e"}
    assert len(change.finished) == 4
    assert all(state is NodeState.FAILED for state, _ in finished.values())
    for task_id in ("task-b", "task-c", "task-d", "task-e"):
        assert sched.state(task_id) is NodeState.FAILED
    # Direct dependents name the prerequisite and its reason.
    assert "task-a" in finished["task-b"][1]
    assert "boom" in finished["task-b"][1]
    assert "task-a" in finished["task-e"][1]
    # Transitive ones name the prerequisite through which they failed.
    assert "task-b" in finished["task-c"][1]
    assert "task-c" in finished["task-d"][1]
    assert change.ready == []
    # Nothing else was touched.
    assert sched.state("task-x") is NodeState.READY
    assert sched.state("unrelated") is NodeState.READY
    assert sched.waiting_count == 2
    assert sched.ready_count == 2


def test_fail_of_a_waiting_task_is_allowed() -> None:
    """F-10: a task can be failed while still waiting; it leaves the queue."""
    sched, _ = make()
    add(sched, "a", HIGH)
    add(sched, "b", LOW)
    sched.fail("a", "invalid input")
    assert sched.state("a") is NodeState.FAILED
    assert sched.position("b") == 0
    assert drain(sched) == ["b"]


def test_cancel_cascades_as_cancelled() -> None:
    """F-10/F-19: cancelling a task cancels its waiting dependents, naming the prerequisite."""
    sched, _ = make()
    add(sched, "task-a")
    add(sched, "task-b", deps=["task-a"])
    add(sched, "task-c", deps=["task-b"])
    change = sched.cancel("task-a", "user asked")
    assert sched.state("task-a") is NodeState.CANCELLED
    finished = {task_id: (state, reason) for task_id, state, reason in change.finished}
    assert finished.keys() == {"task-b", "task-c"}
    assert finished["task-b"][0] is NodeState.CANCELLED
    assert finished["task-c"][0] is NodeState.CANCELLED
    assert "task-a" in finished["task-b"][1]
    assert "cancel" in finished["task-b"][1]
    assert "user asked" in finished["task-b"][1]
    assert "task-b" in finished["task-c"][1]
    assert sched.waiting_count == 0
    assert sched.ready_count == 0
    assert sched.take([ANY_ROUTE]) is None


def test_cancel_ready_task_removes_it_from_the_queue() -> None:
    """F-19: a cancelled pending task is never handed out."""
    sched, _ = make()
    add(sched, "a", HIGH)
    add(sched, "b", MEDIUM)
    sched.cancel("a", "no longer needed")
    assert sched.ready_count == 1
    assert sched.waiting_count == 1
    assert sched.position("a") is None
    assert sched.position("b") == 0
    assert drain(sched) == ["b"]


def test_cancel_running_task() -> None:
    """F-19: a running task can be cancelled; its waiting dependents are cancelled too."""
    sched, _ = make()
    add(sched, "a")
    add(sched, "b", deps=["a"])
    assert sched.take([ANY_ROUTE]) == "a"
    change = sched.cancel("a", "stop")
    assert [(t, s) for t, s, _ in change.finished] == [("b", NodeState.CANCELLED)]
    assert sched.waiting_count == 0


def test_cancel_held_task() -> None:
    """F-19: a task waiting for its retry can be cancelled and is never released."""
    sched, _ = make()
    add(sched, "a")
    assert sched.take([ANY_ROUTE]) == "a"
    sched.hold("a")
    assert sched.waiting_count == 1
    sched.cancel("a", "stop")
    assert sched.waiting_count == 0
    assert sched.release("a") is False
    assert sched.state("a") is NodeState.CANCELLED


def test_cascade_skips_dependents_that_are_not_waiting() -> None:
    """F-10: only waiting dependents are finished by the cascade."""
    sched, _ = make()
    add(sched, "a", HIGH)
    add(sched, "b", LOW, ["a"])
    add(sched, "c", LOW, ["a"])
    sched.cancel("c", "not needed")
    assert sched.take([ANY_ROUTE]) == "a"
    change = sched.fail("a", "boom")
    assert [t for t, _, _ in change.finished] == ["b"]
    assert sched.state("c") is NodeState.CANCELLED


@pytest.mark.parametrize(
    ("end", "final", "word"),
    [("fail", NodeState.FAILED, "failed"), ("cancel", NodeState.CANCELLED, "cancelled")],
)
def test_adding_task_with_a_dead_prerequisite_finishes_it_at_once(
    end: str, final: NodeState, word: str
) -> None:
    """F-10: a prerequisite that already failed/was cancelled never leaves a new task waiting."""
    sched, _ = make()
    add(sched, "task-dead")
    add(sched, "task-ok")
    getattr(sched, end)("task-dead", "reason")
    waiting = sched.waiting_count
    change = sched.add(
        [
            NewTask("task-new", HIGH, ("task-ok", "task-dead")),
            NewTask("task-after", HIGH, ("task-new",)),
        ]
    )
    finished = {task_id: (state, reason) for task_id, state, reason in change.finished}
    assert finished.keys() == {"task-new", "task-after"}
    assert finished["task-new"][0] is final
    assert "task-dead" in finished["task-new"][1]
    assert word in finished["task-new"][1]
    assert finished["task-after"][0] is final
    assert "task-new" in finished["task-after"][1]
    assert sched.state("task-new") is final
    assert sched.state("task-after") is final
    assert change.ready == []
    assert sched.waiting_count == waiting
    # The doomed task does not lend its urgency to the prerequisite that is still fine.
    assert sched.effective_priority("task-ok") == MEDIUM


def test_operations_on_finished_tasks_are_rejected() -> None:
    """R-04: fail/cancel of a finished task raise InvalidStateError and change nothing."""
    sched, _ = make()
    add(sched, "done")
    run(sched, "done")
    add(sched, "failed")
    sched.fail("failed", "x")
    for task_id in ("done", "failed"):
        with pytest.raises(InvalidStateError):
            sched.fail(task_id, "again")
        with pytest.raises(InvalidStateError):
            sched.cancel(task_id, "again")
    assert sched.state("done") is NodeState.DONE
    assert sched.state("failed") is NodeState.FAILED
    # (A finished task's node is shared: the error named no task.)
    with pytest.raises(InvalidStateError, match="task 'done' is done, expected running"):
        sched.complete("done")


# ---------------------------------------------------------------------------- capacity (F-08)
def test_queue_capacity_counts_waiting_tasks_only() -> None:
    """F-08: max_waiting -> QueueFullError; running tasks do not count against it."""
    sched, _ = make(max_waiting=2)
    add(sched, "a")
    add(sched, "b", deps=["a"])
    with pytest.raises(QueueFullError):
        add(sched, "c")
    assert "c" not in sched
    assert sched.waiting_count == 2

    assert sched.take([ANY_ROUTE]) == "a"
    assert sched.waiting_count == 1
    add(sched, "c")
    with pytest.raises(QueueFullError):
        add(sched, "d")

    sched.hold("a")  # a held task waits again and counts again
    assert sched.waiting_count == 3


def test_queue_capacity_rejects_a_whole_batch() -> None:
    """F-08: a batch that does not fit is rejected whole."""
    sched, _ = make(max_waiting=3)
    add(sched, "a")
    with pytest.raises(QueueFullError, match="limit"):
        sched.add([NewTask("b", 1), NewTask("c", 1), NewTask("d", 1)])
    assert sched.waiting_count == 1
    assert "b" not in sched
    sched.add([NewTask("b", 1), NewTask("c", 1)])
    assert sched.waiting_count == 3


def test_reserved_room_is_held_until_added_or_given_back() -> None:
    """F-08: room reserved for a batch added in slices counts as taken: other adds (and
    re-queues) find the queue full; the slices take it without asking again; what is not
    added is given back."""
    sched, _ = make(max_waiting=4)
    add(sched, "a")
    with pytest.raises(QueueFullError):
        sched.reserve(4)
    sched.reserve(3)
    assert sched.waiting_count == 1  # reserved room is not a waiting task
    with pytest.raises(QueueFullError, match="3 of them held for a batch still being booked"):
        add(sched, "x")
    with pytest.raises(QueueFullError):
        sched.check_room(1)
    sched.add([NewTask("b", 1), NewTask("c", 1)], reserved=True)
    assert sched.waiting_count == 3
    with pytest.raises(QueueFullError):
        add(sched, "x")
    sched.unreserve(1)  # the last slice is not added after all
    add(sched, "d")
    assert sched.waiting_count == 4
    sched.unreserve(5)  # more than is held gives back only what is held
    with pytest.raises(QueueFullError):
        add(sched, "e")


def test_finished_tasks_free_capacity() -> None:
    """F-08: failed, cancelled and completed tasks do not count."""
    sched, _ = make(max_waiting=1)
    add(sched, "a")
    sched.cancel("a", "x")
    add(sched, "b")
    run(sched, "b")
    add(sched, "c")
    assert sched.waiting_count == 1


# ---------------------------------------------------------------------------- routes (F-02, F-18)
def test_take_only_returns_tasks_of_the_given_routes() -> None:
    """F-02/F-18: a task targets one agent, a group, or any agent."""
    sched, _ = make()
    add(sched, "for-x", HIGH, route=agent_route("x"))
    add(sched, "for-y", HIGH, route=agent_route("y"))
    add(sched, "for-g", HIGH, route=group_route("g"))
    add(sched, "for-any", LOW, route=ANY_ROUTE)
    assert sched.route("for-x") == "a:x"

    agent_z = [agent_route("z"), group_route("h"), ANY_ROUTE]
    assert drain(sched, agent_z) == ["for-any"]
    agent_x = [agent_route("x"), group_route("h"), ANY_ROUTE]
    assert drain(sched, agent_x) == ["for-x"]
    assert sched.state("for-y") is NodeState.READY
    assert sched.state("for-g") is NodeState.READY
    assert sched.take([group_route("g")]) == "for-g"
    assert sched.take([agent_route("x"), group_route("g"), ANY_ROUTE]) is None
    assert sched.take([agent_route("y")]) == "for-y"


def test_take_returns_the_best_task_across_routes() -> None:
    """F-03: an agent serving several routes takes the most urgent task among them."""
    sched, clock = make()
    add(sched, "any-medium", MEDIUM)
    add(sched, "agent-low", LOW, route=agent_route("x"))
    add(sched, "group-high", HIGH, route=group_route("g"))
    clock.advance(1)
    add(sched, "agent-medium-later", MEDIUM, route=agent_route("x"))
    routes = [agent_route("x"), group_route("g"), ANY_ROUTE]
    assert drain(sched, routes) == ["group-high", "any-medium", "agent-medium-later", "agent-low"]


def test_take_respects_fifo_across_routes() -> None:
    """F-03: equal keys on different routes are taken in submission order."""
    sched, _ = make()
    add(sched, "first", MEDIUM, route=group_route("g"))
    add(sched, "second", MEDIUM, route=ANY_ROUTE)
    add(sched, "third", MEDIUM, route=agent_route("x"))
    routes = [agent_route("x"), ANY_ROUTE, group_route("g")]
    assert drain(sched, routes) == ["first", "second", "third"]


def test_best_per_route_of_chosen_routes_and_empty_routes_forgotten() -> None:
    """best_per_route(routes) answers for those routes only; routes whose tasks were all
    taken are forgotten, so a scan costs what the routes with ready tasks do."""
    sched, _ = make()
    for n in range(50):
        add(sched, f"t{n}", MEDIUM, route=agent_route(f"a{n}"))
    add(sched, "any", LOW)
    assert sched.route_count == 51
    chosen = sched.best_per_route([agent_route("a7"), agent_route("nobody"), ANY_ROUTE])
    assert sorted(route for _, _, route in chosen) == [ANY_ROUTE, agent_route("a7")]
    for n in range(50):
        sched.take_id(f"t{n}")
    assert [route for _, _, route in sched.best_per_route()] == [ANY_ROUTE]
    assert sched.route_count == 1
    add(sched, "again", HIGH, route=agent_route("a3"))
    assert sched.peek(agent_route("a3")) == "again"
    assert sched.route_count == 2


def test_peek_take_id_and_best_per_route() -> None:
    """F-02: peek shows a route's best task without taking it; take_id takes a chosen one."""
    sched, _ = make()
    add(sched, "x-low", LOW, route=agent_route("x"))
    add(sched, "x-high", HIGH, route=agent_route("x"))
    add(sched, "any", MEDIUM)
    assert sched.peek(agent_route("x")) == "x-high"
    assert sched.peek(agent_route("x")) == "x-high"
    assert sched.peek(group_route("none")) is None
    best = sorted(sched.best_per_route(), key=lambda item: item[2])
    assert [route for _, _, route in best] == [ANY_ROUTE, agent_route("x")]
    assert best[0][0] == MEDIUM * 1.0 + START
    assert best[1][0] == HIGH * 1.0 + START

    sched.take_id("x-high")
    assert sched.state("x-high") is NodeState.RUNNING
    assert sched.ready_count == 2
    assert sched.waiting_count == 2
    assert sched.peek(agent_route("x")) == "x-low"
    with pytest.raises(InvalidStateError):
        sched.take_id("x-high")
    add(sched, "blocked", deps=["x-high"])
    with pytest.raises(InvalidStateError):
        sched.take_id("blocked")
    sched.cancel("x-low", "x")
    assert sched.peek(agent_route("x")) is None
    assert drain(sched, [agent_route("x"), ANY_ROUTE]) == ["any"]


# ---------------------------------------------------------------------------- hold/release/requeue
def test_hold_and_release_for_retry_backoff() -> None:
    """F-19: a failed attempt waits (held, not ready) before its retry."""
    sched, clock = make()
    add(sched, "t", MEDIUM)
    add(sched, "other", LOW)
    assert sched.take([ANY_ROUTE]) == "t"
    assert sched.waiting_count == 1
    sched.hold("t")
    assert sched.state("t") is NodeState.HELD
    assert sched.waiting_count == 2
    assert sched.ready_count == 1
    assert sched.position("t") is None
    assert sched.effective_priority("t") == MEDIUM
    assert sched.take([ANY_ROUTE]) == "other"

    clock.advance(7)
    assert sched.release("t") is True
    assert sched.state("t") is NodeState.READY
    assert sched.ready_count == 1
    assert sched.effective_priority("t") == MEDIUM  # aging restarts at release
    assert sched.release("t") is False
    assert sched.release("unknown") is False
    assert sched.take([ANY_ROUTE]) == "t"


def test_released_task_goes_behind_equal_tasks_ready_before() -> None:
    """F-03/F-19: a retried task is ordered from when it became ready again."""
    sched, clock = make()
    add(sched, "retry", MEDIUM)
    assert sched.take([ANY_ROUTE]) == "retry"
    sched.hold("retry")
    clock.advance(0.5)
    add(sched, "waiting", MEDIUM)
    clock.advance(0.25)
    sched.release("retry")
    assert drain(sched) == ["waiting", "retry"]


def test_hold_keeps_dependents_blocked() -> None:
    """F-10/F-19: a task waiting for its retry has not completed."""
    sched, _ = make()
    add(sched, "a")
    add(sched, "b", deps=["a"])
    sched.take([ANY_ROUTE])
    sched.hold("a")
    sched.release("a")
    assert sched.state("b") is NodeState.BLOCKED
    run(sched, "a")
    assert sched.state("b") is NodeState.READY


def test_requeue_makes_a_running_task_ready_again() -> None:
    """F-20: an interrupted task is re-queued at once (at-least-once)."""
    sched, clock = make()
    add(sched, "t", LOW)
    add(sched, "u", LOW)  # ready as long as "t": the same aging
    assert sched.take([ANY_ROUTE]) == "t"
    clock.advance(3)
    sched.requeue("t")
    assert sched.state("t") is NodeState.READY
    assert sched.waiting_count == 2
    assert sched.ready_count == 2
    assert sched.effective_priority("t") == sched.effective_priority("u") < LOW
    assert sched.position("t") == 0
    assert sched.take([ANY_ROUTE]) == "t"


def test_a_restored_running_task_requeued_ages_from_its_restoring() -> None:
    """F-20, F-26: a task running when the runtime died is restored, then re-queued by
    recovery: it ages from its restoring, so it does not jump a more urgent ready task."""
    sched, clock = make()
    clock.advance(10_000)  # a clock far from zero, as time.monotonic() is
    sched.restore("urgent", HIGH, (), ANY_ROUTE, NodeState.READY)
    sched.restore("was-running", LOW, (), ANY_ROUTE, NodeState.RUNNING)
    sched.requeue("was-running")
    assert sched.effective_priority("was-running") == LOW
    assert [sched.take([ANY_ROUTE]) for _ in range(2)] == ["urgent", "was-running"]


def test_requeue_keeps_the_tasks_place_in_line() -> None:
    """F-01, F-20: an interrupted task goes back before the tasks of its priority that
    became ready after it (FIFO), and keeps the aging it had earned."""
    sched, clock = make()
    add(sched, "first", MEDIUM)
    clock.advance(1)
    add(sched, "second", MEDIUM)
    assert sched.take([ANY_ROUTE]) == "first"
    clock.advance(5)
    add(sched, "third", MEDIUM)
    sched.requeue("first")
    assert sched.position("first") == 0
    assert [sched.take([ANY_ROUTE]) for _ in range(3)] == ["first", "second", "third"]


@pytest.mark.parametrize("operation", ["hold", "requeue", "complete"])
def test_running_only_operations_reject_other_states(operation: str) -> None:
    """R-04: hold, requeue and complete need a running task (InvalidStateError)."""
    sched, _ = make()
    add(sched, "ready")
    add(sched, "blocked", deps=["ready"])
    add(sched, "cancelled")
    sched.cancel("cancelled", "x")
    add(sched, "done")
    sched.take_id("done")
    sched.complete("done")
    ids = ["ready", "blocked", "cancelled", "done"]
    before = snapshot(sched, ids)
    for task_id in ids:
        with pytest.raises(InvalidStateError, match=task_id):
            getattr(sched, operation)(task_id)
    assert snapshot(sched, ids) == before


def test_unknown_ids_raise_not_found() -> None:
    """R-04: an unknown id raises NotFoundError, a ValueError."""
    sched, _ = make()
    assert issubclass(NotFoundError, ValueError)
    for call in (
        lambda: sched.state("nope"),
        lambda: sched.complete("nope"),
        lambda: sched.fail("nope", "x"),
        lambda: sched.cancel("nope", "x"),
        lambda: sched.hold("nope"),
        lambda: sched.requeue("nope"),
        lambda: sched.revive("nope"),
        lambda: sched.position("nope"),
        lambda: sched.effective_priority("nope"),
        lambda: sched.waiting_on("nope"),
        lambda: sched.route("nope"),
        lambda: sched.dependents("nope"),
        lambda: sched.take_id("nope"),
    ):
        with pytest.raises(NotFoundError, match="nope"):
            call()
    assert "nope" not in sched


# ---------------------------------------------------------------------------- revive (F-28)
@pytest.mark.parametrize("end", ["fail", "cancel"])
def test_revive_a_failed_or_cancelled_task(end: str) -> None:
    """F-28: a dead-lettered task is re-queued and runs again."""
    sched, clock = make()
    add(sched, "t", LOW)
    add(sched, "dependent", LOW, ["t"])
    sched.take([ANY_ROUTE])
    getattr(sched, end)("t", "x")
    assert sched.waiting_count == 0
    clock.advance(10)
    change = sched.revive("t")
    assert change.ready == ["t"]
    assert sched.state("t") is NodeState.READY
    assert sched.waiting_count == 1
    assert sched.ready_count == 1
    assert sched.effective_priority("t") == LOW  # ages from the revive
    # Its dependents stay finished; they are revived separately.
    assert sched.state("dependent") in (NodeState.FAILED, NodeState.CANCELLED)
    assert sched.take([ANY_ROUTE]) == "t"


def test_revive_waits_for_unfinished_prerequisites_and_inherits() -> None:
    """F-28/F-10/F-26: a revived task whose prerequisite has not completed is blocked."""
    sched, _ = make()
    add(sched, "prereq", LOW)
    add(sched, "medium", MEDIUM)
    add(sched, "t", HIGH, ["prereq"])
    sched.fail("t", "manual")
    sched.take_id("prereq")
    sched.requeue("prereq")
    change = sched.revive("t")
    assert change.ready == []
    assert sched.state("t") is NodeState.BLOCKED
    assert sched.waiting_on("t") == ["prereq"]
    assert sched.effective_priority("prereq") == HIGH
    run(sched, "prereq")
    assert sched.state("t") is NodeState.READY


def test_revive_with_completed_prerequisites_is_ready() -> None:
    """F-28: prerequisites that completed do not block a revived task."""
    sched, _ = make()
    add(sched, "p")
    add(sched, "t", deps=["p"])
    run(sched, "p")
    sched.take_id("t")
    sched.fail("t", "boom")
    assert sched.revive("t").ready == ["t"]


def test_revive_rejects_tasks_that_are_not_failed_or_cancelled() -> None:
    """R-04: only failed or cancelled tasks can be re-queued."""
    sched, _ = make()
    add(sched, "ready")
    add(sched, "blocked", deps=["ready"])
    add(sched, "running")
    sched.take_id("running")
    add(sched, "done")
    sched.take_id("done")
    sched.complete("done")
    ids = ["ready", "blocked", "running", "done"]
    before = snapshot(sched, ids)
    for task_id in ids:
        with pytest.raises(InvalidStateError, match=task_id):
            sched.revive(task_id)
    assert snapshot(sched, ids) == before


def test_revive_of_dependent_whose_prerequisite_is_still_failed_does_not_wait_forever() -> None:
    """F-10/F-28: re-queueing a task whose prerequisite is still failed must not leave it
    waiting forever on that prerequisite. Either the revive is refused (InvalidStateError,
    nothing changed) or the task ends failed again at once, like a new task would."""
    sched, _ = make()
    add(sched, "prereq", LOW)
    sched.take_id("prereq")
    sched.fail("prereq", "boom")
    add(sched, "dependent", HIGH, ["prereq"])
    assert sched.state("dependent") is NodeState.FAILED
    try:
        sched.revive("dependent")
    except InvalidStateError:
        assert sched.state("dependent") is NodeState.FAILED
        assert sched.waiting_count == 0
    else:
        assert sched.state("dependent") in (NodeState.FAILED, NodeState.CANCELLED)
        assert sched.waiting_count == 0


# ---------------------------------------------------------------------------- position (F-05)
def test_position_ranks_ready_tasks_globally() -> None:
    """F-05/F-24: queue position is the rank among all ready tasks, across routes."""
    sched, _ = make()
    add(sched, "x-medium", MEDIUM, route=agent_route("x"))
    add(sched, "any-low", LOW)
    add(sched, "g-high", HIGH, route=group_route("g"))
    add(sched, "any-medium", MEDIUM)
    add(sched, "blocked", HIGH, ["any-low"])
    add(sched, "running", HIGH, route=agent_route("r"))
    assert sched.take([agent_route("r")]) == "running"

    # any-low inherited HIGH from "blocked" and was submitted before g-high.
    expected = ["any-low", "g-high", "x-medium", "any-medium"]
    assert [sched.position(t) for t in expected] == [0, 1, 2, 3]
    assert sched.position("blocked") is None
    assert sched.position("running") is None

    assert sched.take([ANY_ROUTE]) == "any-low"
    assert sched.position("any-low") is None
    assert [sched.position(t) for t in ["g-high", "x-medium", "any-medium"]] == [0, 1, 2]
    sched.complete("any-low")
    assert sched.position("any-low") is None
    assert sched.position("blocked") == 1


def test_position_matches_take_order_with_aging() -> None:
    """F-05/F-03: positions agree with the order tasks are handed out."""
    sched, clock = make(aging_seconds=0.5)
    for i, priority in enumerate([LOW, 70, MEDIUM, 30, HIGH, 90]):
        add(sched, f"t{i}", priority, route=[ANY_ROUTE, group_route("g")][i % 2])
        clock.advance(7)
    ids = [f"t{i}" for i in range(6)]

    def position(task_id: str) -> int:
        rank = sched.position(task_id)
        assert rank is not None  # every task here is ready
        return rank

    by_position = sorted(ids, key=position)
    assert sorted(position(t) for t in ids) == list(range(6))
    assert drain(sched, [group_route("g"), ANY_ROUTE]) == by_position


# ---------------------------------------------------------------------------- restore (F-20)
def test_restore_and_settle_rebuild_the_queue() -> None:
    """F-20/F-10: tasks read back from a store are re-created in their states; settle fails or
    cancels waiting tasks whose prerequisite ended badly."""
    sched, _ = make()
    sched.restore("done", MEDIUM, (), ANY_ROUTE, NodeState.DONE)
    sched.restore("failed", MEDIUM, (), ANY_ROUTE, NodeState.FAILED)
    sched.restore("cancelled", MEDIUM, (), ANY_ROUTE, NodeState.CANCELLED)
    sched.restore("running", MEDIUM, ("done",), ANY_ROUTE, NodeState.RUNNING)
    sched.restore("after-done", LOW, ("done",), ANY_ROUTE, NodeState.READY)
    sched.restore("after-running", HIGH, ("running",), ANY_ROUTE, NodeState.READY)
    sched.restore("after-failed", MEDIUM, ("done", "failed"), ANY_ROUTE, NodeState.BLOCKED)
    sched.restore("after-after-failed", MEDIUM, ("after-failed",), ANY_ROUTE, NodeState.BLOCKED)
    sched.restore("after-cancelled", MEDIUM, ("cancelled",), ANY_ROUTE, NodeState.READY)
    sched.restore("held", MEDIUM, ("done",), group_route("g"), NodeState.HELD)

    # A task stored as ready whose prerequisite is still running is blocked.
    assert sched.state("after-running") is NodeState.BLOCKED
    assert sched.waiting_on("after-running") == ["running"]
    assert sched.effective_priority("running") == HIGH

    change = sched.settle()
    finished = {task_id: (state, reason) for task_id, state, reason in change.finished}
    assert finished.keys() == {"after-failed", "after-after-failed", "after-cancelled"}
    assert finished["after-failed"][0] is NodeState.FAILED
    assert "failed" in finished["after-failed"][1]
    assert finished["after-after-failed"][0] is NodeState.FAILED
    assert "after-failed" in finished["after-after-failed"][1]
    assert finished["after-cancelled"][0] is NodeState.CANCELLED
    assert "cancelled" in finished["after-cancelled"][1]
    for task_id, (state, _) in finished.items():
        assert sched.state(task_id) is state

    assert sched.state("done") is NodeState.DONE
    assert sched.state("running") is NodeState.RUNNING
    assert sched.state("held") is NodeState.HELD
    assert sched.state("after-done") is NodeState.READY
    # Waiting: after-done (ready), after-running (blocked), held.
    assert sched.waiting_count == 3
    assert sched.position("after-done") == 0

    assert drain(sched) == ["after-done"]
    sched.complete("running")
    assert sched.state("after-running") is NodeState.READY
    assert sched.release("held") is True
    assert drain(sched, [group_route("g"), ANY_ROUTE]) == ["after-running", "held"]
    assert sched.waiting_count == 0


def test_restored_ready_task_counts_as_ready() -> None:
    """F-20/F-13: ready_count includes tasks restored as ready."""
    sched, _ = make()
    sched.restore("r", LOW, (), ANY_ROUTE, NodeState.READY)
    assert sched.state("r") is NodeState.READY
    assert sched.waiting_count == 1
    assert sched.ready_count == 1
    assert sched.take([ANY_ROUTE]) == "r"
    assert sched.ready_count == 0


def test_settle_keeps_ready_count_of_restored_tasks() -> None:
    """F-20/F-13: settling a task restored as ready (its prerequisite was cancelled) leaves
    ready_count consistent with the tasks that are actually ready."""
    sched, _ = make()
    sched.restore("c", MEDIUM, (), ANY_ROUTE, NodeState.CANCELLED)
    sched.restore("r", MEDIUM, ("c",), ANY_ROUTE, NodeState.READY)
    sched.restore("s", MEDIUM, (), ANY_ROUTE, NodeState.READY)
    sched.settle()
    assert sched.state("r") is NodeState.CANCELLED
    assert sched.waiting_count == 1
    assert sched.ready_count == 1


def test_restored_ready_task_ages_from_when_it_was_restored() -> None:
    """F-26/F-03: a task restored as ready has not waited yet in this scheduler: its effective
    priority is its own, and it does not go before a more urgent task restored with it."""
    sched, clock = make()
    sched.restore("low", LOW, (), ANY_ROUTE, NodeState.READY)
    sched.restore("high", HIGH, (), ANY_ROUTE, NodeState.READY)
    assert sched.effective_priority("low") == LOW
    clock.advance(10)
    assert sched.effective_priority("low") == LOW - 10
    add(sched, "medium", MEDIUM)
    assert drain(sched) == ["high", "medium", "low"]


def test_restored_blocked_task_with_completed_prerequisites_becomes_ready() -> None:
    """F-20/F-10: a task stored as blocked whose prerequisites all completed (the runtime died
    between the two writes) is restored ready, not left waiting forever."""
    sched, _ = make()
    sched.restore("p", MEDIUM, (), ANY_ROUTE, NodeState.DONE)
    sched.restore("b", MEDIUM, ("p",), ANY_ROUTE, NodeState.BLOCKED)
    sched.settle()
    assert sched.state("b") is NodeState.READY
    assert sched.ready_count == 1
    assert sched.take([ANY_ROUTE]) == "b"


def test_restored_blocked_task_inherits_into_restored_prerequisites() -> None:
    """F-20/F-26: inheritance is rebuilt on restore."""
    sched, _ = make()
    sched.restore("p", LOW, (), ANY_ROUTE, NodeState.BLOCKED)
    sched.restore("q", LOW, (), ANY_ROUTE, NodeState.RUNNING)
    sched.restore("u", HIGH, ("q", "p"), ANY_ROUTE, NodeState.BLOCKED)
    sched.settle()
    assert sched.effective_priority("q") == HIGH
    assert sched.effective_priority("p") == HIGH


# ---------------------------------------------------------------------------- bookkeeping
def test_waiting_and_ready_counts_through_a_lifecycle() -> None:
    """F-13/F-08: waiting = blocked + ready + held; ready = ready only."""
    sched, _ = make()

    def counts() -> tuple[int, int]:
        return sched.waiting_count, sched.ready_count

    assert counts() == (0, 0)
    add(sched, "a")
    assert counts() == (1, 1)
    add(sched, "b", deps=["a"])
    assert counts() == (2, 1)
    sched.add([NewTask("c", 1), NewTask("d", 1, ("c",))])
    assert counts() == (4, 2)
    assert sched.take([ANY_ROUTE]) == "c"
    assert counts() == (3, 1)
    sched.hold("c")
    assert counts() == (4, 1)
    sched.release("c")
    assert counts() == (4, 2)
    assert sched.take([ANY_ROUTE]) == "c"
    sched.complete("c")
    assert counts() == (3, 2)
    sched.cancel("d", "x")
    assert counts() == (2, 1)
    assert sched.take([ANY_ROUTE]) == "a"
    sched.requeue("a")
    assert counts() == (2, 1)
    assert sched.take([ANY_ROUTE]) == "a"
    sched.fail("a", "boom")
    assert counts() == (0, 0)
    sched.revive("a")
    assert counts() == (1, 1)
    sched.revive("b")
    assert counts() == (2, 1)
    run(sched, "a")
    assert counts() == (1, 1)
    run(sched, "b")
    assert counts() == (0, 0)
    assert "a" in sched
    assert "zzz" not in sched


# ---------------------------------------------------------------------------- inheritance withdrawn
def test_inheritance_is_withdrawn_when_the_urgent_waiter_is_cancelled() -> None:
    """F-26/F-03: the inherited priority comes from tasks that *wait* for a prerequisite (module
    docstring). Once the urgent waiter is cancelled nothing urgent waits any more, so the LOW
    prerequisite must stop jumping ahead of MEDIUM work."""
    sched, _ = make()
    add(sched, "prereq", LOW)
    add(sched, "medium", MEDIUM)
    add(sched, "urgent", HIGH, ["prereq"])
    assert sched.effective_priority("prereq") == HIGH
    sched.cancel("urgent", "not needed any more")
    assert sched.effective_priority("prereq") == LOW
    assert drain(sched) == ["medium", "prereq"]


def test_inheritance_is_withdrawn_when_the_waiter_fails_through_another_prerequisite() -> None:
    """F-26/F-10: a waiter failed by the cascade from one prerequisite no longer lends its
    urgency to its other prerequisites."""
    sched, _ = make()
    add(sched, "doomed", LOW)
    add(sched, "slow", LOW)
    add(sched, "medium", MEDIUM)
    add(sched, "urgent", HIGH, ["doomed", "slow"])
    assert sched.effective_priority("slow") == HIGH
    assert sched.take([ANY_ROUTE]) == "doomed"
    sched.fail("doomed", "boom")
    assert sched.state("urgent") is NodeState.FAILED
    assert sched.effective_priority("slow") == LOW
    assert drain(sched) == ["medium", "slow"]


def test_revived_task_does_not_keep_urgency_of_dependents_that_ended() -> None:
    """F-26/F-28: a re-queued task is ordered by its own priority when nothing waits for it."""
    sched, _ = make()
    add(sched, "t", LOW)
    add(sched, "urgent", HIGH, ["t"])
    sched.fail("t", "boom")
    assert sched.state("urgent") is NodeState.FAILED
    add(sched, "medium", MEDIUM)
    sched.revive("t")
    assert sched.effective_priority("t") == LOW
    assert drain(sched) == ["medium", "t"]
