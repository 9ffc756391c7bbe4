"""The shared key-value store agents exchange data through (F-16): ``rt.kv``, ``context.kv``.

Values are JSON. Every write bumps the key's version and is durable (written through the
store's group commit, under meta keys ``kv:["namespace", "key"]``) before the call returns.
A deleted key starts again at version 1 when it is set again.
Reads are answered from memory. ``compare_and_set`` changes a key only when it holds the
expected value. ``watch(prefix)`` yields every later change of matching keys; a change
reaches the watchers of other agents (inline or process) at once, well within 100 ms.
Namespaces separate data, e.g. one per group; the default namespace is ``""``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from miminions.kernel.errors import RuntimeNotRunningError, ValidationError
from miminions.kernel.jsonutil import copy_json
from miminions.kernel.task_input import to_json_value
from miminions.kernel.validation import check_seconds, check_utf8

if TYPE_CHECKING:
    from miminions.kernel.interfaces import Store

META_PREFIX = "kv:"
_log = logging.getLogger("miminions.kv")
_MAX_KEY = 1024
#: The largest value ``set`` accepts, as UTF-8 JSON: 10 MB, the cap of a message's data.
MAX_VALUE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class KVChange:
    """One change seen by a watcher: ``value`` None means the key was deleted."""

    namespace: str
    key: str
    value: Any
    version: int

    def to_json(self) -> dict[str, Any]:
        """The change as JSON (for a process agent's watcher)."""
        return {
            "namespace": self.namespace,
            "key": self.key,
            "value": self.value,
            "version": self.version,
        }


class KVWatch:
    """An async iterator of the changes under a prefix; ``close()`` ends it."""

    def __init__(self, kv: KVStore, namespace: str, prefix: str) -> None:
        self.namespace = namespace
        self.prefix = prefix
        self._kv = kv
        self._queue: asyncio.Queue[KVChange | None] = asyncio.Queue()

    def matches(self, namespace: str, key: str) -> bool:
        """Whether a change of ``key`` concerns this watcher."""
        return namespace == self.namespace and key.startswith(self.prefix)

    def push(self, change: KVChange | None) -> None:
        """Queue a change (None ends the watch)."""
        self._queue.put_nowait(change)

    async def next(self, timeout_seconds: float | None = None) -> KVChange | None:
        """The next change, or None once closed (or after ``timeout_seconds``)."""
        timeout_seconds = check_seconds(timeout_seconds)
        try:
            async with asyncio.timeout(timeout_seconds):
                return await self._take()
        except TimeoutError:
            return None

    def __aiter__(self) -> AsyncIterator[KVChange]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[KVChange]:
        while (change := await self._take()) is not None:
            yield change

    async def _take(self) -> KVChange | None:
        change = await self._queue.get()
        if change is None:
            # The end stays queued: every later call, and every other reader waiting on
            # this watch, ends too (not only the first to see it).
            self._queue.put_nowait(None)
        return change

    def close(self) -> None:
        """Stop watching; an ``async for`` over it ends."""
        self._kv._watches.discard(self)
        self.push(None)


class KVStore:
    """The runtime's key-value store (see the module docstring)."""

    def __init__(self, store: Store, check_caller: Callable[[], None] | None = None) -> None:
        self._store = store
        # Raises for a caller the store must refuse before anything changes (the runtime's:
        # one on another event loop or thread, whose write would half happen).
        self._check_caller = check_caller or _anyone
        self._data: dict[tuple[str, str], tuple[Any, int]] = {}
        self._watches: set[KVWatch] = set()
        self._closed = False

    async def load(self) -> None:
        """Read back what earlier runs stored."""
        stored = await self._store.load_meta_prefix(META_PREFIX)
        for meta_key, record in stored.items():
            namespace, key = json.loads(meta_key[len(META_PREFIX) :])
            if isinstance(record, dict) and record.get("value") is not None:
                self._data[(namespace, key)] = (record["value"], int(record["version"]))

    def get(self, key: str, default: Any = None, namespace: str = "") -> Any:
        """The value of ``key`` (a copy), or ``default``."""
        entry = self._data.get((_check_ns(namespace), _check_key(key)))
        return default if entry is None else to_json_value(entry[0], "value")

    def version(self, key: str, namespace: str = "") -> int:
        """How many times ``key`` was written (0: never)."""
        entry = self._data.get((_check_ns(namespace), _check_key(key)))
        return 0 if entry is None else entry[1]

    def keys(self, prefix: str = "", namespace: str = "") -> list[str]:
        """The keys of ``namespace`` starting with ``prefix``, sorted."""
        namespace, prefix = _check_ns(namespace), _check_prefix(prefix)
        return sorted(k for ns, k in self._data if ns == namespace and k.startswith(prefix))

    async def set(self, key: str, value: Any, namespace: str = "") -> int:
        """Store ``value`` (JSON, not None) under ``key``; returns the new version."""
        self._check_caller()
        if value is None:
            raise ValidationError("a value cannot be None; use delete() to remove a key")
        return await self._write(_check_ns(namespace), _check_key(key), _value(value))

    async def delete(self, key: str, namespace: str = "") -> bool:
        """Remove ``key``; False if it was not there."""
        self._check_caller()
        namespace, key = _check_ns(namespace), _check_key(key)
        if (namespace, key) not in self._data:
            return False
        await self._write(namespace, key, None)
        return True

    async def compare_and_set(
        self, key: str, expected: Any, value: Any, namespace: str = ""
    ) -> bool:
        """Set ``key`` to ``value`` only if it holds ``expected`` now (None: absent);
        ``value`` None deletes. True if it was changed."""
        self._check_caller()
        namespace, key = _check_ns(namespace), _check_key(key)
        if expected is not None:
            # Compared as JSON, as a process agent's value arrives: a tuple equals a list.
            expected = to_json_value(expected, "expected")
        new = None if value is None else _value(value)  # bad input fails whatever it holds
        entry = self._data.get((namespace, key))
        current = None if entry is None else entry[0]
        if not same_json(current, expected):
            return False
        if new is None and entry is None:
            return True
        await self._write(namespace, key, new)
        return True

    @property
    def watchers(self) -> int:
        """Open watches (of the runtime and of agents)."""
        return len(self._watches)

    def watch(self, prefix: str = "", namespace: str = "") -> KVWatch:
        """Watch the keys of ``namespace`` starting with ``prefix`` (``async for``)."""
        self._check_caller()
        if self._closed:
            raise RuntimeNotRunningError("the runtime stopped; its key-value store has no watches")
        watch = KVWatch(self, _check_ns(namespace), _check_prefix(prefix))
        self._watches.add(watch)
        return watch

    def close(self) -> None:
        """End every watch; later watches are refused (reads still answer)."""
        self._closed = True
        for watch in list(self._watches):
            watch.close()

    async def _write(self, namespace: str, key: str, value: Any) -> int:
        # Queued in the store, then applied in memory, synchronously: concurrent writers
        # are ordered (compare_and_set is atomic on the loop), and a write the store
        # refuses (closed, read-only) changes nothing anybody can see.
        entry = self._data.get((namespace, key))
        version = 0 if value is None else (0 if entry is None else entry[1]) + 1
        meta_key = META_PREFIX + json.dumps([namespace, key], ensure_ascii=False)
        commit = (
            self._store.delete_meta(meta_key)
            if value is None
            else self._store.put_meta(meta_key, {"value": value, "version": version})
        )
        if value is None:
            self._data.pop((namespace, key), None)
        else:
            self._data[(namespace, key)] = (value, version)
        for watch in list(self._watches):
            # The write is applied and queued: a watcher that fails (it cannot, with a
            # checked prefix; a subclass might) is dropped and logged, never turned into
            # an error of this write, which would break every writer of the namespace.
            try:
                if watch.matches(namespace, key):
                    # a copy each: a watcher changing what it got changes nothing else
                    watch.push(KVChange(namespace, key, copy_json(value), version))
            except Exception:
                _log.exception("dropping a key-value watch that failed on a change of %r", key)
                self._watches.discard(watch)
                with contextlib.suppress(Exception):
                    watch.push(None)  # its reader's ``async for`` ends instead of hanging
        await commit
        return version


def _anyone() -> None:
    """Every caller is fine (a store used on its own)."""


def same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same JSON: as ``==``, except that a boolean is
    never a number (``True == 1`` in Python, not in JSON)."""
    kind_a, kind_b = type(a), type(b)
    if kind_a is bool or kind_b is bool:
        return kind_a is kind_b and a == b
    if kind_a is dict:
        return (
            kind_b is dict
            and a.keys() == b.keys()
            and all(same_json(item, b[name]) for name, item in a.items())
        )
    if kind_a is list:
        return kind_b is list and len(a) == len(b) and all(map(same_json, a, b))
    return bool(a == b) and kind_b is not dict and kind_b is not list


def _value(value: Any) -> Any:
    """A JSON copy of a value to store; one over :data:`MAX_VALUE_BYTES` is rejected (all
    of the store is held in memory, and every process agent may read any value)."""
    return to_json_value(value, "value", max_bytes=MAX_VALUE_BYTES)


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
        raise ValidationError(f"a key must be a non-empty string of at most {_MAX_KEY} chars")
    check_utf8(key, "key")  # stored: see check_utf8
    return key


def _check_prefix(prefix: Any) -> str:
    # Checked when the watch opens: a bad one would otherwise fail every later write.
    if not isinstance(prefix, str) or len(prefix) > _MAX_KEY:
        raise ValidationError(
            f'a prefix must be a string of at most {_MAX_KEY} chars ("" for every key), '
            f"got {prefix!r}"
        )
    return prefix


def _check_ns(namespace: Any) -> str:
    if not isinstance(namespace, str) or len(namespace) > 256:
        raise ValidationError("a namespace must be a string of at most 256 characters")
    check_utf8(namespace, "namespace")  # stored in the key of every entry
    return namespace


__all__ = ["MAX_VALUE_BYTES", "KVChange", "KVStore", "KVWatch"]


class KVCalls:
    """Carries out the ``kv_*`` calls agents make through ``context.kv`` (for both hosts:
    a process agent's calls arrive over its socket). Watches live here, by id."""

    def __init__(self, kv: KVStore) -> None:
        self._kv = kv
        self._watches: dict[str, KVWatch] = {}
        self._ids = 0

    async def handle(self, agent_id: str, op: str, payload: dict[str, Any]) -> Any:
        """One call; see :class:`miminions.kernel.agent.AgentKV` for what each does."""
        kv = self._kv
        namespace = payload.get("namespace", "")
        key: Any = payload.get("key")
        if op == "kv_get":
            return kv.get(key, payload.get("default"), namespace)
        if op == "kv_keys":
            return kv.keys(payload.get("prefix", ""), namespace)
        if op == "kv_set":
            return await kv.set(key, payload.get("value"), namespace)
        if op == "kv_delete":
            return await kv.delete(key, namespace)
        if op == "kv_cas":
            return await kv.compare_and_set(
                key, payload.get("expected"), payload.get("value"), namespace
            )
        if op == "kv_watch":
            self._ids += 1
            watch_id = f"{agent_id}:{self._ids}"
            self._watches[watch_id] = kv.watch(payload.get("prefix", ""), namespace)
            return watch_id
        if op == "kv_next":
            watch = self._watches.get(self._own(agent_id, payload))
            if watch is None:
                return None
            # (Cancelled, the agent gave up on this wait only: its watch stays open until it
            # closes it, or the agent ends; a process agent's worker keeps a change that
            # came as it gave up for its next ``next``.)
            change = await watch.next(payload.get("timeout_seconds"))
            return None if change is None else change.to_json()
        if op == "kv_unwatch":
            watch = self._watches.pop(self._own(agent_id, payload), None)
            if watch is not None:
                watch.close()
            return None
        raise ValidationError(f"unknown key-value call {op!r}")

    @staticmethod
    def _own(agent_id: str, payload: dict[str, Any]) -> str:
        """The watch id of a call, if the calling agent opened that watch ("" otherwise):
        one agent cannot read or close another's watch."""
        watch_id = payload.get("watch_id")
        if isinstance(watch_id, str) and watch_id.startswith(f"{agent_id}:"):
            return watch_id
        return ""

    def close_agent(self, agent_id: str) -> None:
        """The agent stopped or failed: end the watches it opened (nobody reads them)."""
        prefix = f"{agent_id}:"
        for watch_id in [w for w in self._watches if w.startswith(prefix)]:
            self._watches.pop(watch_id).close()
