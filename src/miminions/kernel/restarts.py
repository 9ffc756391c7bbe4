"""Crashes and restarts of agents (F-07): what happens when a host reports that its agent
died on its own, and the restart policy (:class:`~miminions.RestartPolicy`).

A mixin of :class:`~miminions.kernel.lifecycle.AgentBook`, which provides the lifecycle
steps used here (fail, start, queue a start, save).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from miminions.kernel.models import AgentStatus, EventType, JSONObject, RestartPolicy, Severity
from miminions.kernel.supervisor import retry_delay

if TYPE_CHECKING:
    from miminions.kernel.events import EventLog
    from miminions.kernel.interfaces import Executor
    from miminions.kernel.lifecycle import AgentSlot

S = AgentStatus


class RestartMixin:
    """Crash handling and the restart policy of an agent book (see the module docstring)."""

    slots: dict[str, AgentSlot]
    executor: Executor | None
    _closing: bool
    _background: set[asyncio.Future[None]]
    _restart_policy: RestartPolicy
    _events: EventLog
    ended_listener: Callable[[str], None] | None

    # provided by AgentBook
    async def _fail(self, slot: AgentSlot, reason: str, details: JSONObject | None = None) -> None:
        raise NotImplementedError

    async def _start(
        self, slot: AgentSlot, resume_state: JSONObject | None, *, reserved: bool = False
    ) -> bool:
        raise NotImplementedError

    def _queue_start(self, slot: AgentSlot, *, resume: bool, restart: bool = False) -> None:
        raise NotImplementedError

    def _must_wait(self) -> bool:
        raise NotImplementedError

    def _start_next_queued(self) -> None:
        raise NotImplementedError

    def _save(self, slot: AgentSlot) -> Any:
        raise NotImplementedError

    def host_failed(self, agent_id: str, reason: str, details: JSONObject | None = None) -> None:
        """A host reports that its agent died on its own (a crash, a hang, a limit breach).

        The agent is failed (its running task was already failed by the host's ``run``),
        then restarted per the restart policy, or left ``failed`` with the reason once it
        crashed too often. A paused agent stays paused instead (see
        :meth:`_crashed_while_paused`).
        """
        slot = self.slots.get(agent_id)
        if slot is None or self._closing or self._loop_ending():
            # (Ending with the loop: a restart begun now would be cut off half-way, its
            # asyncio tasks destroyed pending; the next runtime's recovery sees to the agent.)
            return
        if self.executor is not None and slot.status is S.RUNNING:
            self.executor.agent_unavailable(slot)  # no new task for a dead agent
        handling = asyncio.ensure_future(
            self._handle_crash(slot, slot.host_runs, reason, details or {})
        )
        self._background.add(handling)
        handling.add_done_callback(self._background.discard)

    def _loop_ending(self) -> bool:
        """Whether the program is cancelling every task of the loop (the executor's
        optional ``loop_ending``)."""
        loop_ending = getattr(self.executor, "loop_ending", None)
        return bool(loop_ending()) if callable(loop_ending) else False

    async def _handle_crash(
        self, slot: AgentSlot, host_run: int, reason: str, details: JSONObject
    ) -> None:
        if self.executor is not None:
            # The task the crash interrupted fails through the executor first, so it counts
            # as a failed attempt (and is retried per its policy) rather than an interruption.
            await self.executor.wait_agent_idle(slot.agent_id, 5.0)
        async with slot.lock:
            if self._closing or not slot.host_started:
                return  # a stop, a failed lifecycle call or the shutdown dealt with it
            if slot.host_runs != host_run:
                # About a host the agent no longer has: a stop waiting for the lock ahead
                # of this dealt with it, and a start after that gave the agent a new one.
                return
            if slot.status not in (S.RUNNING, S.PAUSED, S.STARTING):
                return
            if slot.status is S.PAUSED:
                await self._crashed_while_paused(slot, reason, details)
                return
            await self._fail(slot, reason, details)
            self._plan_restart(slot, reason)

    async def _crashed_while_paused(
        self, slot: AgentSlot, reason: str, details: JSONObject
    ) -> None:
        """A paused agent's host died (its stopped worker was killed): it stays paused.

        Restarting it would run it again although it was paused (by a user, or by a spent
        budget, F-27) and drop the state ``on_pause`` saved (F-09). Instead it ends up as
        an agent paused before a runtime restart: its host released, its state kept, its
        clocks still frozen; ``resume_agent`` starts a new host with ``on_start`` and then
        ``on_resume(state)``.
        """
        if self.executor is not None:
            # What the agent still held (its halted task failed with the crash already).
            await self.executor.interrupt_agent(slot.agent_id, f"agent crashed: {reason}")
        with contextlib.suppress(Exception):
            await slot.host.kill()  # whatever the host still holds of its dead worker
        slot.host_started = False
        slot.instance.process_id = None
        slot.instance.error_message = reason
        slot.instance.status_reason = (
            f"paused; crashed meanwhile ({reason}): resume_agent starts it again "
            "(on_start, then on_resume with the saved state)"
        )
        self._events.emit(
            EventType.AGENT_FAILED,
            severity=Severity.ERROR,
            agent_id=slot.agent_id,
            details={"error": reason, **details, "paused": True},
        )
        if self.ended_listener is not None:
            self.ended_listener(slot.agent_id)  # its agent object is gone with the worker
        await self._save(slot)
        self._start_next_queued()  # it no longer holds an agent slot

    def _plan_restart(self, slot: AgentSlot, reason: str) -> None:
        policy = self._restart_policy
        now = time.monotonic()
        crashes = slot.crash_times
        while crashes and now - crashes[0] > policy.window_seconds:
            crashes.popleft()
        if len(crashes) >= policy.max_restarts:
            slot.instance.status_reason = (
                f"not restarted: it crashed or failed to restart {len(crashes) + 1} times within "
                f"{policy.window_seconds:g} s (restart policy: at most {policy.max_restarts}); "
                f"last: {reason}"
            )
            self._save(slot)
            return
        crashes.append(now)
        attempt = len(crashes)
        delay = retry_delay(attempt, policy.backoff_base_seconds, policy.backoff_max_seconds)
        slot.instance.status_reason = (
            f"crashed ({reason}); restarting in {delay:.2f} s "
            f"(restart {attempt} of at most {policy.max_restarts} within "
            f"{policy.window_seconds:g} s)"
        )
        self._events.emit(
            EventType.AGENT_RESTARTING,
            severity=Severity.WARNING,
            agent_id=slot.agent_id,
            details={"reason": reason, "delay_seconds": delay, "restart": attempt},
        )
        loop = asyncio.get_running_loop()
        slot.restart_timer = loop.call_later(delay, self._restart_due, slot)

    def _restart_due(self, slot: AgentSlot) -> None:
        slot.restart_timer = None
        if self._closing or self._loop_ending():
            return  # (ending with the loop: see host_failed)
        restarting = asyncio.ensure_future(self._restart(slot))
        self._background.add(restarting)
        restarting.add_done_callback(self._background.discard)

    async def _restart(self, slot: AgentSlot) -> None:
        async with slot.lock:
            if self._closing or slot.status is not S.FAILED:
                return  # started, stopped or restarted by someone else meanwhile
            slot.instance.restart_count += 1
            if self._must_wait():
                self._queue_start(slot, resume=False, restart=True)
            else:
                await self._start(slot, resume_state=None)
                self._restart_ended(slot)

    def _restart_ended(self, slot: AgentSlot) -> None:
        """A restart's start is over (at once, or after it queued for a slot): if it
        failed, that counts as a crash, so a passing cause gets the next restart."""
        if slot.status is S.FAILED:
            self._plan_restart(slot, slot.instance.error_message or "restart failed")
