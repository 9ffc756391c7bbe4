"""Unique, roughly time-ordered ids for tasks and messages.

An id is 14 hex digits of microseconds since the epoch, then 10 random ones. Time order
keeps database index inserts near the end of the B-tree instead of at random pages, which
keeps bulk writes fast as a table grows.

The random part comes from a generator of our own, seeded from the OS when the module is
imported and again in every forked child: an application that seeds :mod:`random` (for
reproducible agents) cannot make it repeat ids. It is not ``os.urandom`` per id because
that call lets go of the GIL, and beside the store's writer thread each id then waited for
the GIL to come back: several microseconds per submitted task.
"""

from __future__ import annotations

import os
import random
import time

_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def time_ordered_id(prefix: str = "") -> str:
    """A new unique id, ``prefix`` first (see the module docstring for its make-up)."""
    return f"{prefix}{time.time_ns() // 1000:014x}{_random.getrandbits(40):010x}"


__all__ = ["time_ordered_id"]
