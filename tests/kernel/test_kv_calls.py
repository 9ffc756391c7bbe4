"""The key-value calls agents make through ``context.kv`` (``KVCalls``): a watch belongs
to the agent that opened it."""

from __future__ import annotations

import asyncio

from miminions.kernel.kv import KVCalls, KVStore
from tests.support.memory_store import MemoryStore

WAIT = 5.0


async def test_an_agent_cannot_read_or_close_another_agents_watch() -> None:
    """Watch ids are easy to guess (``<agent id>:<n>``); a call naming a watch another
    agent opened gets nothing and closes nothing."""
    kv = KVStore(MemoryStore())
    calls = KVCalls(kv)
    watch_id = await calls.handle("alice", "kv_watch", {"prefix": "jobs/"})
    other = {"watch_id": watch_id, "timeout_seconds": None}
    assert await asyncio.wait_for(calls.handle("mallory", "kv_next", other), WAIT) is None
    assert await calls.handle("mallory", "kv_unwatch", {"watch_id": watch_id}) is None
    assert kv.watchers == 1
    await kv.set("jobs/1", "queued")
    change = await asyncio.wait_for(calls.handle("alice", "kv_next", other), WAIT)
    assert change == {"namespace": "", "key": "jobs/1", "value": "queued", "version": 1}
    await calls.handle("alice", "kv_unwatch", {"watch_id": watch_id})
    assert kv.watchers == 0
