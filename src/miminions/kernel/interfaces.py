"""The interfaces behind the seams: what the kernel awaits from the objects plugins return.

Hooks are synchronous (pluggy has no async support), so a hook that picks a mechanism returns
one of these objects and the kernel awaits its methods. They are ``typing.Protocol`` classes:
a plugin satisfies them structurally, no base class needed.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from miminions.kernel.models import (
    AgentMessage,
    AgentSpec,
    AgentStatus,
    DeadLetter,
    Event,
    EventRecord,
    EventType,
    JSONObject,
    Severity,
    Task,
)

if TYPE_CHECKING:
    from miminions.kernel.lifecycle import AgentSlot


class StoredAgent(BaseModel):
    """What a store keeps of an agent between runs: its spec, last status and pause state."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str
    name: str
    spec: AgentSpec
    status: AgentStatus
    #: What on_pause returned (any JSON value) while the agent is paused, else None.
    paused_state: Any = None
    restart_count: int = 0
    error_message: str | None = None


class EventQuery(BaseModel):
    """Filters for :meth:`Store.query_events`; every given filter must match.

    ``since``/``until`` bound the timestamp; ``after_id`` returns only events newer than that
    id (for tailing). Results are in event order, oldest first, at most ``limit`` of them
    (the newest ``limit`` when ``newest`` is true).
    """

    model_config = ConfigDict(extra="forbid")

    event_types: list[EventType] | None = None
    agent_id: str | None = None
    task_id: str | None = None
    min_severity: Severity | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_id: int | None = None
    limit: int | None = Field(default=100, ge=1)
    newest: bool = False


@runtime_checkable
class Store(Protocol):
    """Durable state: tasks, agents, events, dead letters and small metadata.

    Writes are *group-committed*: ``put_*`` queue a write and return at once; writes queued
    while a commit is running share the next transaction. The awaitable a ``put_*`` returns
    resolves once the write is committed. A task put several times before a commit is
    written once, in its latest state (the store keeps a reference, not a copy).
    """

    async def open(self) -> None:
        """Create or open the database and bring its schema up to date."""
        ...

    async def close(self) -> None:
        """Commit everything queued and release the database."""
        ...

    def put_task(self, task: Task) -> Awaitable[None]:
        """Queue an insert-or-update of ``task``; resolves when committed."""
        ...

    def put_agent(self, agent: StoredAgent) -> Awaitable[None]:
        """Queue an insert-or-update of an agent record; resolves when committed."""
        ...

    def put_event(self, event: EventRecord) -> None:
        """Queue an event for the next commit (fire and forget; ``flush`` waits for it). The
        store assigns its ``event_id``; ``event.to_event(event_id)`` makes the model."""
        ...

    def put_dead_letter(self, dead_letter: DeadLetter) -> Awaitable[None]:
        """Queue an insert-or-update of a dead letter; resolves when committed."""
        ...

    def put_meta(self, key: str, value: Any) -> Awaitable[None]:
        """Queue a write of a small JSON value under ``key``; resolves when committed."""
        ...

    def delete_meta(self, key: str) -> Awaitable[None]:
        """Queue the removal of ``key``; resolves when committed."""
        ...

    async def flush(self) -> None:
        """Return once everything queued before the call is committed."""
        ...

    async def get_meta(self, key: str) -> Any:
        """Return the JSON value stored under ``key``, or None."""
        ...

    async def load_meta_prefix(self, prefix: str) -> dict[str, Any]:
        """Return every stored meta value whose key starts with ``prefix``, by key."""
        ...

    async def load_tasks(self) -> list[Task]:
        """Return every stored task, oldest first."""
        ...

    async def load_agents(self) -> list[StoredAgent]:
        """Return every stored agent record."""
        ...

    async def load_dead_letters(self) -> list[DeadLetter]:
        """Return every stored dead letter, oldest first."""
        ...

    async def query_events(self, query: EventQuery) -> list[Event]:
        """Return the committed events matching ``query``."""
        ...


#: The message of the second cancel of a ``host.run()`` call winding down from the first: the
#: runtime gives up waiting for the task to end (see :meth:`AgentHost.run`).
RUN_GIVEN_UP = "miminions: the runtime gave up waiting for this task to end"
#: The message of a forced stop's cancel of a ``host.run()`` call: end the task now (it is
#: the stop's own doing, not the agent's misbehaviour).
RUN_STOPPED_AT_ONCE = "miminions: a forced stop ends this task now"


def at_once_arguments(method: Callable[..., Any]) -> dict[str, bool]:
    """``{"at_once": True}`` if ``method`` (an executor's ``interrupt_agent`` or
    ``drain``) takes that argument, else ``{}``: an executor written before it came ends
    a forced stop's tasks as it always did."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.name == "at_once" or p.kind is p.VAR_KEYWORD for p in parameters):
        return {"at_once": True}
    return {}


@runtime_checkable
class AgentHost(Protocol):
    """Where one agent's code runs (``inline`` in the runtime's loop, ``process`` in a worker).

    The kernel drives the host through the agent lifecycle; a host never changes agent or
    task status itself, it reports by returning or raising.

    Optional, for a host whose agent is handed tasks ahead of time (a ``prefetch`` int
    above 1: the most tasks it holds at once, each in a :meth:`run` of its own, run one
    after another): ``async give_back(task_id) -> bool``, asked when a pause or stop takes
    back such a task. True: the agent had not begun it, and never will (its ``run`` raises
    TaskNotStartedError; the task goes back to the queue). False: the agent had begun it,
    or it has ended; it runs on as the agent's task and its outcome counts. Without it,
    such a task's ``run`` is cancelled, and a task the agent had begun unseen then runs
    again from its start. The built-in ``process`` host has both.
    """

    spec: AgentSpec

    @property
    def process_id(self) -> int | None:
        """The OS process the agent runs in, or None when it shares the runtime's."""
        ...

    async def start(self, resume_state: JSONObject | None = None) -> None:
        """Build the agent and run ``on_start``; then ``on_resume(resume_state)`` if given."""
        ...

    async def run(self, task: Task, checkpoint: Any = None) -> Any:
        """Run one task and return its JSON result; raise what the agent raised.

        Cancelling the awaiting coroutine must interrupt the task (a process host tells
        its worker) and let ``asyncio.CancelledError`` propagate. A stop that gives up
        waiting for the task to wind down cancels it again with the message
        :data:`RUN_GIVEN_UP`: a host whose agent runs in a process of its own
        (``process_id`` set) then ends the task at once (the built-in one kills its worker)
        and returns only once it has, since the task goes back to the queue next. A forced
        stop's cancel carries :data:`RUN_STOPPED_AT_ONCE` (the first or a later one): such
        a host ends the task at once too, as the stop's doing (no ``agent_killed``). Other
        cancels while the task winds down change nothing. A host whose ``run`` returns
        after a cancel only for a task that ended before the cancel reached its code says
        so with a true ``results_beat_late_cancels`` attribute: the result then stands
        (booked completed, not re-queued to run a second time) for a task handed over
        ahead of time and taken back before the runtime saw it begin, and for one a stop
        or pause interrupted. Otherwise, and after a cancel or timeout of a task the
        runtime saw begin, a result returned after the cancel is dropped.

        ``checkpoint`` is the last state the task saved with ``context.checkpoint`` in an
        earlier attempt (``context.last_checkpoint`` inside the agent). ``task`` is a
        shallow copy made for this call: a host may set its fields, but its JSON values
        (``input_data``, ``dependencies``, ...) and ``checkpoint`` are the runtime's own. A
        host whose agent shares the runtime's memory gives it copies of them
        (:func:`~miminions.kernel.models.own_json_values`), as the built-in ``inline`` host
        does.
        """
        ...

    async def pause(self) -> Any:
        """Halt at the next safe point and return what ``on_pause`` returned (any JSON
        value); raise ValidationError when it is not JSON (the kernel then fails the
        agent and raises that error)."""
        ...

    async def resume(self, state: Any) -> None:
        """Run ``on_resume(state)`` and let a halted task continue."""
        ...

    async def notify_error(self, error: BaseException, task: Task | None) -> None:
        """Run the agent's ``on_error(error, task)``; errors it raises are logged, not raised.
        ``task`` is a shallow copy, as in :meth:`run`."""
        ...

    def request_stop(self) -> None:
        """Tell the agent a stop is coming: ``context.is_stopping`` becomes true so its task
        can finish or checkpoint during the grace period."""
        ...

    async def stop(self, timeout_seconds: float) -> None:
        """Run ``on_stop`` (bounded by ``timeout_seconds``) and release the agent."""
        ...

    async def kill(self) -> None:
        """Release the agent at once, without running any hook."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Runs tasks: the dispatch loop, timeouts, retries with backoff, cancellation.

    The kernel tells it about agents becoming available and about pauses; the executor
    reports task outcomes to ``runtime.task_book`` (started, completed, failed, cancelled,
    interrupted) and takes ready tasks from ``runtime.scheduler``.

    Optional: ``loop_ending() -> bool``, whether the program is cancelling every task of
    the loop; the kernel then starts no crash handling of its own (nothing would wait for
    it). The built-in executor has it. Optional too: ``halt_clocks(agent_id, task_id)``
    and ``unhalt_clocks(agent_id)``, a pause in progress whose task halted at its safe point
    (its timeout stops counting until the pause ends; see docs/plugins.md).
    """

    async def start(self) -> None:
        """Begin dispatching."""
        ...

    def wake(self) -> None:
        """Something changed (ready tasks, idle agents, queue resumed): dispatch soon."""
        ...

    def agent_available(self, slot: AgentSlot) -> None:
        """The agent may take tasks (it started or resumed)."""
        ...

    def agent_unavailable(self, slot: AgentSlot) -> None:
        """The agent takes no new task (pausing or stopping); a running task goes on."""
        ...

    async def wait_agent_idle(self, agent_id: str, timeout_seconds: float) -> bool:
        """Wait up to ``timeout_seconds`` for the agent's running task; False on time-out."""
        ...

    async def interrupt_agent(self, agent_id: str, reason: str, *, at_once: bool = False) -> bool:
        """Interrupt the agent's running task so it is re-queued; False if it had none.
        ``at_once`` (a forced stop): end it now, without waiting for it to wind down (an
        agent in a process of its own: kill the process). The kernel passes ``at_once``
        only to an executor whose method takes it (see :func:`at_once_arguments`)."""
        ...

    def cancel_task(self, task_id: str, reason: str) -> bool:
        """Interrupt ``task_id`` so it ends cancelled; False when it is not running."""
        ...

    def schedule_retry(self, task_id: str, delay: float) -> None:
        """Make the held task ready after ``delay`` seconds (frozen while paused)."""
        ...

    def cancel_retry(self, task_id: str) -> None:
        """Forget a scheduled retry."""
        ...

    def retry_remaining(self, task_id: str) -> float | None:
        """Seconds of backoff left for ``task_id``, or None."""
        ...

    def pause_clocks(self, agent_id: str | None) -> None:
        """Freeze the timeouts and backoffs a pause affects (``None``: the queue)."""
        ...

    def resume_clocks(self, agent_id: str | None) -> None:
        """Undo :meth:`pause_clocks`."""
        ...

    def pause_group_clocks(self, group: str) -> None:
        """Freeze the retry backoffs of the tasks targeted at ``group``: the kernel calls
        it when the group's last running member is paused (see ``group_clocks_frozen``)."""
        ...

    def resume_group_clocks(self, group: str) -> None:
        """Undo :meth:`pause_group_clocks`."""
        ...

    async def drain(self, timeout_seconds: float, *, at_once: bool = False) -> list[str]:
        """Stop dispatching, wait up to ``timeout_seconds`` for running tasks, interrupt
        the rest (re-queued; ``at_once`` as in :meth:`interrupt_agent`) and return their
        ids."""
        ...

    async def close(self) -> list[str] | None:
        """Cancel every timer and runner; nothing of the executor outlives this call. May
        return the ids of the running tasks it interrupted (a stop cut short skips
        :meth:`drain`), which the RUNTIME_STOPPED event counts."""
        ...


@runtime_checkable
class Bus(Protocol):
    """Mailboxes of the agents and the request/reply matching (the messaging seam).

    The kernel validates and builds every :class:`AgentMessage`; the bus keeps each
    agent's mailbox in order (per sender order is the order messages were posted), applies
    the mailbox capacity all-or-nothing, expires messages past their TTL (frozen while the
    recipient is paused) and hands messages to whoever takes them. It tells the kernel
    through ``runtime.messenger``: ``message_expired(message)`` for a message whose TTL ran
    out, ``message_returned(message)`` for a waiting message it changed itself (its TTL
    frozen or started again) or put back on its own, so the stored copy stays current.
    """

    def open_mailbox(self, agent_id: str, capacity: int) -> None:
        """Create the mailbox of a newly registered agent (idempotent)."""
        ...

    def post(self, messages: list[AgentMessage]) -> list[AgentMessage]:
        """Put messages into their recipients' mailboxes, all or none: raise
        :class:`~miminions.QueueFullError` naming a full mailbox and post nothing. Returns
        the messages that wait in a mailbox (the rest went straight to a waiting ``take``)."""
        ...

    async def take(self, agent_id: str, timeout_seconds: float | None) -> AgentMessage:
        """The oldest unexpired message of the agent's mailbox, waiting up to
        ``timeout_seconds`` (None: forever) for one; raises
        :class:`~miminions.WaitTimeoutError` when none came."""
        ...

    def put_back(self, message: AgentMessage) -> None:
        """Return a taken message to the front of its mailbox (its receiver vanished
        before it got it)."""
        ...

    def pending(self, agent_id: str) -> int:
        """Messages waiting in the agent's mailbox."""
        ...

    def expect_reply(self, correlation_id: str) -> Awaitable[AgentMessage]:
        """An awaitable resolved by the reply carrying ``correlation_id``."""
        ...

    def forget_reply(self, correlation_id: str) -> None:
        """Stop waiting for a reply (the requester timed out)."""
        ...

    def resolve_reply(self, message: AgentMessage) -> bool:
        """Hand a reply to the request waiting for it; False when nobody waits."""
        ...

    def freeze(self, agent_id: str) -> None:
        """The agent paused: its messages' TTLs stop counting (F-25)."""
        ...

    def thaw(self, agent_id: str) -> None:
        """Undo :meth:`freeze`."""
        ...

    def close(self) -> None:
        """Cancel timers and wake every waiting ``take`` with an error."""
        ...
