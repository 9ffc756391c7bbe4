"""The event log's front door: build an event once, hand it to the store and the monitors."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from miminions.kernel.interfaces import Store
from miminions.kernel.models import Event, EventType, JSONObject, Severity, fast_construct
from miminions.kernel.plugins import PluginManager

_log = logging.getLogger("miminions.events")


class EventLog:
    """Appends events to the store (batched by its group commit) and broadcasts them to the
    ``miminions_event`` hook. Monitor errors are logged, never raised into the runtime."""

    def __init__(
        self,
        store: Store,
        pm: PluginManager,
        *,
        runtime: Any = None,
        record_task_events: bool = True,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._hook = pm.hook.miminions_event
        impls = self._hook.get_hookimpls()
        # Each monitor is called on its own so one that raises cannot silence the others
        # (pluggy stops at the first exception); wrappers need pluggy's own calling.
        self._direct = (
            None
            if any(i.hookwrapper or i.wrapper for i in impls)
            else [(i.function, tuple(i.argnames), i.plugin_name) for i in reversed(impls)]
        )
        self._has_listeners = bool(impls)
        self.record_task_events = record_task_events
        self.count = 0
        # Events of emit_soon, in call order, until drain() records them.
        self._deferred: list[tuple[Any, ...]] = []

    def emit(
        self,
        event_type: EventType,
        *,
        severity: Severity = Severity.INFO,
        agent_id: str | None = None,
        task_id: str | None = None,
        details: JSONObject | None = None,
    ) -> Event:
        """Record one event and notify every ``miminions_event`` implementation."""
        if self._deferred:  # events are recorded in the order they happened
            self.drain()
        self.count += 1
        return self._record(datetime.now(UTC), event_type, severity, agent_id, task_id, details)

    def emit_soon(self, event_type: EventType, agent_id: str | None, details: JSONObject) -> None:
        """Record an (info) event once the current callback is done, stamped with the time
        now.

        For paths where what the event reports wakes someone up (a message handed to a
        waiting receiver): the woken code runs first and the bookkeeping after, off its
        latency. Events keep the order they were emitted in, whichever method emitted them;
        readers of the event log call :meth:`drain` first.
        """
        if not self._deferred:
            asyncio.get_running_loop().call_soon(self.drain)
        self.count += 1  # counted now: metrics do not lag behind the log's readers
        self._deferred.append(
            (datetime.now(UTC), event_type, Severity.INFO, agent_id, None, details)
        )

    def drain(self) -> None:
        """Record the events :meth:`emit_soon` holds back, now."""
        deferred, self._deferred = self._deferred, []
        for args in deferred:
            self._record(*args)

    def _record(
        self,
        timestamp: datetime,
        event_type: EventType,
        severity: Severity,
        agent_id: str | None,
        task_id: str | None,
        details: JSONObject | None,
    ) -> Event:
        event = fast_construct(
            Event,
            {
                "event_id": None,
                "timestamp": timestamp,
                "event_type": event_type,
                "severity": severity,
                "agent_id": agent_id,
                "task_id": task_id,
                "details": details if details is not None else {},
            },
        )
        self._store.put_event(event)
        if self._has_listeners:
            self._notify(event)
        return event

    def _notify(self, event: Event) -> None:
        if self._direct is None:
            try:
                self._hook(event=event, runtime=self._runtime)
            except Exception:
                _log.exception("a miminions_event hook failed on %s", event.event_type.value)
            return
        for function, argnames, plugin in self._direct:
            try:
                if argnames == ("event",):
                    function(event)
                else:
                    given = {"event": event, "runtime": self._runtime}
                    function(**{name: given[name] for name in argnames})
            except Exception:
                _log.exception("plugin %s failed on event %s", plugin, event.event_type.value)

    def task_event(
        self,
        event_type: EventType,
        task_id: str,
        agent_id: str | None = None,
        details: JSONObject | None = None,
    ) -> None:
        """Emit a routine (info) task transition unless task events are switched off.

        :meth:`emit` without its keyword handling: three of these per task make this the
        event log's hottest path."""
        if self.record_task_events:
            if self._deferred:
                self.drain()
            self.count += 1
            self._record(datetime.now(UTC), event_type, Severity.INFO, agent_id, task_id, details)
