"""Every task of a runtime and its transitions: submit, start, complete, fail, retry, cancel.

The book is the in-memory view status queries read (no database round trip) and the one
place a task's status changes. Each change is queued to the store (group commit) and logged
as an event; waiters of ``wait_for_task`` are woken once the final state is committed.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

from miminions.kernel.errors import (
    AlreadyExistsError,
    InvalidStateError,
    MiminionsError,
    NotFoundError,
    RuntimeNotRunningError,
    ValidationError,
    WaitTimeoutError,
    shown,
)
from miminions.kernel.events import EventLog
from miminions.kernel.interfaces import Store
from miminions.kernel.models import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    DeadLetter,
    EventType,
    ResourceLimits,
    Severity,
    Task,
    TaskStatus,
    fast_construct,
    task_snapshot,
)
from miminions.kernel.scheduler import Change, NewTask, NodeState, Scheduler, route_for
from miminions.kernel.sliced_booking import SLICE_SIZE, SlicedBooking, slices_of
from miminions.kernel.supervisor import retry_delay
from miminions.kernel.task_input import (
    MAX_RETRIES,
    TaskRequest,
    describe_error,
    new_task_ids,
    to_json_value,
)
from miminions.kernel.tracing import Carrier
from miminions.kernel.validation import check_name, check_seconds, check_utf8

_log = logging.getLogger("miminions.tasks")

if TYPE_CHECKING:
    from miminions.kernel.interfaces import Executor

_FINAL_STATUS = {NodeState.FAILED: TaskStatus.FAILED, NodeState.CANCELLED: TaskStatus.CANCELLED}
_DURATION_SAMPLES = 10_000


def _depends_within(tasks: Sequence[Task]) -> bool:
    """Whether a task of the batch depends on another task of the same batch."""
    if not any(task.dependencies for task in tasks):
        return False
    ids = {task.task_id for task in tasks}
    return any(dep in ids for task in tasks for dep in task.dependencies)


class TaskBook:
    """The tasks of one runtime (see the module docstring)."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        store: Store,
        events: EventLog,
        backoff_base: float,
        backoff_max: float,
        default_timeout: float | None,
        agent_exists: Callable[[str], bool],
    ) -> None:
        self.scheduler = scheduler
        self._store = store
        self._events = events
        self._backoff = (backoff_base, backoff_max)
        self._default_timeout = default_timeout
        self._agent_exists = agent_exists
        self.executor: Executor | None = None
        self.tasks: dict[str, Task] = {}
        self.by_idempotency_key: dict[str, str] = {}
        self.dead_letters: dict[str, DeadLetter] = {}
        # A waiter is woken with the awaitable of the commit holding the final state; the
        # waiting coroutine awaits it, so no task or callback is made per finished task.
        self._waiters: dict[str, list[asyncio.Future[Awaitable[None]]]] = {}
        # The store's refusal of a task's last write (see _put), until a later one is taken.
        self._refused: dict[str, _Refused] = {}
        self._started_mono: dict[str, float] = {}
        self.durations: deque[float] = deque(maxlen=_DURATION_SAMPLES)
        self.mean_duration: float | None = None
        self.counters = {"submitted": 0, "completed": 0, "failed": 0, "cancelled": 0, "retried": 0}
        # Kept up to date on every transition so queue status is O(1), not a scan.
        self.status_counts: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        self.pending_by_priority: Counter[int] = Counter()
        # A big batch being booked a slice at a time (see submit).
        self._booking: SlicedBooking[tuple[Task, NewTask]] | None = None

    # ------------------------------------------------------------------ lookups
    def get(self, task_id: str) -> Task:
        """The live task (internal: callers outside the kernel get copies)."""
        try:
            return self.tasks[task_id]
        except (KeyError, TypeError):
            if self._booking is not None and isinstance(task_id, str):
                # Perhaps a task of a batch still being booked (its caller may know the
                # ids it gave): book the rest now, so the task is found as it would be
                # had the batch been booked at once.
                self.finish_booking()
                task = self.tasks.get(task_id)
                if task is not None:
                    return task
            raise NotFoundError(f"no task with id {shown(task_id)}") from None

    # ------------------------------------------------------------------ submit
    async def submit(
        self,
        requests: Sequence[TaskRequest],
        trace: Callable[[int], Carrier | None] | None = None,
    ) -> list[str]:
        """Validate and add tasks (all or nothing); return when they are committed. Once the
        batch is accepted, ``trace(number of new tasks)`` gives the trace context every new
        task carries (see :mod:`miminions.kernel.tracing`): a refused batch draws no trace.

        A batch of more than ``SLICE_SIZE`` tasks of one priority, none depending on
        another of the batch, is checked whole, then booked a slice at a time in its order
        (see :meth:`_may_slice`): its first tasks may start before the call returns."""
        if self._booking is not None:
            await self.booked()
        ids: list[str] = []
        new_tasks: list[Task] = []
        batch_keys: dict[str, str] = {}
        # A request whose idempotency key names a task already there adds nothing; the
        # task_id it was given here stands for that task in the batch's dependencies.
        aliases: dict[str, str] = {}
        now = datetime.now(UTC)
        fresh_ids = iter(new_task_ids(len(requests)))
        for request in requests:
            existing = self._existing_for_key(request.idempotency_key, batch_keys)
            if existing is not None:
                ids.append(existing)
                given = request.task_id
                if (
                    isinstance(given, str)
                    and given
                    and given != existing
                    and aliases.setdefault(given, existing) != existing
                ):
                    raise AlreadyExistsError(
                        f"task id {given!r} is given to more than one request of the batch"
                    )
                continue
            task = self._build(request, now, fresh_ids)
            if request.idempotency_key is not None:
                batch_keys[request.idempotency_key] = task.task_id
            ids.append(task.task_id)
            new_tasks.append(task)
        if not new_tasks:
            await self._store.flush()
            return ids
        if aliases:
            self._resolve_aliases(new_tasks, aliases)
        sched = [
            NewTask(
                task.task_id, task.priority, task.dependencies, route_for(task.agent_id, task.group)
            )
            for task in new_tasks
        ]
        if len(new_tasks) > SLICE_SIZE and self._may_slice(new_tasks):
            await self._submit_in_slices(new_tasks, sched, trace)
            return ids
        change = self.scheduler.add(sched)
        _carry(new_tasks, trace)
        commits, refused = self._book(new_tasks, change)
        # Usually one commit covers the whole batch: the first await waits for it and the
        # others return at once, but each may carry the rejection of its own write.
        for commit in commits:
            await commit
        if refused is not None:
            raise refused
        return ids

    async def _submit_in_slices(
        self,
        new_tasks: list[Task],
        sched: list[NewTask],
        trace: Callable[[int], Carrier | None] | None,
    ) -> None:
        """Accept a big batch at once, then book it a slice at a time (see
        :mod:`miminions.kernel.sliced_booking`); return when all of it is committed."""
        scheduler = self.scheduler
        scheduler.check_new(sched, room=False)  # every check before any slice is booked
        scheduler.reserve(len(sched))
        _carry(new_tasks, trace)
        # Every slice is ready as of now, as the batch would be if booked at once: a later
        # slice must not age less than the first (or fall behind older, less urgent tasks).
        accepted_at = scheduler.now()
        commits: list[Awaitable[None]] = []
        refusals: list[Exception] = []

        def book_slice(part: Sequence[tuple[Task, NewTask]]) -> None:
            change = scheduler.add([new for _, new in part], reserved=True, now=accepted_at)
            made, refused = self._book([task for task, _ in part], change)
            commits.extend(made)
            if refused is not None:
                refusals.append(refused)

        def on_end() -> None:
            self._booking = None

        booking = SlicedBooking(
            slices_of(list(zip(new_tasks, sched, strict=True))),
            book_slice,
            scheduler.unreserve,
            on_end,
        )
        self._booking = booking
        booking.start()
        try:
            await booking.wait()
        except BaseException:
            booking.finish()  # accepted: booked in full, whatever happens to this call
            raise
        if booking.error is not None:
            raise booking.error
        for commit in commits:
            await commit
        if refusals:
            raise refusals[0]

    def _may_slice(self, new_tasks: list[Task]) -> bool:
        """Whether booking ``new_tasks`` a slice at a time, in the batch's order, starts
        them in the order booking them at once would: none depends on another of the
        batch (a slice could then hold a dependent without its prerequisite), all have one
        priority (an urgent task in a late slice could wait behind a less urgent one
        already started) and the built-in order key ranks them (FIFO within a priority;
        a custom key may rank a later ready time first)."""
        priority = new_tasks[0].priority
        return (
            self.scheduler.default_order
            and all(task.priority == priority for task in new_tasks)
            and not _depends_within(new_tasks)
        )

    @property
    def booking(self) -> bool:
        """Whether a big batch is still being booked a slice at a time."""
        return self._booking is not None

    async def booked(self) -> None:
        """Return once no batch is being booked a slice at a time (new submits wait for it,
        so ids, idempotency keys, dependencies and queue room are judged on the whole
        batch)."""
        while self._booking is not None:
            await self._booking.wait()

    def finish_booking(self) -> None:
        """Book at once what is left of a batch being booked a slice at a time (the
        runtime is stopping)."""
        if self._booking is not None:
            self._booking.finish()

    def _book(
        self, new_tasks: list[Task], change: Change
    ) -> tuple[list[Awaitable[None]], Exception | None]:
        """Book tasks the scheduler has just added (``change`` is what adding them did):
        count, store and announce them. Returns their commits and the first write the
        store refused."""
        # From here on the tasks are accepted: they are in the scheduler, so they are
        # booked, counted and announced whatever the store does. A store that fails to
        # take or commit a write makes submit raise that error, but the tasks stay queued
        # and run (their next write stores them); see "the store contract" in plugins.md.
        commits: list[Awaitable[None]] = []
        refused: Exception | None = None
        for task in new_tasks:
            self.tasks[task.task_id] = task
            self._count(task, 1)
            if task.idempotency_key is not None:
                self.by_idempotency_key[task.idempotency_key] = task.task_id
            # (A task without prerequisites is ready at once: no need to ask.)
            if task.dependencies and self.scheduler.state(task.task_id) is NodeState.BLOCKED:
                self._set_status(task, TaskStatus.BLOCKED)
            try:
                commits.append(self._store.put_task(task))
            except Exception as exc:
                refused = refused or exc
        self._events.task_events(
            EventType.TASK_ENQUEUED,
            [(task.task_id, {"name": task.name, "priority": task.priority}) for task in new_tasks],
        )
        self.counters["submitted"] += len(new_tasks)
        self._apply(change)
        if change.ready and self.executor is not None:
            self.executor.wake()
        return commits, refused

    @staticmethod
    def _resolve_aliases(new_tasks: list[Task], aliases: dict[str, str]) -> None:
        """Point the batch's dependencies on an idempotent duplicate (by the ``task_id``
        given to it in the batch) at the task its key resolved to."""
        for task in new_tasks:
            if task.task_id in aliases:
                raise AlreadyExistsError(
                    f"task id {task.task_id!r} is given to more than one request of the batch"
                )
            deps = task.dependencies
            if any(dep in aliases for dep in deps):
                task.__dict__["dependencies"] = [aliases.get(dep, dep) for dep in deps]

    def _existing_for_key(self, key: str | None, batch_keys: dict[str, str]) -> str | None:
        if key is None:
            return None
        if not isinstance(key, str) or not key or len(key) > 1024:
            raise ValidationError(
                "idempotency_key must be a non-empty string of at most 1024 chars"
            )
        check_utf8(key, "idempotency_key")
        return self.by_idempotency_key.get(key) or batch_keys.get(key)

    def _build(
        self,
        request: TaskRequest,
        now: datetime,
        fresh_ids: Iterator[str],
    ) -> Task:
        """The task ``request`` asks for, every value checked (``fresh_ids`` gives its id
        if the request has none).

        Each check has a fast path for the common value first (a plain int, no timeout, no
        dependencies), taken without a call: a batch submit runs this for every task.
        """
        # Every string checked here is stored: one the store cannot encode (check_utf8)
        # must fail now, before the task is in the book, not at commit time.
        name = request.name
        if not isinstance(name, str) or not name or name.isspace():
            raise ValidationError("task name must be a non-empty string")
        if not name.isascii():
            check_utf8(name, "task name")
        task_id = request.task_id
        if task_id is None or task_id == "":
            task_id = next(fresh_ids)
        elif isinstance(task_id, str):
            check_utf8(task_id, "task_id")
        else:
            raise ValidationError(f"task_id must be a string or None, got {shown(task_id)}")
        priority = request.priority
        if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            priority = _checked_priority(priority)
        timeout = request.timeout_seconds
        if timeout is not None:
            timeout = check_seconds(timeout, positive=True)
        retries = request.max_retries
        if type(retries) is not int or not 0 <= retries <= MAX_RETRIES:
            retries = _checked_retries(retries)
        if request.agent_id is not None:
            if not isinstance(request.agent_id, str):
                raise ValidationError(
                    "agent_id must be an agent id (a string) or None, got "
                    f"{shown(request.agent_id)}"
                )
            if not self._agent_exists(request.agent_id):
                raise NotFoundError(
                    f"no agent with id {shown(request.agent_id)}; register it first or target "
                    "a group"
                )
        if request.group is not None:
            check_name(request.group, "group")
        given = request.dependencies
        # (a request's attributes may have been set after it was built: a string is
        # iterable, and was taken as one-letter ids)
        if type(given) is not list and (  # (a list: the usual case, without ABC checks)
            isinstance(given, (str, bytes)) or not isinstance(given, Sequence)
        ):
            raise ValidationError(
                f"dependencies must be a list of task ids, got {type(given).__name__}"
            )
        deps = list(given)
        if deps and any(not isinstance(dep, str) for dep in deps):
            raise ValidationError("dependencies must be a list of task ids (strings)")
        input_data = request.input_data
        if input_data is None:
            input_data = {}
        elif not isinstance(input_data, dict):  # a subclass too (an event's details)
            raise ValidationError(f"input_data must be a dict, got {type(input_data).__name__}")
        else:
            input_data = to_json_value(input_data, "input_data")
        return fast_construct(
            Task,
            {
                "task_id": task_id,
                "name": name,
                "priority": priority,
                "status": TaskStatus.PENDING,
                "input_data": input_data,
                "output_data": None,
                "error_message": None,
                "agent_id": request.agent_id,
                "group": request.group,
                "assigned_agent_id": None,
                "dependencies": deps,
                "retry_count": 0,
                "max_retries": retries,
                "timeout_seconds": timeout,
                "idempotency_key": request.idempotency_key,
                "checkpoint": None,
                "dead_lettered": False,
                "trace_context": None,  # see _carry
                "created_at": now,
                "started_at": None,
                "completed_at": None,
                "effective_priority": None,
                "queue_position": None,
                "estimated_wait_seconds": None,
            },
        )

    # ------------------------------------------------------------------ execution callbacks
    def effective_timeout(
        self, task: Task, agent_limits: ResourceLimits | None = None
    ) -> float | None:
        """The task's own timeout, else the one set in its agent's limits, else the
        runtime default."""
        if task.timeout_seconds is not None:
            return task.timeout_seconds
        if agent_limits is not None and "task_timeout_seconds" in agent_limits.model_fields_set:
            return agent_limits.task_timeout_seconds
        return self._default_timeout

    def started(self, task_id: str, agent_id: str, *, begun: bool = True) -> Task:
        """The executor took ``task_id`` for ``agent_id``; return the live task.

        ``begun`` false: the task was handed to the agent ahead of time (a prefetch
        window): it is ``running`` (taken by that agent) but gets its ``started_at`` and
        its TASK_STARTED event from :meth:`began`, when the agent really begins it.
        """
        task = self.tasks[task_id]
        self._set_status(task, TaskStatus.RUNNING)
        # Hot path: tasks are built with every field set, so plain dict writes are enough
        # (pydantic's __setattr__ would do the same, several times slower).
        fields = task.__dict__
        fields["assigned_agent_id"] = agent_id
        if begun:
            fields["started_at"] = datetime.now(UTC)
            self._started_mono[task_id] = time.monotonic()
            self._put(task)
            self._events.task_event(EventType.TASK_STARTED, task_id, agent_id=agent_id)
        else:
            fields["started_at"] = None
            self._put(task)
        return task

    def began(self, task_id: str) -> None:
        """A task handed over ahead of time is now the one its agent runs."""
        task = self.tasks[task_id]
        if task.status is not TaskStatus.RUNNING or task.started_at is not None:
            return
        task.__dict__["started_at"] = datetime.now(UTC)
        self._started_mono[task_id] = time.monotonic()
        self._put(task)
        self._events.task_event(EventType.TASK_STARTED, task_id, agent_id=task.assigned_agent_id)

    def completed(self, task_id: str, result: Any) -> ValidationError | None:
        """A running task returned ``result``; a result that is not JSON fails the task
        instead (the error is returned so the executor can tell the agent)."""
        task = self.tasks[task_id]
        try:
            output = result if result is None else to_json_value(result, "the task result")
        except ValidationError as exc:
            self.failed(task_id, exc)
            return exc
        self._record_duration(task_id)
        self._set_status(task, TaskStatus.COMPLETED)
        fields = task.__dict__
        fields["output_data"] = output
        fields["error_message"] = None  # earlier attempts' errors stay in the event log
        fields["completed_at"] = datetime.now(UTC)
        self.counters["completed"] += 1
        change = self.scheduler.complete(task_id)
        self._events.task_event(EventType.TASK_COMPLETED, task_id, agent_id=task.assigned_agent_id)
        self._finish(task)
        self._apply(change)
        if change.ready and self.executor is not None:
            self.executor.wake()
        return None

    def failed(
        self, task_id: str, error: BaseException, *, timed_out_after: float | None = None
    ) -> None:
        """A running task raised, timed out (after ``timed_out_after`` seconds) or lost its
        agent: retry it or fail it for good."""
        task = self.tasks[task_id]
        self._record_duration(task_id)
        message = describe_error(error)
        agent_id = task.assigned_agent_id
        if timed_out_after is not None:
            self._events.emit(
                EventType.TASK_TIMEOUT,
                severity=Severity.WARNING,
                agent_id=agent_id,
                task_id=task_id,
                details={"timeout_seconds": timed_out_after},
            )
        task.error_message = message
        if task.retry_count < task.max_retries:
            task.retry_count += 1
            delay = retry_delay(task.retry_count, *self._backoff)
            self._set_status(task, TaskStatus.PENDING)
            self.scheduler.hold(task_id)
            self.counters["retried"] += 1
            self._events.emit(
                EventType.TASK_RETRY_SCHEDULED,
                severity=Severity.WARNING,
                agent_id=agent_id,
                task_id=task_id,
                details={"attempt": task.retry_count, "delay_seconds": delay, "error": message},
            )
            self._put(task)
            if self.executor is not None:
                self.executor.schedule_retry(task_id, delay)
            return
        self._fail_for_good(task, message)

    def _fail_for_good(self, task: Task, message: str) -> None:
        task.error_message = message
        self._set_status(task, TaskStatus.FAILED)
        task.completed_at = datetime.now(UTC)
        task.dead_lettered = True
        self.counters["failed"] += 1
        change = self.scheduler.fail(task.task_id, message)
        self._events.emit(
            EventType.TASK_FAILED,
            severity=Severity.ERROR,
            agent_id=task.assigned_agent_id,
            task_id=task.task_id,
            details={"error": message, "attempts": task.retry_count + 1},
        )
        self._dead_letter(task, message)
        self._finish(task)
        self._apply(change)

    def cancelled(self, task_id: str, reason: str) -> None:
        """A running task was interrupted by ``cancel_task``."""
        task = self.tasks[task_id]
        self._started_mono.pop(task_id, None)
        self._mark_cancelled(task, reason, self.scheduler.cancel(task_id, reason))

    def interrupted(self, task_id: str, reason: str) -> None:
        """A running task was interrupted through no fault of its own (agent stopped,
        runtime shutting down): it goes back to the queue without using up an attempt."""
        task = self.tasks[task_id]
        self._started_mono.pop(task_id, None)
        self._set_status(task, TaskStatus.PENDING)
        self.scheduler.requeue(task_id)
        self._events.emit(
            EventType.TASK_REQUEUED,
            agent_id=task.assigned_agent_id,
            task_id=task_id,
            details={"reason": reason},
        )
        self._put(task)
        if self.executor is not None:
            self.executor.wake()

    def retry_due(self, task_id: str) -> None:
        """A task's retry backoff is over: it is ready again."""
        if self.scheduler.release(task_id) and self.executor is not None:
            self.executor.wake()

    # ------------------------------------------------------------------ user operations
    async def cancel(self, task_id: str, reason: str = "cancelled by user") -> Task:
        """Cancel a pending, blocked or running task; return it once it is cancelled."""
        task = self.get(task_id)
        if task.status.is_terminal:
            raise InvalidStateError(
                f"task {task_id!r} is already {task.status.value}; only pending, blocked or "
                "running tasks can be cancelled"
            )
        state = self.scheduler.state(task_id)
        if state is NodeState.RUNNING and self.executor is not None:
            self.executor.cancel_task(task_id, reason)
        else:
            if state is NodeState.HELD and self.executor is not None:
                self.executor.cancel_retry(task_id)
            self._mark_cancelled(task, reason, self.scheduler.cancel(task_id, reason))
        return await self.wait(task_id, None)

    async def requeue_dead_letter(self, dead_letter_id: str) -> str:
        """Run a dead-lettered task again (fresh retries), with the dependents its failure
        took down; return the task id."""
        letter = self.dead_letters.get(dead_letter_id)
        if letter is None:
            raise NotFoundError(f"no dead letter with id {shown(dead_letter_id)}")
        if letter.kind != "task":
            raise InvalidStateError(
                f"dead letter {shown(dead_letter_id)} is a {letter.kind}, not a task"
            )
        if letter.requeued_at is not None:
            raise InvalidStateError(f"dead letter {shown(dead_letter_id)} was re-queued already")
        task = self.get(letter.ref_id)
        revived = self._revive(task, reset_attempts=True)  # raises before anything changed
        letter.requeued_at = datetime.now(UTC)
        commit = self._put_letter(letter)
        if revived and self.executor is not None:
            self.executor.wake()
        await commit
        return task.task_id

    def _revive(self, task: Task, *, reset_attempts: bool) -> bool:
        """Run ``task`` again, with every task its failure took down that can run again
        now; return whether one of them is ready. Raises before anything changed when
        ``task`` cannot run again or the queue has no room for all of them."""
        plan = self._revival_plan(task)
        if len(plan) > 1:
            self.scheduler.check_room(len(plan))  # revive() checks the first one's room
        any_ready = False
        for revived in plan:  # prerequisites first
            change = self.scheduler.revive(revived.task_id)
            if reset_attempts and revived is task:
                revived.retry_count = 0
            self._set_status(revived, TaskStatus.PENDING if change.ready else TaskStatus.BLOCKED)
            revived.error_message = None
            revived.completed_at = None
            revived.dead_lettered = False
            self._events.emit(
                EventType.TASK_REQUEUED,
                task_id=revived.task_id,
                details={"reason": "re-queued from the dead-letter list"},
            )
            self._put(revived)
            any_ready |= bool(change.ready)
        return any_ready

    def _revival_plan(self, task: Task) -> list[Task]:
        """``task`` and the tasks failed by the cascade that come back with it, each after
        its prerequisites: a dependent comes back with its *last* dead prerequisite, in
        whatever order those are re-queued (while another one is dead it stays failed)."""
        plan = [task]
        planned = {task.task_id}
        for current in plan:  # grows while it is walked
            for dependent_id in self.scheduler.dependents(current.task_id):
                dependent = self.tasks[dependent_id]
                if dependent_id in planned or not _failed_by_cascade(dependent):
                    continue
                if all(
                    dep in planned or not _is_dead(self.tasks.get(dep))
                    for dep in dependent.dependencies
                ):
                    planned.add(dependent_id)
                    plan.append(dependent)
        return plan

    async def wait(self, task_id: str, timeout_seconds: float | None) -> Task:
        """Wait until the task is completed, failed or cancelled and that is committed."""
        task = self.get(task_id)
        timeout_seconds = check_seconds(timeout_seconds)
        if not task.status.is_terminal:
            waiter: asyncio.Future[Awaitable[None]] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(task_id, []).append(waiter)
            try:
                # The task as it finished (a re-queue while its commit is awaited does not
                # show), copied while the commit is on its way.
                if timeout_seconds is None:
                    commit = await waiter
                    finished = task_snapshot(task)
                    await commit
                else:
                    async with asyncio.timeout(timeout_seconds):
                        commit = await waiter
                        finished = task_snapshot(task)
                        await commit
            except TimeoutError:
                if task.status.is_terminal:  # it finished: its final write is late
                    raise _not_stored_in_time(
                        f"task {task_id!r} finished ({task.status.value})", timeout_seconds
                    ) from None
                raise WaitTimeoutError(
                    f"task {task_id!r} is still {task.status.value} after {timeout_seconds} s; "
                    "it keeps running (use explain() to see what holds it)"
                ) from None
            finally:
                waiters = self._waiters.get(task_id)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[task_id]
            return finished
        finished = task_snapshot(task)
        await self._store.flush()
        self._raise_refusal([task_id])
        return finished

    def _raise_refusal(self, task_ids: Iterable[str]) -> None:
        """Raise the store's refusal of the last write of one of ``task_ids``, if any: a
        wait must not report as stored a final state the store refused."""
        if self._refused:
            for task_id in task_ids:
                refusal = self._refused.get(task_id)
                if refusal is not None:
                    refusal.throw()

    async def wait_many(self, task_ids: Sequence[str], timeout_seconds: float | None) -> list[Task]:
        """:meth:`wait` for many tasks at once: one future for all of them instead of one
        per task, then one flush. Returns the tasks in the order of ``task_ids``."""
        if isinstance(task_ids, str | bytes) or not isinstance(task_ids, Iterable):
            raise ValidationError(
                f"task_ids must be a list of task ids, got {type(task_ids).__name__}"
            )
        tasks = [self.get(task_id) for task_id in task_ids]
        timeout_seconds = check_seconds(timeout_seconds)
        pending = {task.task_id for task in tasks if not task.status.is_terminal}
        if pending:
            group = _GroupWait(len(pending))
            for task_id in pending:
                self._waiters.setdefault(task_id, []).append(group)  # type: ignore[arg-type]
            try:
                async with asyncio.timeout(timeout_seconds):
                    await group.all_done
            except TimeoutError:
                left = sum(1 for t in tasks if not t.status.is_terminal)
                raise WaitTimeoutError(
                    f"{left} of {len(tasks)} tasks are not finished after {timeout_seconds} s; "
                    "they keep running"
                ) from None
            finally:
                for task_id in pending:
                    waiters = self._waiters.get(task_id)
                    if waiters is not None and group in waiters:  # type: ignore[comparison-overlap]
                        waiters.remove(group)  # type: ignore[arg-type]
                        if not waiters:
                            del self._waiters[task_id]
        # The tasks as they finished, copied while their last commit is on its way. Every
        # final write was queued before this flush: it returns once all are committed.
        finished = [task_snapshot(task) for task in tasks]
        await self._store.flush()
        self._raise_refusal(task.task_id for task in tasks)
        return finished

    def close(self) -> None:
        """The runtime stopped: every ``wait_for_task`` still waiting gets an error."""
        waiters, self._waiters = self._waiters, {}
        for task_id, futures in waiters.items():
            status = self.tasks[task_id].status.value
            for waiter in futures:
                if not waiter.done():
                    waiter.set_exception(
                        RuntimeNotRunningError(
                            f"the runtime stopped while task {task_id!r} was {status}; it is "
                            "stored and continues when a runtime starts on the same database"
                        )
                    )

    def save_checkpoint(self, task_id: str, state: Any) -> Awaitable[None]:
        """Record an agent's checkpoint for a task (see ``AgentContext.checkpoint``)."""
        task = self.get(task_id)
        task.checkpoint = to_json_value(state, "checkpoint state")
        return self._store.put_task(task)

    # ------------------------------------------------------------------ recovery
    def restore(self, stored: Iterable[Task], dead_letters: Iterable[DeadLetter]) -> dict[str, int]:
        """Load tasks read back from the store after a restart (prerequisites first).

        Tasks that were running are re-queued with the attempt counted, or failed when out
        of retries. A task stored as running with no ``started_at`` had only been handed to
        its agent ahead of time (see :meth:`started`) and never begun: it goes back to the
        queue without an attempt counted. Returns counts of what was done for the
        RUNTIME_RECOVERED event: ``restored``, ``requeued`` (attempt counted), ``unstarted``
        (re-queued, no attempt counted) and ``failed``.
        """
        states = {
            TaskStatus.PENDING: NodeState.READY,
            TaskStatus.BLOCKED: NodeState.BLOCKED,
            TaskStatus.RUNNING: NodeState.RUNNING,
            TaskStatus.COMPLETED: NodeState.DONE,
            TaskStatus.FAILED: NodeState.FAILED,
            TaskStatus.CANCELLED: NodeState.CANCELLED,
        }
        report = {"restored": 0, "requeued": 0, "unstarted": 0, "failed": 0}
        interrupted: list[Task] = []
        for task in _prerequisites_first(stored):
            self.tasks[task.task_id] = task
            self._count(task, 1)
            if task.idempotency_key is not None:
                self.by_idempotency_key[task.idempotency_key] = task.task_id
            route = route_for(task.agent_id, task.group)
            self.scheduler.restore(
                task.task_id, task.priority, task.dependencies, route, states[task.status]
            )
            report["restored"] += 1
            if task.status is TaskStatus.RUNNING:
                interrupted.append(task)
            elif not task.status.is_terminal:
                self._set_status(
                    task,
                    TaskStatus.BLOCKED
                    if self.scheduler.state(task.task_id) is NodeState.BLOCKED
                    else TaskStatus.PENDING,
                )
        for letter in dead_letters:
            self.dead_letters[letter.dead_letter_id] = letter
        for task in interrupted:
            if task.started_at is None:  # prefetched, never begun: nothing was attempted
                self._requeue_restored(task, "runtime restarted before the task began")
                report["unstarted"] += 1
                continue
            task.retry_count += 1
            if task.retry_count > task.max_retries:
                task.retry_count = task.max_retries
                self._fail_for_good(
                    task,
                    "interrupted: the runtime stopped while this task ran and it has no "
                    "retries left",
                )
                report["failed"] += 1
            else:
                self._requeue_restored(task, "runtime restarted while the task ran")
                report["requeued"] += 1
        self._apply(self.scheduler.settle())
        return report

    def _requeue_restored(self, task: Task, reason: str) -> None:
        """Put a task stored as running back in the queue (``attempt``: attempts used)."""
        self._set_status(task, TaskStatus.PENDING)
        self.scheduler.requeue(task.task_id)
        self._events.emit(
            EventType.TASK_REQUEUED,
            task_id=task.task_id,
            details={"reason": reason, "attempt": task.retry_count},
        )
        self._put(task)

    # ------------------------------------------------------------------ internals
    def _count(self, task: Task, delta: int) -> None:
        status = task.status
        self.status_counts[status] += delta
        if status is TaskStatus.PENDING:
            self._count_pending(task.priority, delta)

    def _count_pending(self, priority: int, delta: int) -> None:
        by_priority = self.pending_by_priority
        by_priority[priority] += delta
        if not by_priority[priority]:
            del by_priority[priority]

    def _set_status(self, task: Task, status: TaskStatus) -> None:
        # Twice per task on the hot path: the counters are moved here, not through _count.
        fields = task.__dict__
        old = fields["status"]
        if old is status:
            return
        counts = self.status_counts
        counts[old] -= 1
        counts[status] += 1
        fields["status"] = status
        if old is TaskStatus.PENDING:
            self._count_pending(task.priority, -1)
        elif status is TaskStatus.PENDING:
            self._count_pending(task.priority, 1)

    def _mark_cancelled(self, task: Task, reason: str, change: Change) -> None:
        self._set_status(task, TaskStatus.CANCELLED)
        task.error_message = reason
        task.completed_at = datetime.now(UTC)
        self.counters["cancelled"] += 1
        self._events.emit(
            EventType.TASK_CANCELLED,
            task_id=task.task_id,
            agent_id=task.assigned_agent_id,
            details={"reason": reason},
        )
        self._finish(task)
        self._apply(change)

    def _apply(self, change: Change) -> None:
        """Bring ready and cascaded tasks' statuses in line with the scheduler."""
        for task_id in change.ready:
            task = self.tasks[task_id]
            if task.status is TaskStatus.BLOCKED:
                self._set_status(task, TaskStatus.PENDING)
                self._put(task)
        for task_id, final, reason in change.finished:
            task = self.tasks[task_id]
            if self.executor is not None and task.status is TaskStatus.PENDING:
                self.executor.cancel_retry(task_id)
            self._set_status(task, _FINAL_STATUS[final])
            task.error_message = reason
            task.completed_at = datetime.now(UTC)
            counter = "failed" if final is NodeState.FAILED else "cancelled"
            self.counters[counter] += 1
            self._events.emit(
                EventType.TASK_FAILED if final is NodeState.FAILED else EventType.TASK_CANCELLED,
                severity=Severity.ERROR if final is NodeState.FAILED else Severity.INFO,
                task_id=task_id,
                details={"reason": reason},
            )
            self._finish(task)

    def _finish(self, task: Task) -> None:
        commit = self._put(task)
        waiters = self._waiters.pop(task.task_id, None)
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(commit)

    def _dead_letter(self, task: Task, reason: str) -> None:
        letter = DeadLetter.model_construct(
            dead_letter_id="task:" + task.task_id,
            kind="task",
            ref_id=task.task_id,
            reason=reason,
            payload={"name": task.name, "attempts": task.retry_count + 1},
            created_at=datetime.now(UTC),
            requeued_at=None,
        )
        self.record_dead_letter(letter)
        self._events.emit(
            EventType.TASK_DEAD_LETTERED,
            severity=Severity.WARNING,
            agent_id=task.assigned_agent_id,
            task_id=task.task_id,
            details={"dead_letter_id": letter.dead_letter_id, "reason": reason},
        )

    def record_dead_letter(self, letter: DeadLetter) -> None:
        """Keep ``letter`` (newest last, as the store lists them: a task failing for good
        again replaces its earlier letter) and store it."""
        self.dead_letters.pop(letter.dead_letter_id, None)
        self.dead_letters[letter.dead_letter_id] = letter
        self._put_letter(letter)

    def _put(self, task: Task) -> Awaitable[None]:
        """Queue the write of an accepted task's change. A store that refuses it (its
        ``put_task`` raises) does not cut the change short (an agent left busy for good, its
        waiters never woken): the refusal is logged, the task's next write stores it, and
        the returned awaitable raises it (to a waiter of the task's end)."""
        try:
            commit = self._store.put_task(task)
        except Exception as exc:
            refusal = self._refused[task.task_id] = _refused("task", task.task_id, exc)
            return refusal
        if self._refused:
            self._refused.pop(task.task_id, None)  # stored after all
        return commit

    def _put_letter(self, letter: DeadLetter) -> Awaitable[None]:
        """:meth:`_put` for a dead letter."""
        try:
            return self._store.put_dead_letter(letter)
        except Exception as exc:
            return _refused("dead letter", letter.dead_letter_id, exc)

    def _record_duration(self, task_id: str) -> None:
        started = self._started_mono.pop(task_id, None)
        if started is not None:
            duration = time.monotonic() - started
            self.durations.append(duration)
            # an exponential moving average answers ETA queries in O(1)
            mean = self.mean_duration
            self.mean_duration = duration if mean is None else mean + (duration - mean) * 0.05


class _Refused:
    """A write the store refused: awaited (by a waiter given it as the write's commit), or
    :meth:`throw`, it raises a MiminionsError naming what was not stored, caused by the
    store's error (a new one each time: one raised again would gather every raiser's
    frames)."""

    __slots__ = ("_error", "_what")

    def __init__(self, what: str, error: Exception) -> None:
        self._what = what
        self._error = error.with_traceback(None)  # (its frames are not kept alive)

    def throw(self) -> NoReturn:
        """Raise the refusal."""
        raise MiminionsError(
            f"{self._what} was not stored: the store refused its write ({self._error!r})"
        ) from self._error

    def __await__(self) -> Generator[Any, None, None]:
        self.throw()
        yield  # (a generator: awaitable)


def _refused(what: str, ident: str, error: Exception) -> _Refused:
    _log.error("the store refused the write of %s %s: %r", what, ident, error)
    return _Refused(f"the last change of {what} {ident!r}", error)


def _carry(new_tasks: list[Task], trace: Callable[[int], Carrier | None] | None) -> None:
    """Give an accepted batch's tasks the trace context ``trace`` makes for them."""
    carrier = None if trace is None else trace(len(new_tasks))
    if carrier is not None:
        for task in new_tasks:
            task.__dict__["trace_context"] = carrier


def _not_stored_in_time(what: str, timeout_seconds: float | None) -> WaitTimeoutError:
    """The error of a wait whose tasks finished but whose final writes were not committed
    within its timeout."""
    return WaitTimeoutError(
        f"{what}, but the final state was not stored within {timeout_seconds} s (the store "
        "is slow or failing; see the miminions.plugins.sqlite_store logger)"
    )


class _GroupWait:
    """Stands in for one waiter future per task in ``_waiters`` (duck-typed: ``done`` and
    ``set_result``/``set_exception``): counts the tasks that finished and resolves
    ``all_done`` when the last one did."""

    __slots__ = ("all_done", "left")

    def __init__(self, count: int) -> None:
        self.left = count
        self.all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(self) -> bool:
        return self.all_done.done()

    def set_result(self, _commit: object) -> None:
        self.left -= 1
        if self.left <= 0 and not self.all_done.done():
            self.all_done.set_result(None)

    def set_exception(self, error: BaseException) -> None:
        if not self.all_done.done():
            self.all_done.set_exception(error)


def _checked_priority(priority: Any) -> int:
    """``priority`` as a plain int, or ValidationError saying what a priority must be."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValidationError(f"priority must be an integer 0..100, got {shown(priority)}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValidationError(
            f"priority must be between {MIN_PRIORITY} (most urgent) and {MAX_PRIORITY}, "
            f"got {shown(priority)}; use Priority.HIGH/MEDIUM/LOW or an integer in that range"
        )
    return int(priority)


def _checked_retries(retries: Any) -> int:
    """``retries`` as a plain int, or ValidationError saying what ``max_retries`` must be."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValidationError(
            f"max_retries must be an integer 0..{MAX_RETRIES}, got {shown(retries)}"
        )
    return int(retries)


def _is_dead(task: Task | None) -> bool:
    """Whether ``task`` ended failed or cancelled (None: not known here, not dead)."""
    return task is not None and task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)


def _failed_by_cascade(task: Task) -> bool:
    """Whether ``task`` failed only because a prerequisite did (see :meth:`Scheduler.fail`).

    A task that fails for good on its own is always dead-lettered (``_fail_for_good``);
    one failed by the cascade, or submitted after its prerequisite had failed, never is.
    The stored ``dead_lettered`` flag therefore tells the two apart, also after a restart,
    without reading the wording of ``error_message``. (A cascade never cancels a dependent
    of a failed task, and a cancelled prerequisite is no dead letter: cancelled tasks are
    never revived.)
    """
    return task.status is TaskStatus.FAILED and not task.dead_lettered


def _prerequisites_first(tasks: Iterable[Task]) -> list[Task]:
    """Order tasks so every task comes after the tasks it depends on, and otherwise in the
    order given (the store's: submission order), so that tasks of one priority stay first
    in, first out across a restart. (A batch may list a dependent before its
    prerequisite; a depth-first walk would pull that prerequisite ahead of the tasks
    between them.)"""
    listed = list(tasks)
    index = {task.task_id: i for i, task in enumerate(listed)}
    waiting = [0] * len(listed)
    dependents: dict[int, list[int]] = {}
    for i, task in enumerate(listed):
        for dep in set(task.dependencies):
            j = index.get(dep)
            if j is not None and j != i:
                waiting[i] += 1
                dependents.setdefault(j, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]  # ascending: a heap
    ordered: list[Task] = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(listed[i])
        for k in dependents.get(i, ()):
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, k)
    if len(ordered) < len(listed):  # a cycle (only a damaged store has one): as given
        ordered += [task for i, task in enumerate(listed) if waiting[i] > 0]
    return ordered


__all__ = ["TaskBook"]
