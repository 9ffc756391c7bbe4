"""A complete in-memory Store, used to prove the storage seam is replaceable."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from miminions import DeadLetter, Event, EventQuery, EventRecord, Severity, StoredAgent, Task

_SEVERITIES = list(Severity)


class MemoryStore:
    """Keeps everything in dicts; every put is 'committed' at once."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.agents: dict[str, StoredAgent] = {}
        self.events: list[Event] = []
        self.dead_letters: dict[str, DeadLetter] = {}
        self.meta: dict[str, Any] = {}
        self.opened = self.closed = False
        self._ids = itertools.count(1)

    def _done(self) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    def put_task(self, task: Task) -> asyncio.Future[None]:
        self.tasks[task.task_id] = task.model_copy(deep=True)
        return self._done()

    def put_agent(self, agent: StoredAgent) -> asyncio.Future[None]:
        self.agents[agent.agent_id] = agent.model_copy(deep=True)
        return self._done()

    def put_event(self, event: EventRecord) -> None:
        self.events.append(event.to_event(next(self._ids)).model_copy(deep=True))

    def put_dead_letter(self, dead_letter: DeadLetter) -> asyncio.Future[None]:
        self.dead_letters[dead_letter.dead_letter_id] = dead_letter.model_copy()
        return self._done()

    def put_meta(self, key: str, value: Any) -> asyncio.Future[None]:
        self.meta[key] = value
        return self._done()

    async def flush(self) -> None:
        return None

    def delete_meta(self, key: str) -> asyncio.Future[None]:
        self.meta.pop(key, None)
        return self._done()

    async def load_meta_prefix(self, prefix: str) -> dict[str, Any]:
        return {k: v for k, v in self.meta.items() if k.startswith(prefix)}

    async def get_meta(self, key: str) -> Any:
        return self.meta.get(key)

    async def load_tasks(self) -> list[Task]:
        return [task.model_copy(deep=True) for task in self.tasks.values()]

    async def load_agents(self) -> list[StoredAgent]:
        return list(self.agents.values())

    async def load_dead_letters(self) -> list[DeadLetter]:
        return list(self.dead_letters.values())

    async def query_events(self, query: EventQuery) -> list[Event]:
        def keep(e: Event) -> bool:
            return (
                (query.event_types is None or e.event_type in query.event_types)
                and (query.agent_id is None or e.agent_id == query.agent_id)
                and (query.task_id is None or e.task_id == query.task_id)
                and (
                    query.min_severity is None
                    or _SEVERITIES.index(e.severity) >= _SEVERITIES.index(query.min_severity)
                )
            )

        found = [e for e in self.events if keep(e)]
        if query.limit is not None:
            found = found[-query.limit :] if query.newest else found[: query.limit]
        return found
