"""Unique, roughly time-ordered ids for tasks and messages.

An id is 14 hex digits of microseconds since the epoch, then 10 random ones. Time order
keeps database index inserts near the end of the B-tree instead of at random pages, which
keeps bulk writes fast as a table grows.

The random part is the operating system's (``os.urandom``), so ids cannot be predicted
from earlier ones, and an application that seeds :mod:`random` cannot make them repeat.
It is read a few kilobytes at a time rather than per id: ``os.urandom`` lets go of the GIL,
and beside the store's writer thread each id then waited for the GIL to come back, several
microseconds per submitted task. A forked child drops what it inherited and reads its own.
"""

from __future__ import annotations

import os
import threading
import time

_RANDOM_BYTES = 5  # 10 hex digits
_POOL_BYTES = _RANDOM_BYTES * 800

_lock = threading.Lock()
_pool = bytearray()


def time_ordered_id(prefix: str = "") -> str:
    """A new unique id, ``prefix`` first (see the module docstring for its make-up)."""
    with _lock:
        if not _pool:
            _pool.extend(os.urandom(_POOL_BYTES))
        piece = _pool[-_RANDOM_BYTES:]
        del _pool[-_RANDOM_BYTES:]
    return f"{prefix}{time.time_ns() // 1000:014x}{piece.hex()}"


def time_ordered_ids(count: int, prefix: str = "") -> list[str]:
    """``count`` new unique ids, ``prefix`` first, made together: a fraction of the cost of
    as many :func:`time_ordered_id` calls (one lock, one read of the random pool, one hex
    conversion). Their time parts are consecutive microseconds from now, so the ids of a
    batch never share one, however many it holds."""
    if count <= 0:
        return []
    size = count * _RANDOM_BYTES
    with _lock:
        if len(_pool) < size:
            _pool.extend(os.urandom(size + _POOL_BYTES))
        digits = _pool[-size:].hex()
        del _pool[-size:]
    first = time.time_ns() // 1000
    width = 2 * _RANDOM_BYTES
    return [
        f"{prefix}{first + index:014x}{digits[index * width : index * width + width]}"
        for index in range(count)
    ]


def _forget_inherited() -> None:
    # The parent's unused bytes would give the child the parent's next ids; its lock may
    # have been held by another thread at the fork.
    global _lock
    _lock = threading.Lock()
    _pool.clear()


os.register_at_fork(after_in_child=_forget_inherited)

__all__ = ["time_ordered_id", "time_ordered_ids"]
