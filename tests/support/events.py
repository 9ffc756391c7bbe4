"""An event-recording plugin for tests: wait for an event instead of sleeping."""

from __future__ import annotations

import asyncio
from typing import Any

from miminions import Event, EventType, hookimpl


class EventRecorder:
    """Records every event and lets a test await the first one matching a filter."""

    miminions_plugin_name = "test_event_recorder"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    @hookimpl
    def miminions_event(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def matching(self, event_type: EventType, **fields: Any) -> list[Event]:
        """Recorded events of ``event_type`` whose attributes equal ``fields``."""
        return [
            e
            for e in self.events
            if e.event_type is event_type and all(getattr(e, k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event_type: EventType, within: float = 5.0, **fields: Any) -> Event:
        """Wait (at most ``within`` seconds) for an event of ``event_type`` matching
        ``fields``."""
        async with asyncio.timeout(within):
            while True:
                found = self.matching(event_type, **fields)
                if found:
                    return found[0]
                self._changed.clear()
                await self._changed.wait()
