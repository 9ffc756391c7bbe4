"""The newest events a SQLite store committed, kept in memory to answer queries.

Most event queries are about what just happened: a dashboard's newest hundred, every event
of a kind or since a moment, the whole log of a short run. The store keeps the rows of its
last ``capacity`` committed events, and the :class:`~miminions.kernel.models.Event` built for
each the first time a query returned it, and answers the part of a query those events cover
without the database: no thread hop, no rows to read, no model to build twice. Older events
still come from the database (see :meth:`SQLiteStore.query_events
<miminions.plugins.sqlite_store.SQLiteStore.query_events>`).

Queries naming a task or an agent are left to the database, whose indexes find a handful of
events among millions faster than a scan of the tail would.

Events are handed out shared: the model is frozen and its details are a
:class:`~miminions.kernel.models.ReadOnlyDict`, so one caller cannot change what the next
one reads.
"""

from __future__ import annotations

from collections import deque

from miminions.kernel.interfaces import EventQuery
from miminions.kernel.models import Event
from miminions.plugins import sqlite_schema as schema


class EventTail:
    """The last ``capacity`` committed event rows (``event_id`` first, the columns of
    :data:`~miminions.plugins.sqlite_schema.SELECT_EVENTS`), oldest first.

    ``start`` splits the log: every committed event whose id is ``start`` or more is here;
    every other one is only in the database.
    """

    def __init__(self, capacity: int, start: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.start = start
        self._rows: deque[schema.Row] = deque(maxlen=capacity)
        # The event built from the row at the same position, once a query returned it.
        self._events: deque[Event | None] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: list[schema.Row]) -> bool:
        """Take the rows of a commit, in id order; return True if older rows had to go to
        make room (the database alone holds them now).

        Rows older than ``start`` (committed after a :meth:`reset`) are left to the database.
        """
        if rows and rows[0][0] < self.start:
            rows = [row for row in rows if row[0] >= self.start]
        if not rows:
            return False
        dropped = len(self._rows) + len(rows) > self.capacity
        self._rows.extend(rows)
        self._events.extend([None] * len(rows))
        if dropped:
            self.start = self._rows[0][0]
        return dropped

    def reset(self, start: int) -> None:
        """Forget every row: events from ``start`` on are the tail's again, as they commit.

        For when the store cannot tell which rows a commit wrote (some were refused, or it
        was cancelled while committing)."""
        self._rows.clear()
        self._events.clear()
        self.start = start

    @staticmethod
    def answers(query: EventQuery) -> bool:
        """Whether a query is one the tail is for: not one naming a task or an agent."""
        return query.task_id is None and query.agent_id is None

    def select(self, query: EventQuery) -> list[Event]:
        """The events here that match ``query``, oldest first: the oldest ``limit`` of
        them, or with ``newest`` the newest ``limit``. Filters on task or agent are not
        looked at (see :meth:`answers`)."""
        types = None if query.event_types is None else {t.value for t in query.event_types}
        severities = (
            None
            if query.min_severity is None
            else {s.value for s in schema.severities_from(query.min_severity)}
        )
        low = None if query.since is None else schema.query_ts(query.since)
        high = None if query.until is None else schema.query_ts(query.until)
        after = query.after_id
        limit = query.limit
        rows, events = self._rows, self._events
        if query.newest:
            last = len(rows) - 1
            positions = zip(range(last, -1, -1), reversed(rows), reversed(events), strict=True)
        else:
            positions = zip(range(len(rows)), rows, events, strict=True)
        found: list[Event | None] = []
        unbuilt: list[tuple[int, int, schema.Row]] = []  # (place in found, position, row)
        for position, row, event in positions:
            if after is not None and row[0] <= after:
                if query.newest:
                    break  # ids only get smaller from here
                continue
            if types is not None and row[2] not in types:
                continue
            if severities is not None and row[3] not in severities:
                continue
            if low is not None and row[1] < low:
                continue
            if high is not None and row[1] > high:
                continue
            if event is None:
                unbuilt.append((len(found), position, row))
            found.append(event)
            if len(found) == limit:
                break
        if unbuilt:
            built = schema.events_from_rows([row for _, _, row in unbuilt])
            for (place, position, _), event in zip(unbuilt, built, strict=True):
                found[place] = event
                events[position] = event
        if query.newest:
            found.reverse()
        return found  # type: ignore[return-value]  # every None was replaced above
