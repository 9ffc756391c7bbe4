"""The event log's front door: build an event once, hand it to the store and the monitors."""

from __future__ import annotations

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

    def __init__(self, store: Store, pm: PluginManager, *, record_task_events: bool = True) -> None:
        self._store = store
        self._hook = pm.hook.miminions_event
        self._has_listeners = bool(self._hook.get_hookimpls())
        self.record_task_events = record_task_events
        self.count = 0

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
        event = fast_construct(
            Event,
            {
                "event_id": None,
                "timestamp": datetime.now(UTC),
                "event_type": event_type,
                "severity": severity,
                "agent_id": agent_id,
                "task_id": task_id,
                "details": details if details is not None else {},
            },
        )
        self.count += 1
        self._store.put_event(event)
        if self._has_listeners:
            try:
                self._hook(event=event)
            except Exception:
                _log.exception("a miminions_event hook failed on %s", event_type.value)
        return event

    def task_event(self, event_type: EventType, task_id: str, **kwargs: Any) -> None:
        """Emit a routine task transition unless task events are switched off."""
        if self.record_task_events:
            self.emit(event_type, task_id=task_id, **kwargs)
