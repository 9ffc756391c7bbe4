"""The part of :class:`~miminions.AgentRuntime` that lets agents and the application talk:
messages (``send_message``, ``broadcast``, ``publish``, ``send_to_group``, ``request``), the
shared key-value store (``kv``), self-reported usage and its budgets, and ``agent_call``,
through which hosts carry out what agents ask for through their context.

A mixin, so the runtime module stays about its own lifecycle; the runtime sets the
attributes declared here when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from miminions.kernel.errors import (
    PLUGIN_ERRORS,
    MiminionsError,
    NotFoundError,
    RuntimeNotRunningError,
)
from miminions.kernel.models import AgentMessage, AgentStatus, EventType, Severity
from miminions.kernel.plugins import refuse_coroutines
from miminions.kernel.tracing import Carrier, check_carrier
from miminions.kernel.validation import check_name

if TYPE_CHECKING:
    from miminions.kernel.events import EventLog
    from miminions.kernel.kv import KVCalls, KVStore
    from miminions.kernel.lifecycle import AgentBook
    from miminions.kernel.messaging import Messenger
    from miminions.kernel.models import RuntimeConfig
    from miminions.kernel.usage import BudgetBreach, UsageBook

_log = logging.getLogger("miminions.tracing")


class CommunicationAPI:
    """Messaging, key-value and usage calls of the runtime (see the module docstring)."""

    config: RuntimeConfig
    messenger: Messenger
    usage: UsageBook
    _kv: KVStore | None
    _kv_calls: KVCalls | None
    _background: set[asyncio.Future[Any]]
    #: ``miminions_trace_context`` when some plugin implements it, else None (no call).
    _trace_hook: Any

    @property
    def agent_book(self) -> AgentBook:  # provided by the runtime
        raise NotImplementedError

    @property
    def events(self) -> EventLog:  # provided by the runtime
        raise NotImplementedError

    @property
    def is_running(self) -> bool:  # provided by the runtime
        raise NotImplementedError

    def _require_running(self) -> None:  # provided by the runtime
        raise NotImplementedError

    def trace_carrier(self, operation: str, count: int = 1) -> Carrier | None:
        """The trace carrier of work the application creates now (``operation``:
        ``"submit"``, ``"send"``, ``"send_to_group"``, ``"broadcast"``, ``"publish"`` or
        ``"request"``; ``count``: how many requests, a ``submit_tasks`` batch's size), from
        the tracing plugin; None without one. A failing plugin costs the trace a link, never
        the call."""
        hook = self._trace_hook
        if hook is None:
            return None
        try:
            carrier = hook(runtime=self, operation=operation, count=count)
            refuse_coroutines(carrier, "miminions_trace_context")
        except PLUGIN_ERRORS:
            _log.exception("miminions_trace_context failed for %r", operation)
            return None
        return check_carrier(carrier)

    def report_usage(self, agent_id: str, tokens: int, cost: float) -> None:
        """Record usage an agent reported (``context.report_usage``; hosts call this). A
        spent budget pauses the agent or its whole group (F-27)."""
        slot = self.agent_book.get(agent_id)
        own = self.config.limits.overridden_by(slot.spec.limits).usage_budget
        breaches = self.usage.record(agent_id, slot.spec.group, tokens, cost, own)
        totals = self.usage.by_agent[agent_id]
        slot.instance.tokens_used, slot.instance.cost_used = totals.tokens, totals.cost
        for breach in breaches:
            self.events.emit(
                EventType.BUDGET_EXHAUSTED,
                severity=Severity.WARNING,
                agent_id=agent_id,
                details={
                    "scope": breach.scope,
                    "name": breach.name,
                    "resource": breach.resource,
                    "used": breach.used,
                    "budget": breach.budget,
                },
            )
            members = (
                [agent_id]
                if breach.scope == "agent"
                else [s.agent_id for s in self.agent_book.in_group(breach.name)]
            )
            if breach.scope == "group":
                self.usage.by_group[breach.name].held.update(members)
            for member in members:
                self._spawn(self._trip_breaker(member, breach))

    async def _trip_breaker(self, agent_id: str, breach: BudgetBreach) -> None:
        slot = self.agent_book.get(agent_id)
        if not self.is_running:
            return
        # One starting or resuming (the usage may come from its own on_start/on_resume) is
        # paused once it runs: the pause waits for the start's or resume's lock. One not
        # running at all (stopping: its on_stop reported the usage; stopped; paused) owes
        # the pause: it is paused as it next runs. A breaker trips once, so skipping
        # either would leave the agent unchecked for good.
        resuming = slot.status is AgentStatus.PAUSED and slot.call == "resume"
        if not (slot.status in (AgentStatus.RUNNING, AgentStatus.STARTING) or resuming):
            self.usage.owe(agent_id, breach)
            return
        reason = f"circuit breaker: {breach.message}"
        with contextlib.suppress(MiminionsError):
            await self.agent_book.pause(agent_id, reason=reason)
        if self.is_running and not (
            slot.status is AgentStatus.PAUSED and slot.instance.status_reason == reason
        ):
            # Stopped, failed, crashed or paused by another call before this pause took
            # effect (its on_pause, say, spent the budget during the user's pause): owed.
            self.usage.owe(agent_id, breach)

    def _agent_running(self, agent_id: str) -> None:
        """An agent became running (started, resumed, restarted): paused at once if a
        breaker tripped while it was not running (see :meth:`_trip_breaker`), or if it
        joined a group whose breaker had tripped."""
        breach = self.usage.collect(agent_id) if self.usage.owed else None
        group = self.agent_book.get(agent_id).spec.group
        if breach is None and group is not None and self.usage.by_group:
            breach = self.usage.newcomer(group, agent_id)
        if breach is not None:
            self._spawn(self._trip_breaker(agent_id, breach))

    def reset_usage(self, agent_id: str | None = None, group: str | None = None) -> None:
        """Zero the reported usage of an agent, a group, or (no argument) everything, and
        re-arm their budgets' circuit breakers (resume paused agents yourself)."""
        if agent_id is not None:
            self.agent_book.get(agent_id)  # NotFoundError for an unknown id
        if group is not None:
            check_name(group, "group")
            if group not in self.usage.group_budgets and not any(
                slot.spec.group == group for slot in self.agent_book.slots.values()
            ):
                # (a misspelled name would leave the group's tripped breaker unarmed)
                raise NotFoundError(f"no group {group!r}: no agent is in it and it has no budget")
        self.usage.reset(agent_id, group)
        for slot in self.agent_book.slots.values():
            if (agent_id is None and group is None) or slot.agent_id == agent_id:
                slot.instance.tokens_used, slot.instance.cost_used = 0, 0.0

    @property
    def kv(self) -> KVStore:
        """The shared key-value store (F-16): ``get``, ``set``, ``delete``,
        ``compare_and_set``, ``keys``, ``watch``; values are JSON and durable."""
        if self._kv is None:
            raise RuntimeNotRunningError("the runtime has not been started; await rt.start() first")
        return self._kv

    async def agent_call(self, agent_id: str, op: str, payload: dict[str, Any]) -> Any:
        """For hosts: carry out a call an agent made through its context (messaging and
        ``context.kv``), on behalf of ``agent_id``."""
        if op.startswith("kv_"):
            if self._kv_calls is None:
                raise RuntimeNotRunningError(
                    "the runtime has not been started; await rt.start() first"
                )
            return await self._kv_calls.handle(agent_id, op, payload)
        return await self.messenger.handle(agent_id, op, payload)

    def _agent_paused(self, agent_id: str, paused: bool) -> None:
        # A paused agent's messages do not expire meanwhile (F-25).
        if paused:
            self.messenger.bus.freeze(agent_id)
        else:
            self.messenger.bus.thaw(agent_id)

    # ------------------------------------------------------------------ messaging
    async def send_message(
        self,
        recipients: str | Sequence[str],
        message_type: str,
        data: Any = None,
        ttl_seconds: float | None = None,
    ) -> list[str]:
        """Send a message from the runtime to one agent or several (their ids); returns the
        message ids. A full mailbox raises QueueFullError and nothing is sent."""
        self._require_running()
        return self.messenger.send(
            None,
            recipients,
            message_type,
            data,
            ttl_seconds,
            trace_context=self.trace_carrier("send"),
        )

    async def send_to_group(
        self, group: str, message_type: str, data: Any = None, ttl_seconds: float | None = None
    ) -> list[str]:
        """Send a message to every agent of ``group`` (F-18); NotFoundError if it has none."""
        self._require_running()
        return self.messenger.send_to_group(
            None, group, message_type, data, ttl_seconds, self.trace_carrier("send_to_group")
        )

    async def broadcast(
        self, message_type: str, data: Any = None, ttl_seconds: float | None = None
    ) -> list[str]:
        """Send a message to every running or paused agent."""
        self._require_running()
        return self.messenger.broadcast(
            None, message_type, data, ttl_seconds, self.trace_carrier("broadcast")
        )

    async def publish(
        self, topic: str, message_type: str, data: Any = None, ttl_seconds: float | None = None
    ) -> list[str]:
        """Send a message to the agents subscribed to ``topic``."""
        self._require_running()
        return self.messenger.publish(
            None, topic, message_type, data, ttl_seconds, self.trace_carrier("publish")
        )

    async def request(
        self,
        agent_id: str,
        message_type: str,
        data: Any = None,
        timeout_seconds: float | None = 30.0,
    ) -> AgentMessage:
        """Send a request to an agent and return its reply (``context.reply``); raises
        WaitTimeoutError after ``timeout_seconds``."""
        self._require_running()
        return await self.messenger.begin_request(
            None, agent_id, message_type, data, timeout_seconds, self.trace_carrier("request")
        )

    def _spawn(self, work: Any) -> None:
        future = asyncio.ensure_future(work)
        self._background.add(future)
        future.add_done_callback(self._background.discard)
