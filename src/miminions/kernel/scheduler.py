"""The task scheduler: priorities, aging, dependencies and routing. Pure: no I/O, no asyncio.

Ordering. A ready task's *order key* is ``inherited_priority * aging_seconds + ready_at``:
one priority level is worth ``aging_seconds`` of waiting. Comparing two tasks' effective
priorities ``p - (now - ready_at) / aging_seconds`` gives the same order at any ``now``, so the
key is fixed when the task becomes ready and a plain heap keeps aged order. Equal keys fall
back to submission order (FIFO). The effective priority shown in status is
``max(0, inherited - floor(waited / aging_seconds))``.

Inheritance. A task's *inherited* priority is the most urgent of its own and that of every
task that (transitively) waits for it, so a prerequisite of urgent work becomes urgent.

Custom order keys. A key function given to :class:`Scheduler` may raise: every operation
computes the keys it needs before it changes anything, so an operation that raises leaves
the scheduler as it was (a batch :meth:`Scheduler.add` is undone as a whole).

Routing. A task targets one agent (route ``"a:<id>"``), a group (``"g:<name>"``) or any agent
(``""``). Each route has its own heap; an agent takes the best task of the three routes it
serves.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from miminions.kernel.errors import (
    AlreadyExistsError,
    DependencyCycleError,
    InvalidStateError,
    NotFoundError,
    QueueFullError,
)
from miminions.kernel.order_index import OrderIndex

ANY_ROUTE = ""


def agent_route(agent_id: str) -> str:
    """The route of tasks targeted at one agent."""
    return "a:" + agent_id


def group_route(group: str) -> str:
    """The route of tasks targeted at a group."""
    return "g:" + group


def route_for(agent_id: str | None, group: str | None) -> str:
    """The route of a task with the given targets (agent wins over group)."""
    if agent_id is not None:
        return agent_route(agent_id)
    if group is not None:
        return group_route(group)
    return ANY_ROUTE


class NodeState(enum.Enum):
    """The scheduler's view of a task; finer than TaskStatus where dispatch needs it."""

    BLOCKED = "blocked"
    READY = "ready"
    HELD = "held"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


WAITING_STATES = frozenset({NodeState.BLOCKED, NodeState.READY, NodeState.HELD})
FINAL_STATES = frozenset({NodeState.DONE, NodeState.FAILED, NodeState.CANCELLED})


# Shared, never mutated: most tasks have no prerequisites or dependents, and finished tasks
# drop theirs, so they hold no containers of their own for the garbage collector to scan.
_NO_WAIT: set[str] = set()
_NO_DEPENDENTS: list[str] = []


class _Node:
    __slots__ = (
        "dependents",
        "inherited",
        "key",
        "prerequisites",
        "priority",
        "ready_at",
        "route",
        "seq",
        "state",
        "task_id",
        "version",
        "waiting_on",
    )

    def __init__(
        self,
        task_id: str,
        priority: int,
        seq: int,
        route: str,
        state: NodeState,
        prerequisites: tuple[str, ...],
    ) -> None:
        self.task_id = task_id
        self.priority = priority
        self.inherited = priority
        self.seq = seq
        self.route = route
        self.state = state
        self.prerequisites = prerequisites
        self.waiting_on = _NO_WAIT
        self.dependents = _NO_DEPENDENTS
        self.ready_at = 0.0
        self.key = 0.0
        self.version = 0

    def wait_for(self, task_id: str) -> None:
        if self.waiting_on is _NO_WAIT:
            self.waiting_on = set()
        self.waiting_on.add(task_id)

    def add_dependent(self, task_id: str) -> None:
        if self.dependents is _NO_DEPENDENTS:
            self.dependents = []
        self.dependents.append(task_id)


# A planned change of a task's inherited priority: (task, level, order key at that level).
_Lowered = tuple[_Node, int, float]

_DONE_NODES: dict[int, _Node] = {}


def _done_node(priority: int) -> _Node:
    """The shared, never mutated stand-in for every completed task of ``priority``."""
    node = _DONE_NODES.get(priority)
    if node is None:
        node = _DONE_NODES[priority] = _Node("", priority, 0, ANY_ROUTE, NodeState.DONE, ())
    return node


class NewTask(NamedTuple):
    """A task to add: its id, base priority, prerequisites and route. (A named tuple:
    thousands are made per batch submit, and a frozen dataclass costs three times as much.)"""

    task_id: str
    priority: int
    dependencies: Sequence[str] = ()
    route: str = ANY_ROUTE


@dataclass(slots=True)
class Change:
    """What an operation did beyond its target: tasks that became ready, and tasks that
    reached a final state because of a prerequisite (id, final state, reason)."""

    ready: list[str] = field(default_factory=list)
    finished: list[tuple[str, NodeState, str]] = field(default_factory=list)


class Scheduler:
    """Priority queue of dependent, routed tasks. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        aging_seconds: float = 1.0,
        max_waiting: int | None = None,
        clock: Callable[[], float],
        order_key: Callable[[int, float], float] | None = None,
    ) -> None:
        if aging_seconds <= 0:
            raise ValueError("aging_seconds must be positive")
        self._aging = aging_seconds
        self._order_key = order_key or self._aged_key
        self._default_order = order_key is None
        self._max_waiting = max_waiting
        self._clock = clock
        self._nodes: dict[str, _Node] = {}
        self._heaps: dict[str, list[tuple[float, int, int, str]]] = {}
        self._seq = 0
        self._waiting = 0
        # Room held for a batch being added in slices (see reserve()).
        self._reserved = 0
        self._ready_count = 0
        # Ranks of ready tasks, built on the first position() query and then kept up to
        # date, so workloads that never ask for positions never pay for it.
        self._ranks: OrderIndex[tuple[float, int]] | None = None

    # ------------------------------------------------------------------ adding
    def check_new(self, tasks: Sequence[NewTask], *, room: bool = True) -> list[NewTask]:
        """Raise if ``tasks`` cannot all be added; change nothing.

        Unknown prerequisites, duplicate ids, cycles (within the batch or a task depending on
        itself) and (unless ``room`` is false) a full queue are rejected. Returns the tasks in
        an order that puts every prerequisite before its dependents (the given order when
        that already holds).
        """
        nodes = self._nodes
        batch_ids: dict[str, NewTask] = {}
        for new in tasks:
            if new.task_id in nodes or new.task_id in batch_ids:
                raise AlreadyExistsError(f"task id {new.task_id!r} is already in use")
            batch_ids[new.task_id] = new
        internal = False
        for new in tasks:
            for dep in new.dependencies:
                if dep in nodes:
                    continue
                if dep == new.task_id:
                    raise DependencyCycleError(f"task {new.task_id!r} cannot depend on itself")
                if dep not in batch_ids:
                    raise NotFoundError(
                        f"task {new.task_id!r} depends on unknown task id {dep!r}; "
                        "submit the prerequisite first or check the id"
                    )
                internal = True
        ordered = self._topological_order(tasks) if internal else list(tasks)
        if room:
            self.check_room(len(tasks))
        return ordered

    def check_room(self, count: int) -> None:
        """Raise QueueFullError unless ``count`` more tasks may wait (the queue limit)."""
        held = self._waiting + self._reserved
        if self._max_waiting is not None and held + count > self._max_waiting:
            booking = (
                f" ({self._reserved} of them held for a batch still being booked)"
                if self._reserved
                else ""
            )
            raise QueueFullError(
                f"the task queue holds {held} waiting tasks{booking} and its limit is "
                f"{self._max_waiting}; wait for tasks to finish or raise "
                "ResourceLimits.max_task_queue_size"
            )

    def now(self) -> float:
        """The scheduler's clock."""
        return self._clock()

    def reserve(self, count: int) -> None:
        """Hold room for ``count`` tasks that :meth:`add` will add later with
        ``reserved=True`` (a batch added in slices); raise QueueFullError if there is none.
        :meth:`unreserve` gives back what will not be added after all."""
        self.check_room(count)
        self._reserved += count

    def unreserve(self, count: int) -> None:
        """Give back room held by :meth:`reserve` for tasks that will not be added."""
        self._reserved -= min(count, self._reserved)

    def add(
        self, tasks: Sequence[NewTask], *, reserved: bool = False, now: float | None = None
    ) -> Change:
        """Add tasks (validated with :meth:`check_new` first, all or nothing). With
        ``reserved``, they take room held by :meth:`reserve` instead of asking for it;
        ``now`` (the scheduler's clock by default) is when they are ready."""
        ordered = self.check_new(tasks, room=not reserved)
        change = Change()
        if now is None:
            now = self._clock()
        # Sequence numbers follow the caller's order (FIFO), not the insertion order.
        first = self._seq + 1
        self._seq += len(tasks)
        # Each insert is all or nothing; when one raises (a custom order key failed), the
        # tasks of the batch inserted before it are taken out again.
        inserted: list[_Node] = []
        undo: list[_Lowered] = []
        try:
            if ordered == tasks or len(tasks) == 1:
                for offset, new in enumerate(ordered):
                    inserted.append(self._insert(new, now, change, first + offset, undo))
            else:
                seqs = {new.task_id: first + i for i, new in enumerate(tasks)}
                for new in ordered:
                    inserted.append(self._insert(new, now, change, seqs[new.task_id], undo))
        except BaseException:
            if inserted:
                self._take_back(inserted, undo)
            raise
        if reserved:
            self.unreserve(len(tasks))
        return change

    def restore(
        self, task_id: str, priority: int, dependencies: Sequence[str], route: str, state: NodeState
    ) -> None:
        """Re-create a task read back from a store, in the given state (no capacity check).

        Tasks must be restored prerequisites first. A waiting task is restored as blocked or
        ready from its prerequisites' states; call :meth:`settle` after the last one.
        """
        if state is NodeState.DONE:
            self._nodes[task_id] = _done_node(priority)
            return
        node = _Node(task_id, priority, self._next_seq(), route, state, tuple(dependencies))
        # Restored tasks start aging afresh (the clock is this process's): a running one
        # re-queued later (requeue keeps the ready time) goes by this one.
        node.ready_at = self._clock()
        prereqs = [self._nodes.get(dep) for dep in dependencies]
        waits = any(p is not None and p.state not in FINAL_STATES for p in prereqs)
        # Keys first (a custom order key may raise): nothing is registered until they are.
        live = state is NodeState.RUNNING or state in WAITING_STATES
        now = self._clock()
        key: float | None = None
        if state in WAITING_STATES and state is not NodeState.HELD and not waits:
            key = self._order_key(node.inherited, now)
        lowered = self._plan_inherit(node, node.inherited) if live else []
        self._nodes[task_id] = node
        for dep, prereq in zip(dependencies, prereqs, strict=True):
            if prereq is None or prereq.state is NodeState.DONE:
                continue
            prereq.add_dependent(task_id)
            if prereq.state not in FINAL_STATES:
                node.wait_for(dep)
        if state in WAITING_STATES:
            self._waiting += 1
            if node.waiting_on:
                node.state = NodeState.BLOCKED
            elif key is not None:  # held tasks wait for release()
                self._make_ready(node, now, key)
        if live:
            self._apply_levels(lowered)

    def settle(self) -> Change:
        """After restoring: fail or cancel waiting tasks whose prerequisite ended badly."""
        change = Change()
        for node in list(self._nodes.values()):
            if node.state in (NodeState.FAILED, NodeState.CANCELLED):
                self._finish_dependents(node, node.state, "", change)
        return change

    def _insert(
        self, new: NewTask, now: float, change: Change, seq: int, undo: list[_Lowered]
    ) -> _Node:
        """Insert one task, all or nothing; what it lowered goes to ``undo``."""
        deps = tuple(new.dependencies)
        node = _Node(new.task_id, new.priority, seq, new.route, NodeState.BLOCKED, deps)
        nodes = self._nodes
        doomed: tuple[NodeState, str] | None = None
        waits = False
        for dep in deps:
            prereq = nodes[dep]
            if prereq.state is NodeState.DONE:
                continue
            waits = True
            if prereq.state in (NodeState.FAILED, NodeState.CANCELLED) and doomed is None:
                doomed = (prereq.state, _dependency_reason(dep, prereq.state))
        # Keys first (a custom order key may raise): nothing changes until they are known.
        key: float | None = None
        lowered: list[_Lowered] = []
        if doomed is None:
            if waits:
                lowered = self._plan_inherit(node, node.inherited)
            else:
                key = self._order_key(node.inherited, now)
        nodes[new.task_id] = node
        self._waiting += 1
        for dep in deps:
            prereq = nodes[dep]
            if prereq.state is not NodeState.DONE:
                prereq.add_dependent(new.task_id)
                node.wait_for(dep)
        if doomed is not None:
            self._set_final(node, doomed[0])
            change.finished.append((node.task_id, doomed[0], doomed[1]))
        elif key is None:
            undo.extend(self._apply_levels(lowered))
        else:
            self._make_ready(node, now, key)
            change.ready.append(node.task_id)
        return node

    def _take_back(self, inserted: list[_Node], undo: list[_Lowered]) -> None:
        """Undo the inserts of a batch that failed part-way (see :meth:`add`)."""
        ids = {node.task_id for node in inserted}
        # The lowered tasks get back the level and key they had (oldest record applied
        # last), without asking the order key again.
        for prereq, inherited, key in reversed(undo):
            if prereq.task_id in ids:
                continue
            prereq.inherited = inherited
            if prereq.state is NodeState.READY:
                self._push(prereq, key)
        for node in reversed(inserted):
            del self._nodes[node.task_id]
            if node.state in WAITING_STATES:
                self._waiting -= 1
            if node.state is NodeState.READY:
                self._leave_ready(node)
            for dep in node.prerequisites:
                before = self._nodes.get(dep)
                if before is not None and node.task_id in before.dependents:
                    before.dependents = [d for d in before.dependents if d != node.task_id]
        # Their heap entries go too: an id given again later must not match a stale entry.
        for heap in self._heaps.values():
            if any(entry[3] in ids for entry in heap):
                heap[:] = [entry for entry in heap if entry[3] not in ids]
                heapq.heapify(heap)

    def _topological_order(self, tasks: Sequence[NewTask]) -> list[NewTask]:
        by_id = {t.task_id: t for t in tasks}
        indegree = {t.task_id: sum(dep in by_id for dep in t.dependencies) for t in tasks}
        children: dict[str, list[str]] = {t.task_id: [] for t in tasks}
        for t in tasks:
            for dep in t.dependencies:
                if dep in by_id:
                    children[dep].append(t.task_id)
        queue = deque(t.task_id for t in tasks if indegree[t.task_id] == 0)
        order: list[NewTask] = []
        while queue:
            current = queue.popleft()
            order.append(by_id[current])
            for child in children[current]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    queue.append(child)
        if len(order) != len(tasks):
            stuck = {task_id for task_id, degree in indegree.items() if degree > 0}
            cycle = _a_cycle(stuck, by_id)
            others = len(stuck) - len(cycle)
            raise DependencyCycleError(
                f"the dependencies of tasks {cycle} form a cycle ({' -> '.join(cycle)} -> "
                f"{cycle[0]}: each depends on the next)"
                + (
                    f"; {others} other task(s) of the batch cannot be ordered either (each "
                    "depends on a cycle)"
                    if others
                    else ""
                )
                + "; a task can only depend on tasks that do not (transitively) depend on it"
            )
        return order

    # ------------------------------------------------------------------ dispatching
    def take(self, routes: Iterable[str]) -> str | None:
        """Pop the most urgent ready task among ``routes`` and mark it running."""
        best_heap: list[tuple[float, int, int, str]] | None = None
        best_route = ""
        for route in routes:
            heap = self._heaps.get(route)
            if not heap:
                continue
            self._drop_stale(heap)
            if heap and (best_heap is None or heap[0] < best_heap[0]):
                best_heap, best_route = heap, route
        if best_heap is None:
            return None
        _, _, _, task_id = heapq.heappop(best_heap)
        if not best_heap:
            del self._heaps[best_route]  # forgotten once empty (see best_per_route)
        node = self._nodes[task_id]
        self._leave_ready(node)
        node.state = NodeState.RUNNING
        self._waiting -= 1
        return task_id

    def best_per_route(self, routes: Iterable[str] | None = None) -> list[tuple[float, int, str]]:
        """(key, seq, route) of the most urgent ready task of every non-empty route, or of
        those among ``routes``. A route found empty is forgotten (its heap is made again by
        its next task), so scanning every route costs what the routes with ready tasks do,
        not every agent ever targeted."""
        heaps = self._heaps
        result = []
        emptied = []
        for route in heaps if routes is None else routes:
            heap = heaps.get(route)
            if heap is None:
                continue
            self._drop_stale(heap)
            if heap:
                key, seq, _, _ = heap[0]
                result.append((key, seq, route))
            else:
                emptied.append(route)
        for route in emptied:
            del heaps[route]
        return result

    @property
    def route_count(self) -> int:
        """How many routes may hold ready tasks (see :meth:`best_per_route`)."""
        return len(self._heaps)

    def peek(self, route: str) -> str | None:
        """The id of the most urgent ready task on ``route``, without taking it."""
        front = self.front(route)
        return None if front is None else front[2]

    def front(self, route: str) -> tuple[float, int, str] | None:
        """(key, seq, task id) of the most urgent ready task on ``route`` (not taken), or
        None; a route found empty is forgotten (see :meth:`best_per_route`)."""
        heap = self._heaps.get(route)
        if heap is None:
            return None
        self._drop_stale(heap)
        if not heap:
            del self._heaps[route]
            return None
        key, seq, _, task_id = heap[0]
        return key, seq, task_id

    def take_id(self, task_id: str) -> None:
        """Mark a ready task running (it was chosen by :meth:`peek`)."""
        node = self._get(task_id)
        if node.state is not NodeState.READY:
            raise InvalidStateError(f"task {task_id!r} is {node.state.value}, not ready")
        self._leave_ready(node)
        node.version += 1
        node.state = NodeState.RUNNING
        self._waiting -= 1

    # ------------------------------------------------------------------ outcomes
    def complete(self, task_id: str) -> Change:
        """A running task completed: release its dependents."""
        node = self._get(task_id)
        self._require(node, NodeState.RUNNING, task_id)
        now = self._clock()
        # Keys of the dependents it releases first (a custom order key may raise).
        keys = {
            dep_id: self._order_key(dependent.inherited, now)
            for dep_id in node.dependents
            if (dependent := self._nodes[dep_id]).state is NodeState.BLOCKED
            and dependent.waiting_on <= {task_id}
        }
        node.state = NodeState.DONE
        change = Change()
        for dep_id in node.dependents:
            dependent = self._nodes[dep_id]
            dependent.waiting_on.discard(task_id)
            key = keys.pop(dep_id, None)  # once, even for a task listing it twice
            if key is not None:
                self._make_ready(dependent, now, key)
                change.ready.append(dep_id)
        # A done task never changes again: a shared stand-in keeps what queries need (its
        # state and priority) and frees the node for the garbage collector.
        self._nodes[task_id] = _done_node(node.priority)
        return change

    def fail(self, task_id: str, reason: str) -> Change:
        """A task failed for good: fail every waiting dependent, transitively."""
        return self._end(task_id, NodeState.FAILED, reason)

    def cancel(self, task_id: str, reason: str) -> Change:
        """Cancel a waiting or running task and, transitively, its waiting dependents."""
        return self._end(task_id, NodeState.CANCELLED, reason)

    def hold(self, task_id: str) -> None:
        """A running task waits before its retry: it is waiting but not ready."""
        node = self._get(task_id)
        self._require(node, NodeState.RUNNING, task_id)
        node.state = NodeState.HELD
        self._waiting += 1

    def release(self, task_id: str) -> bool:
        """A held task's wait is over: make it ready. False if it was not held any more."""
        node = self._nodes.get(task_id)
        if node is None or node.state is not NodeState.HELD:
            return False
        now = self._clock()
        self._make_ready(node, now, self._order_key(node.inherited, now))
        return True

    def requeue(self, task_id: str) -> None:
        """A running task was interrupted (not failed): it is ready again at once, in the
        place it had. It keeps its ready time, so it goes before the tasks of its priority
        that became ready after it, and the time it ran counts as waiting for its aging (a
        task restored after a restart counts from its restoring)."""
        node = self._get(task_id)
        self._require(node, NodeState.RUNNING, task_id)
        key = self._order_key(node.inherited, node.ready_at)
        self._waiting += 1
        self._make_ready(node, node.ready_at, key)

    def revive(self, task_id: str) -> Change:
        """A failed or cancelled task is run again (dead-letter re-queue); raises (changing
        nothing) while a prerequisite of it is failed or cancelled, or the queue is full."""
        node = self._get(task_id)
        if node.state not in (NodeState.FAILED, NodeState.CANCELLED):
            raise InvalidStateError(
                f"task {task_id!r} is {node.state.value}; only failed or cancelled tasks can "
                "be re-queued"
            )
        dead = [
            dep
            for dep in node.prerequisites
            if self._nodes[dep].state in (NodeState.FAILED, NodeState.CANCELLED)
        ]
        if dead:
            raise InvalidStateError(
                f"task {task_id!r} cannot run again while its prerequisite(s) {dead} are "
                "failed or cancelled; re-queue those first"
            )
        self.check_room(1)  # it waits again, like a new task
        waiting_on = {
            dep for dep in node.prerequisites if self._nodes[dep].state is not NodeState.DONE
        }
        # Keys first (a custom order key may raise): nothing changes until they are known.
        now = self._clock()
        key = None if waiting_on else self._order_key(node.priority, now)
        lowered = self._plan_inherit(node, node.priority) if waiting_on else []
        node.inherited = node.priority
        self._waiting += 1
        change = Change()
        node.waiting_on = waiting_on
        if key is None:
            node.state = NodeState.BLOCKED
            self._apply_levels(lowered)
        else:
            self._make_ready(node, now, key)
            change.ready.append(task_id)
        return change

    def _end(self, task_id: str, final: NodeState, reason: str) -> Change:
        node = self._get(task_id)
        if node.state in FINAL_STATES:
            raise InvalidStateError(f"task {task_id!r} is already {node.state.value}")
        cascade = self._cascade(node, final, reason)
        # Keys first (a custom order key may raise): nothing changes until they are known.
        raised = self._plan_withdraw({node, *(dependent for dependent, _ in cascade)})
        self._set_final(node, final)
        change = Change()
        for dependent, why in cascade:
            self._set_final(dependent, final)
            change.finished.append((dependent.task_id, final, why))
        self._apply_levels(raised)
        return change

    def _finish_dependents(
        self, node: _Node, final: NodeState, reason: str, change: Change
    ) -> None:
        for dependent, why in self._cascade(node, final, reason):
            self._set_final(dependent, final)
            change.finished.append((dependent.task_id, final, why))

    def _cascade(self, node: _Node, final: NodeState, reason: str) -> list[tuple[_Node, str]]:
        """The waiting tasks that end with ``node`` (transitively), each with its reason;
        changes nothing."""
        found: list[tuple[_Node, str]] = []
        seen: set[str] = set()
        stack = [node]
        while stack:
            current = stack.pop()
            why = _dependency_reason(current.task_id, final, reason if current is node else "")
            for dep_id in current.dependents:
                dependent = self._nodes[dep_id]
                if dependent.state not in WAITING_STATES or dep_id in seen:
                    continue
                seen.add(dep_id)
                found.append((dependent, why))
                stack.append(dependent)
        return found

    def _set_final(self, node: _Node, final: NodeState) -> None:
        if node.state in WAITING_STATES:
            self._waiting -= 1
        if node.state is NodeState.READY:
            self._leave_ready(node)
            node.version += 1
        node.state = final
        node.inherited = node.priority  # nothing waits for it now (as after a restart)

    # ------------------------------------------------------------------ queries
    def state(self, task_id: str) -> NodeState:
        """The scheduler state of a task."""
        return self._get(task_id).state

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._nodes

    def waiting_on(self, task_id: str) -> list[str]:
        """Unfinished prerequisites of a task, in the order they were given."""
        node = self._get(task_id)
        return [dep for dep in node.prerequisites if dep in node.waiting_on]

    def dependents(self, task_id: str) -> list[str]:
        """Tasks that list ``task_id`` among their prerequisites."""
        return list(self._get(task_id).dependents)

    def route(self, task_id: str) -> str:
        """The route of a task."""
        return self._get(task_id).route

    def effective_priority(self, task_id: str) -> int:
        """Inherited priority minus one level per ``aging_seconds`` spent ready (>= 0)."""
        node = self._get(task_id)
        if node.state is not NodeState.READY:
            return node.inherited
        aged = math.floor((self._clock() - node.ready_at) / self._aging)
        return max(0, node.inherited - aged)

    def position(self, task_id: str) -> int | None:
        """0-based rank of a ready task among all ready tasks; None if it is not ready."""
        node = self._get(task_id)
        if node.state is not NodeState.READY:
            return None
        if self._ranks is None:
            self._ranks = OrderIndex()
            self._ranks.bulk_load(
                (n.key, n.seq) for n in self._nodes.values() if n.state is NodeState.READY
            )
        return self._ranks.rank((node.key, node.seq))

    def rank_among(self, task_id: str, routes: Iterable[str]) -> int | None:
        """0-based rank of a ready task among the ready tasks of ``routes`` only (those of
        the agents that may run it: tasks no such agent takes do not hold it back); None
        if it is not ready."""
        node = self._get(task_id)
        if node.state is not NodeState.READY:
            return None
        routes = set(routes)
        if routes.issuperset(self._heaps):
            return self.position(task_id)
        mine = (node.key, node.seq)
        nodes = self._nodes
        ahead = 0
        for route in routes:
            for key, seq, version, other_id in self._heaps.get(route, ()):
                if (key, seq) < mine:
                    other = nodes[other_id]
                    ahead += other.version == version and other.state is NodeState.READY
        return ahead

    @property
    def waiting_count(self) -> int:
        """Tasks blocked, ready or held (they count against the queue limit)."""
        return self._waiting

    @property
    def reserved_count(self) -> int:
        """Queue room held by :meth:`reserve` for tasks not added yet (it counts against
        the queue limit too)."""
        return self._reserved

    @property
    def default_order(self) -> bool:
        """Whether ready tasks go by the built-in aged order key (no custom one)."""
        return self._default_order

    @property
    def ready_count(self) -> int:
        """Tasks ready to run now."""
        return self._ready_count

    # ------------------------------------------------------------------ internals
    def _get(self, task_id: str) -> _Node:
        try:
            return self._nodes[task_id]
        except KeyError:
            raise NotFoundError(f"no task with id {task_id!r}") from None

    @staticmethod
    def _require(node: _Node, state: NodeState, task_id: str) -> None:
        # (The id given: a finished task's node is shared, and has none.)
        if node.state is not state:
            raise InvalidStateError(
                f"task {task_id!r} is {node.state.value}, expected {state.value}"
            )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _make_ready(self, node: _Node, now: float, key: float) -> None:
        """Mark ``node`` ready at ``now`` under ``key`` (computed by the caller beforehand,
        as the order key may raise)."""
        node.state = NodeState.READY
        node.ready_at = now
        self._ready_count += 1
        self._push(node, key)

    def _push(self, node: _Node, key: float) -> None:
        node.version += 1
        ranks = self._ranks
        if ranks is not None:
            ranks.discard((node.key, node.seq))  # a re-push (inheritance) moves the key
        node.key = key
        heap = self._heaps.get(node.route)
        if heap is None:
            heap = self._heaps[node.route] = []
        heapq.heappush(heap, (node.key, node.seq, node.version, node.task_id))
        if ranks is not None:
            ranks.add((node.key, node.seq))

    def _aged_key(self, priority: int, ready_at: float) -> float:
        return priority * self._aging + ready_at

    def _leave_ready(self, node: _Node) -> None:
        self._ready_count -= 1
        if self._ranks is not None:
            self._ranks.discard((node.key, node.seq))

    def _drop_stale(self, heap: list[tuple[float, int, int, str]]) -> None:
        nodes = self._nodes
        while heap:
            _, _, version, task_id = heap[0]
            node = nodes[task_id]
            if node.version == version and node.state is NodeState.READY:
                return
            heapq.heappop(heap)

    def _plan_withdraw(self, ended: set[_Node]) -> list[_Lowered]:
        """Tasks are about to end: their prerequisites no longer inherit their urgency.
        Returns the new levels (and keys) for :meth:`_apply_levels`; changes nothing."""
        levels: dict[_Node, int] = {}
        stack = [self._nodes[dep] for node in ended for dep in node.prerequisites]
        while stack:
            prereq = stack.pop()
            if prereq.state in FINAL_STATES or prereq in ended:
                continue
            inherited = prereq.priority
            for dep_id in prereq.dependents:
                dependent = self._nodes[dep_id]
                if (
                    dependent.state is NodeState.BLOCKED
                    and dependent not in ended
                    and prereq.task_id in dependent.waiting_on
                ):
                    inherited = min(inherited, levels.get(dependent, dependent.inherited))
            if inherited == levels.get(prereq, prereq.inherited):
                continue
            levels[prereq] = inherited
            stack.extend(self._nodes[dep] for dep in prereq.prerequisites)
        return self._with_keys(levels)

    def _plan_inherit(self, node: _Node, level: int) -> list[_Lowered]:
        """The unfinished prerequisites of ``node`` (of inherited priority ``level``),
        transitively, lowered to ``level``: for :meth:`_apply_levels`; changes nothing."""
        levels: dict[_Node, int] = {}
        stack = [(node, level)]
        while stack:
            current, current_level = stack.pop()
            for dep in current.prerequisites:
                prereq = self._nodes.get(dep)
                if prereq is None or prereq.state in FINAL_STATES:
                    continue
                if levels.get(prereq, prereq.inherited) <= current_level:
                    continue
                levels[prereq] = current_level
                stack.append((prereq, current_level))
        return self._with_keys(levels)

    def _with_keys(self, levels: dict[_Node, int]) -> list[_Lowered]:
        """(node, new level, new key) for each planned level change; the key is computed
        here, before anything changes, and only for ready tasks (the others have none)."""
        return [
            (
                node,
                level,
                self._order_key(level, node.ready_at)
                if node.state is NodeState.READY
                else node.key,
            )
            for node, level in levels.items()
        ]

    def _apply_levels(self, planned: list[_Lowered]) -> list[_Lowered]:
        """Apply planned level changes; return what they replaced (for an undo)."""
        replaced: list[_Lowered] = []
        for node, level, key in planned:
            replaced.append((node, node.inherited, node.key))
            node.inherited = level
            if node.state is NodeState.READY:
                self._push(node, key)
        return replaced


def _dependency_reason(task_id: str, final: NodeState, reason: str = "") -> str:
    verb = "failed" if final is NodeState.FAILED else "was cancelled"
    return f"prerequisite task {task_id} {verb}" + (f": {reason}" if reason else "")


def _a_cycle(stuck: set[str], by_id: dict[str, NewTask]) -> list[str]:
    """One dependency cycle among ``stuck``, the batch's tasks a topological sort could not
    order (each waits on a prerequisite of the batch that is stuck too), in dependency
    order from its smallest id."""
    current = min(stuck)
    seen: dict[str, int] = {}
    path: list[str] = []
    while current not in seen:
        seen[current] = len(path)
        path.append(current)
        current = min(dep for dep in by_id[current].dependencies if dep in stuck)
    cycle = path[seen[current] :]
    start = cycle.index(min(cycle))
    return cycle[start:] + cycle[:start]


__all__ = [
    "ANY_ROUTE",
    "Change",
    "NewTask",
    "NodeState",
    "Scheduler",
    "agent_route",
    "group_route",
    "route_for",
]
