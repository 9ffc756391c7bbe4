"""Agents of a runtime and their lifecycle: register, start, pause, resume, stop (F-04).

One :class:`AgentSlot` per registered agent holds its spec, its host and its live status.
Lifecycle calls on one agent are serialised by a per-agent lock; the state machine in
``supervisor.py`` says which calls are allowed when. A stop never waits indefinitely for a
hook that holds the lock: it abandons the host call in flight (see ``_stop_lock``).
Starts beyond ``max_concurrent_agents`` wait in a FIFO queue with status ``queued`` and a
reason (F-08).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from miminions.kernel.errors import (
    PLUGIN_ERRORS,
    AgentHookError,
    AlreadyExistsError,
    HookTimeoutError,
    HostEndedError,
    InvalidStateError,
    MiminionsError,
    NotFoundError,
    ValidationError,
    WaitTimeoutError,
    shown,
)
from miminions.kernel.events import EventLog
from miminions.kernel.interfaces import AgentHost, Store, StoredAgent, at_once_arguments
from miminions.kernel.models import (
    AgentInstance,
    AgentSpec,
    AgentStatus,
    EventType,
    JSONObject,
    ResourceLimits,
    RestartPolicy,
    Severity,
)
from miminions.kernel.plugins import refuse_coroutines
from miminions.kernel.restarts import RestartMixin
from miminions.kernel.scheduler import ANY_ROUTE, agent_route, group_route
from miminions.kernel.supervisor import check_request, check_transition, group_clocks_frozen
from miminions.kernel.task_input import PAUSE_STATE, describe_error, to_json_value
from miminions.kernel.validation import check_name, check_seconds, check_utf8

if TYPE_CHECKING:
    from miminions.kernel.interfaces import Executor

S = AgentStatus
T = TypeVar("T")

_log = logging.getLogger("miminions.lifecycle")


class _Abandoned(Exception):
    """A stop (or the runtime's shutdown) abandoned an agent's host call (see
    :meth:`AgentBook._host_call`)."""


class _TimedOut(Exception):
    """An agent's host call ran past its time limit and was cancelled."""


def _checked_limits(limits: object) -> ResourceLimits:
    """A validated copy of an agent's ``limits``, with the same fields set: the object may
    have been changed since it was built (attributes are set without validation; a
    ``task_timeout_seconds`` of 0 timed every task out at once, and the stored agent then
    kept every later runtime from opening the database), or after registering."""
    if not isinstance(limits, ResourceLimits):
        raise ValidationError("limits must be a miminions.ResourceLimits")
    try:
        return type(limits).model_validate(limits.model_dump(exclude_unset=True, warnings=False))
    except pydantic.ValidationError as exc:
        raise ValidationError(f"invalid limits: {exc}") from None


def _abandoned(agent_id: str, what: str) -> InvalidStateError:
    """The error of a start, pause or resume call whose host call a stop abandoned."""
    return InvalidStateError(
        f"the {what} of agent {agent_id!r} was abandoned because the agent is being stopped"
    )


@dataclass(eq=False)
class AgentSlot:
    """One registered agent: what it is, where it runs, and its live status."""

    spec: AgentSpec
    registered: object
    instance: AgentInstance
    host: AgentHost
    routes: tuple[str, ...]
    paused_state: Any = None  # what on_pause returned (any JSON value) while paused
    host_started: bool = False
    # Starts of a host so far: a crash report names the one it is about (see host_failed).
    host_runs: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The host call ("start", "pause" or "resume") running under ``lock``, which a stop
    # cancels rather than waits for (see AgentBook._host_call).
    call: str | None = None
    in_flight: asyncio.Future[Any] | None = None
    # A stop cancelled ``in_flight`` (abandon_call): its CancelledError is the stop's, not
    # the hook's own.
    call_abandoned: bool = False
    # Stops waiting for ``lock`` whose grace period ran out: no host call may begin now.
    stops_overdue: int = 0
    # The queued or starting start is a resume: on_resume gets paused_state, and a runtime
    # shutdown puts the agent back to paused instead of stopping it (F-09).
    resume_queued: bool = False
    # The queued start is a restart by the policy: if it fails, that counts as a crash.
    restart_queued: bool = False
    crash_times: deque[float] = field(default_factory=deque)  # monotonic, for the policy
    restart_timer: asyncio.TimerHandle | None = None
    #: The agent's id (its spec's, which never changes: kept here because the executor
    #: reads it several times for every task).
    agent_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.agent_id = self.spec.agent_id

    @property
    def pausing(self) -> asyncio.Future[Any] | None:
        """The pause in progress (waiting for a safe point or ``on_pause``), if any."""
        return self.in_flight if self.call == "pause" else None

    def abandon_call(self) -> None:
        """Cancel the host call in flight, if any: a stop does not wait for a hook that may
        never return (F-14)."""
        if self.in_flight is not None:
            self.call_abandoned = True
            self.in_flight.cancel()

    def cancel_restart(self) -> None:
        """Forget a planned restart (the user started or stopped the agent meanwhile)."""
        if self.restart_timer is not None:
            self.restart_timer.cancel()
            self.restart_timer = None

    @property
    def status(self) -> AgentStatus:
        """The agent's current status."""
        return self.instance.status


class AgentBook(RestartMixin):
    """The agents of one runtime (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        events: EventLog,
        limits: ResourceLimits,
        make_host: Callable[[AgentSpec, object], AgentHost],
        start_timeout: float = 60.0,
        restart_policy: RestartPolicy | None = None,
        machine_load: Callable[[], float | None] | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._limits = limits
        self._make_host = make_host
        self._start_timeout = start_timeout
        self._restart_policy = restart_policy or RestartPolicy()
        self._machine_load = machine_load
        self._load_recheck: asyncio.TimerHandle | None = None
        self._load_probe_failing = False  # logged once per run of failed load probes
        self._closing = False
        self._abandoned = False  # the runtime's stop was cut short (see abandon_all)
        self.executor: Executor | None = None
        #: Told (agent id, True) when an agent becomes paused and (id, False) when it leaves
        #: that state; the runtime freezes its messages' TTLs meanwhile.
        self.paused_listener: Callable[[str, bool], None] | None = None
        #: Told the agent id when an agent becomes stopped or failed (its agent object is
        #: gone: the runtime ends what it held open, such as key-value watches).
        self.ended_listener: Callable[[str], None] | None = None
        #: Told the agent id when an agent becomes running (started, resumed, restarted).
        self.running_listener: Callable[[str], None] | None = None
        self.slots: dict[str, AgentSlot] = {}
        #: How many members of each group are in each status (kept by _set), and the
        #: groups whose tasks' retry backoffs the executor was told to freeze.
        self._group_statuses: dict[str, Counter[AgentStatus]] = {}
        self._frozen_groups: set[str] = set()
        self.by_name: dict[str, str] = {}
        self.stored: dict[str, StoredAgent] = {}
        self._start_queue: deque[AgentSlot] = deque()
        self._background: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ lookups
    def get(self, agent_id: str) -> AgentSlot:
        """The slot of ``agent_id``; NotFoundError names the known agents when it is unknown."""
        try:
            return self.slots[agent_id]
        except (KeyError, TypeError):
            raise NotFoundError(
                f"no agent with id {shown(agent_id)}; register_agent() returns the id to use"
            ) from None

    def in_group(self, group: str) -> list[AgentSlot]:
        """The agents of ``group``; NotFoundError if the group has none."""
        members = [slot for slot in self.slots.values() if slot.spec.group == group]
        if not members:
            raise NotFoundError(f"no agent belongs to group {shown(group)}")
        return members

    @property
    def active_count(self) -> int:
        """Agents holding one of the ``max_concurrent_agents`` slots."""
        return sum(1 for slot in self.slots.values() if slot.host_started)

    @property
    def queued_starts(self) -> int:
        """Start requests waiting for a free slot."""
        return len(self._start_queue)

    # ------------------------------------------------------------------ register
    async def register(
        self,
        name: str,
        agent: object,
        *,
        kind: str,
        target: str | None,
        config: JSONObject | None,
        group: str | None,
        isolation: str,
        limits: ResourceLimits | None,
        added: Callable[[str], None] | None = None,
    ) -> str:
        """Register an agent under a unique name; return its id (stable across restarts).
        ``added(agent_id)`` is called once the agent is in the book, before its record's
        commit is awaited (what must come with it, whatever happens to that await)."""
        if not isinstance(name, str) or not name.strip():
            raise ValidationError("agent name must be a non-empty string")
        check_utf8(name, "agent name")  # stored: see check_utf8
        if name in self.by_name:
            raise AlreadyExistsError(f"an agent named {name!r} is registered already")
        if group is not None:
            # A group's name travels with every message sent to it: the bus's limit holds.
            check_name(group, "group")
        if config is not None and not isinstance(config, dict):
            raise ValidationError(f"config must be a dict, got {type(config).__name__}")
        config = to_json_value(config or {}, "config")
        if limits is not None:
            limits = _checked_limits(limits)
        if not isinstance(isolation, str) or not isolation:
            raise ValidationError(
                f"isolation must be the name of an isolation mode ('process' or 'inline'), "
                f"got {isolation!r}"
            )
        previous = next((s for s in self.stored.values() if s.name == name), None)
        agent_id = previous.agent_id if previous is not None else uuid.uuid4().hex
        spec = AgentSpec(
            agent_id=agent_id,
            name=name,
            group=group,
            isolation=isolation,
            kind=kind,
            target=target,
            config=config,
            limits=limits,
        )
        host = self._make_host(spec, agent)
        # A paused agent's state is never None. One stored queued or starting with its
        # state was being resumed when the runtime died: it is still paused.
        restored_paused = previous is not None and (
            previous.status is S.PAUSED
            or (previous.status in (S.QUEUED, S.STARTING) and previous.paused_state is not None)
        )
        instance = AgentInstance(
            agent_id=agent_id,
            name=name,
            group=group,
            status=S.PAUSED if restored_paused else S.REGISTERED,
            status_reason="paused before the runtime restarted" if restored_paused else None,
            isolation=isolation,
            restart_count=previous.restart_count if previous else 0,
            registered_at=datetime.now(UTC),
            # Set here because task_started / task_ended write them without __setattr__:
            # they count as set (model_dump(exclude_unset=True) shows them) from the start.
            task_id=None,
            tasks_completed=0,
            tasks_failed=0,
        )
        routes = (agent_route(agent_id),) + ((group_route(group),) if group else ()) + (ANY_ROUTE,)
        slot = AgentSlot(spec, agent, instance, host, routes)
        if restored_paused and previous is not None:
            slot.paused_state = previous.paused_state
        self.slots[agent_id] = slot
        self.by_name[name] = agent_id
        if group is not None:
            self._group_statuses.setdefault(group, Counter())[instance.status] += 1
            self._update_group_clocks(group)
        self._events.emit(
            EventType.AGENT_REGISTERED,
            agent_id=agent_id,
            details={
                "name": name,
                "group": group,
                "isolation": isolation,
                "restored": previous is not None,
            },
        )
        if added is not None:
            added(agent_id)
        await self._save(slot)
        return agent_id

    # ------------------------------------------------------------------ start
    async def start(self, agent_id: str) -> AgentInstance:
        """Start an agent, or queue the start while every slot is taken."""
        slot = self.get(agent_id)
        async with slot.lock:
            check_request(agent_id, "start", slot.status)
            slot.cancel_restart()
            if self._must_wait():
                self._queue_start(slot, resume=False)
            elif not await self._start(slot, resume_state=None):
                raise _abandoned(agent_id, "start")
        return slot.instance.model_copy()

    def _must_wait(self) -> bool:
        """Whether a start must queue: no free slot, earlier starts waiting, or load."""
        return (
            self.active_count >= self._limits.max_concurrent_agents
            or any(waiting.status is S.QUEUED for waiting in self._start_queue)
            or self._overloaded() is not None
        )

    def start_wait_reason(self) -> str:
        """Why a queued start waits now: every agent slot in use, the machine's load, or
        earlier queued starts ahead of it (F-08, F-24)."""
        limit = self._limits.max_concurrent_agents
        if self.active_count >= limit:
            return f"waiting for a free agent slot ({limit} of {limit} in use)"
        return self._overloaded() or "waiting behind earlier queued starts"

    def _overloaded(self) -> str | None:
        """Why the machine is too loaded to start an agent now, or None (F-08)."""
        threshold = self._limits.max_load_per_cpu
        if threshold is None or self._machine_load is None:
            return None
        load = self._probe_load(self._machine_load)
        if load is None or load <= threshold:
            return None
        return f"waiting for the machine load ({load:.2f} per CPU) to fall below {threshold:g}"

    def _probe_load(self, probe: Callable[[], float | None]) -> float | None:
        """The machine load per CPU from the ``miminions_machine_load`` hook, or None when
        it is unknown.

        A probe that raises, or answers something that is not a finite number, counts as
        "unknown", like a probe answering None: starts are not held back. Were its error
        to escape, ``start_agent`` would raise it, and the load re-check timer (which has
        already fired) would never be armed again, leaving queued starts stuck. It is
        logged once per run of failures, not once a second.
        """
        try:
            load = probe()
            refuse_coroutines(load, "miminions_machine_load")
            if load is not None and (
                isinstance(load, bool)
                or not isinstance(load, (int, float))
                or not math.isfinite(load)
            ):
                raise TypeError(f"it answered {load!r}, not a finite number or None")
        except PLUGIN_ERRORS:
            if not self._load_probe_failing:
                self._load_probe_failing = True
                _log.warning(
                    "the miminions_machine_load hook failed; the machine load counts as "
                    "unknown (agent starts are not held back) until it answers again",
                    exc_info=True,
                )
            return None
        if self._load_probe_failing:
            self._load_probe_failing = False
            _log.info("the miminions_machine_load hook answers again")
        return load

    def _queue_start(self, slot: AgentSlot, *, resume: bool, restart: bool = False) -> None:
        slot.resume_queued = resume
        slot.restart_queued = restart
        self._set(slot, S.QUEUED, self.start_wait_reason())
        self._start_queue.append(slot)
        self._events.emit(
            EventType.AGENT_QUEUED,
            agent_id=slot.agent_id,
            details={"position": len(self._start_queue)},
        )
        self._save(slot)
        self._start_next_queued()  # in order; arms the load re-check if that is the reason

    async def _start(
        self, slot: AgentSlot, resume_state: JSONObject | None, *, reserved: bool = False
    ) -> bool:
        """Start the host (``on_start``, then ``on_resume(resume_state)`` if given): the
        agent ends up running, or failed with the reason. Returns False when a stop
        abandoned the start: the agent is left ``starting`` for that stop, which waits for
        the lock the caller holds, to end."""
        if not reserved:
            self._reserve(slot)
        slot.resume_queued = resume_state is not None
        self._events.emit(EventType.AGENT_STARTING, agent_id=slot.agent_id)
        start = partial(slot.host.start, resume_state)
        try:
            await self._host_call(slot, "start", start, self._start_timeout)
        except _Abandoned:
            return False
        except asyncio.CancelledError:
            if not (self._closing or self._loop_ending()):
                # Its caller gave up (asyncio.wait_for): undone, not left starting for
                # good (holding a slot, skipped by start_group). Shielded: a second
                # cancel cannot leave it half undone.
                await self._carried_through(self._undo_start(slot))
            raise
        except _TimedOut:
            await self._fail(slot, f"on_start did not finish within {self._start_timeout} s")
            return True
        except Exception as exc:
            await self._fail(slot, f"failed to start: {describe_error(exc)}")
            return True
        if self._abandoned:
            return False  # settled meanwhile by a stop cut short (abandon_all)
        slot.instance.started_at = datetime.now(UTC)
        slot.instance.process_id = slot.host.process_id
        slot.paused_state = None
        self._set(slot, S.RUNNING, None)
        self._events.emit(
            EventType.AGENT_STARTED if resume_state is None else EventType.AGENT_RESUMED,
            agent_id=slot.agent_id,
        )
        # Available before the save is awaited: a caller cancelled during it must not
        # leave a running agent that is never given a task.
        if self.executor is not None:
            if resume_state is not None:
                # A paused agent started again (paused before a restart, or its worker died
                # while paused): the clocks its pause froze count again.
                self.executor.resume_clocks(slot.agent_id)
            self.executor.agent_available(slot)
        await self._save(slot)
        return True

    async def _undo_start(self, slot: AgentSlot) -> None:
        """A start its caller gave up on: the host (which discarded what it began when
        the call was cancelled) is released and the agent is stopped, or, a paused agent's
        resume, paused again with its saved state."""
        if slot.status is not S.STARTING:
            return
        await self._release_host(slot, None)  # its on_start never finished: no on_stop
        slot.instance.process_id = None
        if slot.resume_queued:
            slot.resume_queued = False
            self._set(slot, S.PAUSED, "paused; its resume was cancelled by the caller")
        else:
            self._set(slot, S.STOPPING, "its start was cancelled by the caller")
            self._events.emit(
                EventType.AGENT_STOPPING, agent_id=slot.agent_id, details={"graceful": False}
            )
            self._set(slot, S.STOPPED, "its start was cancelled by the caller")
            self._events.emit(EventType.AGENT_STOPPED, agent_id=slot.agent_id)
        await self._save(slot)
        self._start_next_queued()

    async def _carried_through(self, work: Awaitable[None]) -> None:
        """Await ``work``, which goes on to its end if the caller is cancelled meanwhile:
        the caller's CancelledError comes once it is done (a second cancel stops only the
        waiting)."""
        running = self._in_background(work)
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            if not running.done():
                await asyncio.wait({running})
            raise

    def _in_background(self, work: Awaitable[None]) -> asyncio.Future[None]:
        """Run ``work`` as a task of its own, kept until it ends."""
        running = asyncio.ensure_future(work)
        self._background.add(running)
        running.add_done_callback(self._background.discard)
        return running

    async def _host_call(
        self,
        slot: AgentSlot,
        what: str,
        call: Callable[[], Awaitable[T]],
        limit_seconds: float | None,
    ) -> T:
        """Await the host call ``what`` (start, pause, resume), which runs under the
        agent's lock, within ``limit_seconds`` (None: no limit).

        The call runs as its own future (``slot.in_flight``) so that a stop, which waits
        for the lock, can cancel it (:meth:`AgentSlot.abandon_call`, see
        :meth:`_stop_lock`): a hook that never returns must not hold up ``stop_agent`` or
        the runtime's shutdown (F-14). For the same reason no call begins once such a stop
        is overdue or the runtime is shutting down. Cancelled, a host undoes what the call
        began (it reopens a pause's gate; a start discards its worker).

        Raises :class:`_Abandoned` when a stop cancelled it, :class:`_TimedOut` when it
        ran past ``limit_seconds``, and whatever the call itself raised.
        """
        if slot.stops_overdue or self._closing:
            raise _Abandoned
        running = asyncio.ensure_future(call())
        slot.call, slot.in_flight, slot.call_abandoned = what, running, False
        timed_out = False
        try:
            done, _ = await asyncio.wait({running}, timeout=limit_seconds)
            if not done:
                timed_out = True
                running.cancel()
                await asyncio.wait({running})
        except asyncio.CancelledError:
            # The caller was cancelled: so is the call, as with asyncio.wait_for.
            running.cancel()
            await asyncio.wait({running})
            if running.cancelled() or running.exception() is not None:
                raise
            # It went through as it was given up (on_pause returned: the agent is paused).
            # That counts: the caller books it, and its cancel comes at its next await.
            this = asyncio.current_task()
            if this is not None:
                this.uncancel()
                this.cancel()
        finally:
            abandoned = slot.call_abandoned
            slot.call, slot.in_flight, slot.call_abandoned = None, None, False
        if running.cancelled():
            if timed_out:
                raise _TimedOut
            if abandoned or self._closing:
                raise _Abandoned
            # Nobody cancelled the call: the agent's hook raised CancelledError itself (it
            # awaited something another part of the program cancelled). Its failure.
            raise AgentHookError(
                f"the agent's {what} hook raised CancelledError, which nobody asked for"
            )
        return running.result()  # also when it finished although cancelled: it happened

    async def _fail(self, slot: AgentSlot, reason: str, details: JSONObject | None = None) -> None:
        """Fail the agent (see :meth:`_fail_now`), to the end even if the caller is cancelled
        meanwhile (it was left half failed: running, or its slot's next start not begun)."""
        await self._carried_through(self._fail_now(slot, reason, details))

    async def _fail_now(
        self, slot: AgentSlot, reason: str, details: JSONObject | None = None
    ) -> None:
        if slot.host_started:
            # Release everything the agent holds: its task goes back to the queue, its slot
            # to the next queued start.
            if self.executor is not None:
                self.executor.agent_unavailable(slot)
                await self.executor.interrupt_agent(slot.agent_id, f"agent failed: {reason}")
                self.executor.resume_clocks(slot.agent_id)
            with contextlib.suppress(Exception):
                await slot.host.kill()
            slot.host_started = False
            slot.instance.process_id = None
        slot.instance.error_message = reason
        slot.paused_state = None  # a failed agent's next start is a fresh one
        self._set(slot, S.FAILED, reason)
        self._events.emit(
            EventType.AGENT_FAILED,
            severity=Severity.ERROR,
            agent_id=slot.agent_id,
            details={"error": reason, **(details or {})},
        )
        await self._save(slot)
        self._start_next_queued()

    def _reserve(self, slot: AgentSlot) -> None:
        """Take an agent slot for ``slot`` now (it counts as active from here on)."""
        self._set(slot, S.STARTING, None)
        slot.host_started = True
        slot.host_runs += 1

    def _start_next_queued(self) -> None:
        """Start queued agents, in order, while slots are free and the load allows."""
        while self._start_queue and self.active_count < self._limits.max_concurrent_agents:
            if self._closing or self._loop_ending():
                return  # (a start begun while the loop ends would be cut off half-way)
            overloaded = self._overloaded()
            if overloaded is not None:
                for waiting in self._start_queue:
                    if waiting.status is S.QUEUED:
                        waiting.instance.status_reason = overloaded
                self._recheck_load_later()
                return
            slot = self._start_queue.popleft()
            if slot.status is not S.QUEUED:
                continue
            # Reserved here, synchronously, so a start racing with this one sees the slot
            # taken; the host itself starts in the background under the agent's lock.
            self._reserve(slot)
            self._in_background(self._start_queued(slot))
        if self._start_queue:
            # What the remaining starts wait for now (the load they waited for has fallen,
            # say, and the slots are full): their status says so.
            reason = self.start_wait_reason()
            for waiting in self._start_queue:
                if waiting.status is S.QUEUED:
                    waiting.instance.status_reason = reason

    def _recheck_load_later(self) -> None:
        # Machine load has no event to wait for: look again in a second.
        if self._load_recheck is None:
            self._load_recheck = asyncio.get_running_loop().call_later(1.0, self._load_rechecked)

    def _load_rechecked(self) -> None:
        self._load_recheck = None
        self._start_next_queued()

    async def _start_queued(self, slot: AgentSlot) -> None:
        async with slot.lock:
            if slot.status is S.STARTING:  # not stopped while it waited for the lock
                state = None
                if slot.resume_queued:
                    state = slot.paused_state if slot.paused_state is not None else {}
                restart, slot.restart_queued = slot.restart_queued, False
                # abandoned (False): the stop that abandoned it ends the agent
                await self._start(slot, resume_state=state, reserved=True)
                if restart:
                    self._restart_ended(slot)

    # ------------------------------------------------------------------ pause / resume
    async def pause(
        self,
        agent_id: str,
        timeout_seconds: float | None = None,
        reason: str = "paused by request",
    ) -> AgentInstance:
        """Pause an agent: its task halts at its next safe point, ``on_pause``'s state is
        stored, and its task timeout stops counting (F-25). Returns when it is paused."""
        timeout_seconds = check_seconds(timeout_seconds)
        slot = self.get(agent_id)
        async with slot.lock:
            check_request(agent_id, "pause", slot.status)
            if self.executor is not None:
                self.executor.agent_unavailable(slot)
            try:
                state = await self._host_call(slot, "pause", slot.host.pause, timeout_seconds)
            except _Abandoned:
                # A stop cancelled the pause (its task may never reach a safe point).
                raise _abandoned(agent_id, "pause") from None
            except asyncio.CancelledError:
                # Its caller gave up (asyncio.wait_for): abandoned as at its timeout.
                if self.executor is not None:
                    self.executor.agent_available(slot)
                raise
            except _TimedOut:
                # The host reopened its gate when the wait was cancelled: undo the pause.
                if self.executor is not None:
                    self.executor.agent_available(slot)
                raise WaitTimeoutError(
                    f"agent {agent_id!r} did not pause within {timeout_seconds} s (its task "
                    "reached no safe point, its on_error did not end, or its on_pause did "
                    "not return); the pause was abandoned and the agent keeps running"
                ) from None
            except ValidationError as exc:  # a host found the state on_pause returned not JSON
                await self._fail(slot, str(exc))
                raise
            except HostEndedError:
                # Its host died under the call: the crash path (host_failed) deals with the
                # agent once this lock is free, as with any crash (restart policy).
                raise
            except Exception as exc:
                reason = f"on_pause failed: {describe_error(exc)}"
                await self._fail(slot, reason)
                raise AgentHookError(f"agent {agent_id!r} is failed: {reason}") from exc
            finally:
                # Done or given up: a halted task's clock is its own again, at once frozen
                # anew (in this same step, no await between) when the pause completed.
                self._unhalt_clocks(agent_id)
            if self._abandoned:  # a stop cut short settled the agent meanwhile
                raise _abandoned(agent_id, "pause")
            try:
                slot.paused_state = to_json_value(state if state is not None else {}, PAUSE_STATE)
            except ValidationError as exc:
                await self._fail(slot, str(exc))
                raise
            self._set(slot, S.PAUSED, reason)
            if self.executor is not None:
                self.executor.pause_clocks(agent_id)
            self._events.emit(
                EventType.AGENT_PAUSED,
                agent_id=agent_id,
                details={"task_id": slot.instance.task_id},
            )
            await self._save(slot)
        return slot.instance.model_copy()

    def task_halted(self, agent_id: str, task_id: str) -> None:
        """The host says the agent's running task halted at a safe point: during a pause in
        progress its timeout stops counting from now (F-25), not only once ``on_pause`` has
        returned. Ignored outside a pause (a late report of one already given up)."""
        slot = self.slots.get(agent_id)
        halt = getattr(self.executor, "halt_clocks", None)  # optional for an executor
        if slot is not None and slot.pausing is not None and halt is not None:
            halt(agent_id, task_id)

    def _unhalt_clocks(self, agent_id: str) -> None:
        unhalt = getattr(self.executor, "unhalt_clocks", None)
        if unhalt is not None:
            unhalt(agent_id)

    async def resume(self, agent_id: str) -> AgentInstance:
        """Resume a paused agent: ``on_resume`` gets exactly what ``on_pause`` returned.

        ``on_resume`` has ``agent_start_timeout_seconds``, like a start: past it the agent
        is failed. A stop meanwhile abandons the resume (InvalidStateError) and stops the
        agent; the runtime's shutdown abandons it too, and the agent stays paused.
        """
        slot = self.get(agent_id)
        async with slot.lock:
            check_request(agent_id, "resume", slot.status)
            state = slot.paused_state if slot.paused_state is not None else {}
            if not slot.host_started:
                # Paused before a restart (or its worker died while paused): this run has
                # no host for it, so resuming starts one.
                if self._must_wait():
                    self._queue_start(slot, resume=True)
                elif not await self._start(slot, resume_state=state):
                    raise _abandoned(agent_id, "resume")
                return slot.instance.model_copy()
            try:
                await self._host_call(
                    slot, "resume", partial(slot.host.resume, state), self._start_timeout
                )
            except _Abandoned:
                # A stop cancelled on_resume: still paused, and that stop ends the agent.
                raise _abandoned(agent_id, "resume") from None
            except _TimedOut:
                reason = f"on_resume did not finish within {self._start_timeout} s"
                await self._fail(slot, reason)
                raise AgentHookError(f"agent {agent_id!r} is failed: {reason}") from None
            except HostEndedError:
                # Its host died under the call: still paused, and the crash path keeps it so
                # (its state saved) once this lock is free; a later resume starts a new host.
                raise
            except Exception as exc:
                reason = f"on_resume failed: {describe_error(exc)}"
                await self._fail(slot, reason)
                raise AgentHookError(f"agent {agent_id!r} is failed: {reason}") from exc
            if self._abandoned:  # the stop cut short settled it meanwhile: still paused
                raise _abandoned(agent_id, "resume")
            slot.paused_state = None
            self._set(slot, S.RUNNING, None)
            self._events.emit(EventType.AGENT_RESUMED, agent_id=agent_id)
            if self.executor is not None:  # before the save is awaited (see _start)
                self.executor.resume_clocks(agent_id)
                self.executor.agent_available(slot)
            await self._save(slot)
        return slot.instance.model_copy()

    # ------------------------------------------------------------------ stop
    async def stop(
        self, agent_id: str, *, graceful: bool = True, timeout_seconds: float = 5.0
    ) -> AgentInstance:
        """Stop an agent. Graceful: its running task may finish within ``timeout_seconds``,
        then it is interrupted and re-queued; ``on_stop`` runs. Forced: at once, no hook.

        A lifecycle call in progress does not hold the stop up: a pause is abandoned at
        once, an ``on_start`` or ``on_resume`` after ``timeout_seconds`` (at once when
        forced); the call raises InvalidStateError. An agent whose ``on_start`` never
        finished is dropped without ``on_stop``."""
        timeout = check_seconds(timeout_seconds, allow_none=False) or 0.0
        slot = self.get(agent_id)
        async with self._stop_lock(slot, timeout if graceful else 0.0):
            if slot.status is S.FAILED and slot.restart_timer is not None:
                # failed and waiting to restart: stopping it cancels the restart
                slot.cancel_restart()
                slot.paused_state = None
                self._set(slot, S.STOPPED, "stopped while waiting to restart")
                self._events.emit(EventType.AGENT_STOPPED, agent_id=agent_id)
                await self._save(slot)
                return slot.instance.model_copy()
            check_request(agent_id, "stop", slot.status)
            await self._stop(slot, graceful=graceful, timeout_seconds=timeout)
        return slot.instance.model_copy()

    @contextlib.asynccontextmanager
    async def _stop_lock(self, slot: AgentSlot, grace_seconds: float) -> AsyncIterator[None]:
        """Hold the agent's lock for a stop, which must not wait for it indefinitely.

        A pause in flight is abandoned at once: it waits for the running task to reach a
        safe point, and the stop interrupts that task anyway. An ``on_start`` or
        ``on_resume`` in flight may finish within ``grace_seconds`` (the stop's timeout;
        0 for a forced stop), as a running task may; then it is abandoned, and so is any
        host call that would begin before the stop gets the lock (see :meth:`_host_call`).
        """
        overdue = False

        def abandon() -> None:
            nonlocal overdue
            overdue = True
            slot.stops_overdue += 1
            slot.abandon_call()

        abandoned = slot.call == "pause"
        if abandoned:
            slot.abandon_call()
        timer = asyncio.get_running_loop().call_later(grace_seconds, abandon)
        try:
            await slot.lock.acquire()
        except asyncio.CancelledError:
            if abandoned or overdue:
                # The call this stop abandoned left the agent for it to end (starting, or
                # running but taking no task): given up by its caller, it still happens,
                # at once, as a graceful stop given up does.
                self._in_background(self._stop_given_up(slot.agent_id))
            raise
        finally:
            timer.cancel()
            if overdue:
                slot.stops_overdue -= 1
        try:
            yield
        finally:
            slot.lock.release()

    async def _stop_given_up(self, agent_id: str) -> None:
        """A forced stop, for one whose caller gave up after it had abandoned a call."""
        with contextlib.suppress(MiminionsError):
            await self.stop(agent_id, graceful=False)

    async def _stop(self, slot: AgentSlot, *, graceful: bool, timeout_seconds: float) -> None:
        slot.resume_queued = False
        if slot.status is S.QUEUED or not slot.host_started:
            if slot in self._start_queue:
                self._start_queue.remove(slot)
            slot.paused_state = None  # stopped: a later start is a fresh one
            if self.executor is not None:
                # paused, and its worker died meanwhile: its frozen clocks count again
                self.executor.resume_clocks(slot.agent_id)
            reason = (
                # paused before a runtime restart, or its worker died while it was paused
                "stopped while paused, with no worker running; its saved state is dropped"
                if slot.status is S.PAUSED
                else "stopped before it started"
            )
            self._set(slot, S.STOPPED, reason)
            self._events.emit(EventType.AGENT_STOPPED, agent_id=slot.agent_id)
            await self._save(slot)
            return
        was_paused = slot.status is S.PAUSED
        # Its start was abandoned by this stop (or had not begun): on_start never finished,
        # so the agent is dropped without on_stop.
        was_starting = slot.status is S.STARTING
        slot.host.request_stop()
        self._set(slot, S.STOPPING, "stop requested")
        self._events.emit(
            EventType.AGENT_STOPPING, agent_id=slot.agent_id, details={"graceful": graceful}
        )
        try:
            await self._wind_down(
                slot,
                graceful=graceful and not was_starting,
                timeout_seconds=timeout_seconds,
                wait_idle=not was_paused,
            )
        except asyncio.CancelledError:
            if not (self._closing or self._loop_ending()):
                # Its caller gave up waiting (asyncio.wait_for): the stop ends at once, as a
                # forced one, rather than leave the agent stopping, a status no call leaves.
                # Shielded: a second cancel cannot leave it half done.
                forced = self._wind_down(slot, graceful=False, timeout_seconds=0.0)
                await self._carried_through(forced)
            raise

    async def _wind_down(
        self, slot: AgentSlot, *, graceful: bool, timeout_seconds: float, wait_idle: bool = True
    ) -> None:
        """The rest of a stop once the agent is ``stopping``: ``graceful``, its task may
        finish within ``timeout_seconds`` (``wait_idle``: a paused agent's is halted) and
        ``on_stop`` runs; then the task is interrupted and the host released."""
        executor = self.executor
        if executor is not None:
            executor.agent_unavailable(slot)
            if graceful and wait_idle:
                await executor.wait_agent_idle(slot.agent_id, timeout_seconds)
            at_once = {} if graceful else at_once_arguments(executor.interrupt_agent)
            await executor.interrupt_agent(slot.agent_id, "agent stopped", **at_once)
            executor.resume_clocks(slot.agent_id)
        if slot.host_started:
            await self._release_host(slot, timeout_seconds if graceful else None)
        slot.instance.process_id = None
        slot.paused_state = None
        if slot.status is S.STOPPING:
            self._set(slot, S.STOPPED, None)
            self._events.emit(EventType.AGENT_STOPPED, agent_id=slot.agent_id)
        await self._save(slot)
        self._start_next_queued()

    def request_stop_all(self) -> None:
        """The runtime is shutting down: tell every started agent (``context.is_stopping``)."""
        self._closing = True
        if self._load_recheck is not None:
            self._load_recheck.cancel()
            self._load_recheck = None
        for slot in self.slots.values():
            slot.cancel_restart()
            if slot.host_started:
                slot.host.request_stop()

    async def stop_all(self, timeout_seconds: float, *, graceful: bool = True) -> None:
        """Stop every agent that is not stopped (runtime shutdown); paused agents keep their
        paused status and state in the store so they come back paused — also those whose
        resume was queued or in progress (abandoned here). Not graceful: no hooks run,
        hosts are killed."""

        grace = timeout_seconds if graceful else 0.0

        async def stop_one(slot: AgentSlot) -> None:
            async with self._stop_lock(slot, grace):
                if slot.status is S.PAUSED:
                    await self._shutdown_paused(slot, timeout_seconds if graceful else None)
                elif slot.resume_queued and slot.status in (S.QUEUED, S.STARTING):
                    await self._shutdown_resuming(slot)
                elif slot.status in (S.QUEUED, S.STARTING, S.RUNNING):
                    await self._stop(slot, graceful=graceful, timeout_seconds=timeout_seconds)

        await asyncio.gather(*(stop_one(slot) for slot in self.slots.values()))

    def abandon_all(self) -> None:
        """The runtime's stop was cut short (cancelled) before it stopped its agents:
        record every agent that was queued, starting, running or stopping as stopped (no
        ``on_stop`` ran; its worker is killed with the runtime's), so that status queries
        and the stored records do not show them running under a stopped runtime. Paused
        agents stay paused with their state, as after any shutdown."""
        reason = "the runtime's stop was cut short: stopped without on_stop"
        self._abandoned = True
        for slot in self.slots.values():
            slot.abandon_call()  # an on_start or on_resume under way ends with it
            if slot.host_started:
                # Its code must not outlive the runtime (an inline agent's on_message
                # handler ran on): a host that can, drops it now; a worker process is
                # killed with the runtime's.
                abandon = getattr(slot.host, "abandon", None)  # optional for a host
                if callable(abandon):
                    with contextlib.suppress(Exception):
                        abandon()
                slot.host_started = False  # it holds no agent slot any more (capacity)
            if slot.status not in (S.QUEUED, S.STARTING, S.RUNNING, S.STOPPING):
                continue
            if slot in self._start_queue:
                self._start_queue.remove(slot)
            slot.instance.process_id = None
            if slot.resume_queued and slot.status in (S.QUEUED, S.STARTING):
                # A paused agent whose resume was queued or starting stays paused with its
                # state, as after a full stop (_shutdown_resuming); its state was dropped.
                slot.resume_queued = False
                self._set(slot, S.PAUSED, "paused; the runtime stopped before its resume completed")
                self._save(slot)
                continue
            if slot.status in (S.STARTING, S.RUNNING):
                self._set(slot, S.STOPPING, reason)
            slot.resume_queued = False
            slot.paused_state = None
            self._set(slot, S.STOPPED, reason)
            self._events.emit(
                EventType.AGENT_STOPPED, agent_id=slot.agent_id, details={"reason": reason}
            )
            self._save(slot)

    async def _shutdown_paused(self, slot: AgentSlot, timeout_seconds: float | None) -> None:
        if self.executor is not None:
            await self.executor.interrupt_agent(
                slot.agent_id, "runtime stopped while the agent was paused"
            )
        if slot.host_started:
            await self._release_host(slot, timeout_seconds)
        await self._save(slot)

    async def _shutdown_resuming(self, slot: AgentSlot) -> None:
        """At shutdown, a paused agent whose resume is queued or was starting (a start with
        its saved state) goes back to paused with that state, as if the resume had not been
        asked for: it comes back paused (F-09) instead of losing the state."""
        if slot in self._start_queue:
            self._start_queue.remove(slot)
        if slot.host_started:
            await self._release_host(slot, None)  # its on_start never finished: no on_stop
        slot.instance.process_id = None
        slot.resume_queued = False
        self._set(slot, S.PAUSED, "paused; the runtime stopped before its resume completed")
        await self._save(slot)

    async def _release_host(self, slot: AgentSlot, graceful_timeout: float | None) -> None:
        """Stop the host (``on_stop`` within the timeout) or, with None, kill it."""
        try:
            if graceful_timeout is None:
                await slot.host.kill()
            else:
                await slot.host.stop(graceful_timeout)
        except (Exception, asyncio.CancelledError) as exc:
            this = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and (this is None or this.cancelling()):
                raise  # the stop itself is cancelled
            # (A CancelledError nobody asked for: on_stop raised it itself; its failure.)
            error = (
                str(exc)  # it ran past the stop's timeout: the message says so
                if isinstance(exc, HookTimeoutError)
                or getattr(exc, "remote_type", None) == HookTimeoutError.__name__  # in a worker
                else f"on_stop failed: {describe_error(exc)}"
            )
            self._events.emit(
                EventType.AGENT_ERROR,
                severity=Severity.WARNING,
                agent_id=slot.agent_id,
                details={"error": error},
            )
        slot.host_started = False

    # ------------------------------------------------------------------ task bookkeeping
    # These two run for every task: they write the status fields directly (pydantic's
    # __setattr__ costs several times more; nothing validates on assignment anyway).
    def task_started(self, slot: AgentSlot, task_id: str) -> None:
        """The executor gave ``task_id`` to this agent."""
        slot.instance.__dict__["task_id"] = task_id

    def task_ended(self, slot: AgentSlot, ok: bool | None, *, current: bool = True) -> None:
        """A task of the agent ended: ``ok`` it completed, ``False`` it failed (or was
        cancelled), ``None`` it went back to the queue (counted neither way). ``current``:
        it was the task the agent runs now (not one handed over ahead of time)."""
        fields = slot.instance.__dict__
        if current:
            fields["task_id"] = None
        if ok:
            fields["tasks_completed"] += 1
        elif ok is not None:
            fields["tasks_failed"] += 1

    def restore(self, stored: list[StoredAgent]) -> None:
        """Remember agents of earlier runs so re-registering a name finds its id and state."""
        self.stored = {agent.agent_id: agent for agent in stored}

    # ------------------------------------------------------------------ internals
    def _set(self, slot: AgentSlot, status: AgentStatus, reason: str | None) -> None:
        check_transition(slot.agent_id, slot.status, status)
        group = slot.spec.group
        if group is not None:
            statuses = self._group_statuses[group]
            statuses[slot.status] -= 1
            statuses[status] += 1
        was_paused = slot.status is S.PAUSED
        slot.instance.status = status
        slot.instance.status_reason = reason
        if was_paused != (status is S.PAUSED) and self.paused_listener is not None:
            self.paused_listener(slot.agent_id, not was_paused)
        if status in (S.STOPPED, S.FAILED) and self.ended_listener is not None:
            self.ended_listener(slot.agent_id)
        if status is S.RUNNING and self.running_listener is not None:
            self.running_listener(slot.agent_id)
        if group is not None:
            self._update_group_clocks(group)

    def _update_group_clocks(self, group: str) -> None:
        """Tell the executor when ``group`` starts or stops counting as paused (F-25)."""
        executor = self.executor
        if executor is None:
            return
        statuses = self._group_statuses[group]
        frozen = group_clocks_frozen(status for status, count in statuses.items() if count)
        if frozen == (group in self._frozen_groups):
            return
        if frozen:
            self._frozen_groups.add(group)
            executor.pause_group_clocks(group)
        else:
            self._frozen_groups.discard(group)
            executor.resume_group_clocks(group)

    def _save(self, slot: AgentSlot) -> Any:
        record = StoredAgent(
            agent_id=slot.agent_id,
            name=slot.spec.name,
            spec=slot.spec,
            status=slot.status,
            paused_state=slot.paused_state,
            restart_count=slot.instance.restart_count,
            error_message=slot.instance.error_message,
        )
        self.stored[slot.agent_id] = record
        return self._store.put_agent(record)
