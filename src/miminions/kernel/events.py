"""The event log's front door: build an event once, hand it to the store and the monitors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from miminions.kernel.errors import PLUGIN_ERRORS
from miminions.kernel.hookspecs import event_filter, unfiltered
from miminions.kernel.interfaces import Store
from miminions.kernel.models import EventRecord, EventType, JSONObject, Severity
from miminions.kernel.plugins import PluginManager, refuse_coroutines

_log = logging.getLogger("miminions.events")
_S = TypeVar("_S")
#: What :meth:`EventLog.emit_soon` builds its events with: ``(event_type, agent_id, details)``.
EventBuilder = Callable[[Any], Iterable[tuple[EventType, "str | None", JSONObject]]]


def _now() -> float:
    """Unix time now, whole microseconds: the float ``datetime.timestamp()`` gives for the
    same instant, so a stored time turned into a datetime and back (an ``Event``'s
    ``timestamp`` used as a query's ``since``) compares equal to itself."""
    return time.time_ns() // 1000 / 1_000_000


_new_record = tuple.__new__  # EventRecord(...) without the namedtuple's Python-level __new__
#: A monitor called directly: its function, whether it takes only ``event``, its argument
#: names, its plugin's name and its :func:`~miminions.kernel.hookspecs.accepts_events` filter.
_Listener = tuple[
    Callable[..., Any], bool, tuple[str, ...], str, Callable[[EventType, Severity], bool] | None
]


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
        self._direct: list[_Listener] | None = (
            None
            if any(i.hookwrapper or i.wrapper for i in impls)
            else [
                (
                    unfiltered(i.function),  # the filter is asked here, once
                    tuple(i.argnames) == ("event",),
                    tuple(i.argnames),
                    i.plugin_name,
                    event_filter(i.function),
                )
                for i in reversed(impls)
            ]
        )
        self._has_listeners = bool(impls)
        self.record_task_events = record_task_events
        self.count = 0
        # What emit_soon was given, in call order, until drain() records its events.
        self._deferred: list[tuple[float, EventBuilder, Any]] = []

    def emit(
        self,
        event_type: EventType,
        *,
        severity: Severity = Severity.INFO,
        agent_id: str | None = None,
        task_id: str | None = None,
        details: JSONObject | None = None,
    ) -> None:
        """Record one event and notify every ``miminions_event`` implementation."""
        if self._deferred:  # events are recorded in the order they happened
            self.drain()
        self.count += 1
        self._record(_now(), event_type, severity, agent_id, task_id, details)

    def emit_soon(
        self,
        build: Callable[[_S], Iterable[tuple[EventType, str | None, JSONObject]]],
        source: _S,
        count: int,
    ) -> None:
        """Record the ``count`` (info) events ``build(source)`` gives, as ``(event_type,
        agent_id, details)``, once the current callback is done, stamped with the time now.

        For paths where what the events report wakes someone up (a message handed to a
        waiting receiver): the woken code runs first, and the events are even built after
        it, off its latency (right after a wait, on a cold CPU, building them cost as much
        as the hand-over itself). Events keep the order they were emitted in, whichever
        method emitted them; readers of the event log call :meth:`drain` first.
        """
        deferred = self._deferred
        if not deferred:
            asyncio.get_running_loop().call_soon(self.drain)
        self.count += count  # counted now: metrics do not lag behind the log's readers
        deferred.append((_now(), build, source))

    def drain(self) -> None:
        """Record the events :meth:`emit_soon` holds back, now."""
        deferred, self._deferred = self._deferred, []
        for timestamp, build, source in deferred:
            try:
                events = list(build(source))
            except Exception:  # a bug in a builder must not take the others' events along
                _log.exception("building deferred events with %r failed", build)
                continue
            for event_type, agent_id, details in events:
                self._record(timestamp, event_type, Severity.INFO, agent_id, None, details)

    def _record(
        self,
        timestamp: float,
        event_type: EventType,
        severity: Severity,
        agent_id: str | None,
        task_id: str | None,
        details: JSONObject | None,
    ) -> None:
        if details is None:
            details = {}
        record: EventRecord = _new_record(
            EventRecord, (timestamp, event_type, severity, agent_id, task_id, details)
        )
        self._store.put_event(record)
        if self._has_listeners:
            self._notify(record)

    def _notify(self, record: EventRecord) -> None:
        """Pass the event to the monitors that want it; its :class:`Event` is built only if
        one does (see :func:`~miminions.kernel.hookspecs.accepts_events`)."""
        if self._direct is None:
            try:
                refuse_coroutines(
                    self._hook(event=record.to_event(), runtime=self._runtime), "miminions_event"
                )
            except PLUGIN_ERRORS:
                _log.exception("a miminions_event hook failed on %s", record.event_type.value)
            return
        event = None
        for function, event_only, argnames, plugin, accepts in self._direct:
            try:
                if accepts is not None and not accepts(record.event_type, record.severity):
                    continue
                if event is None:
                    event = record.to_event()
                if event_only:
                    answer = function(event)
                else:
                    given = {"event": event, "runtime": self._runtime}
                    answer = function(**{name: given[name] for name in argnames})
                if answer is not None:
                    refuse_coroutines(answer, "miminions_event")
            except PLUGIN_ERRORS:
                _log.exception("plugin %s failed on event %s", plugin, record.event_type.value)

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
            self._record(_now(), event_type, Severity.INFO, agent_id, task_id, details)

    def task_events(
        self, event_type: EventType, events: Iterable[tuple[str, JSONObject | None]]
    ) -> None:
        """:meth:`task_event` for many tasks at once, ``(task_id, details)`` each, all
        stamped with the time now (a batch of submitted tasks)."""
        if not self.record_task_events:
            return
        if self._deferred:
            self.drain()
        timestamp = _now()
        record = self._record
        for task_id, details in events:
            self.count += 1
            record(timestamp, event_type, Severity.INFO, None, task_id, details)
