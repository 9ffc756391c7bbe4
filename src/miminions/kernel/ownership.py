"""One runtime per database: the run record a runtime keeps, and who holds a database now.

Two guards: within one process, a registry of the database files open by a runtime; across
processes, the run record (``RUN_META_KEY``: pid, clean-stop flag) a runtime writes when it
starts and stops. Reading and then writing the run record is not atomic across processes, so
the store is the real lock: the built-in one holds an exclusive OS lock on the database while
it is open (the kernel does no I/O). The run record still names a live owner for stores
without such a lock, and tells the next start that the previous run crashed.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from miminions.kernel.errors import ConfigurationError

RUN_META_KEY = "runtime.run"

_open_here: set[str] = set()
# Each ``:memory:`` runtime has a database of its own, so each gets a key no other claim has.
_memory_ids = itertools.count()


def running_record() -> dict[str, Any]:
    """The run record a runtime writes when it starts (it is not stopped cleanly yet)."""
    return {"pid": os.getpid(), "clean": False, "started_at": time.time()}


def stopped_record() -> dict[str, Any]:
    """The run record a runtime writes when it stops cleanly (or gives up its start)."""
    return {"pid": os.getpid(), "clean": True, "stopped_at": time.time()}


def unclean(run_record: Any) -> bool:
    """Whether a run record says its runtime did not stop cleanly (it runs, or crashed)."""
    return isinstance(run_record, dict) and not run_record.get("clean", True)


def live_owner(run_record: Any) -> int | None:
    """The pid of a runtime that has the database open, from the run record it keeps
    (``get_meta(RUN_META_KEY)``): None when it stopped cleanly or its process is gone."""
    if not unclean(run_record):
        return None
    pid = run_record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return pid if process_exists(pid) else None


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    except (OSError, OverflowError, ValueError):  # no such pid can exist
        return False
    return True


def refuse_live_owner(previous: Any, path: str) -> None:
    """Refuse a database that a runtime in another, still living process has open."""
    pid = live_owner(previous)
    if pid is None or pid == os.getpid():
        return  # free, or its owner died (this start recovers the work)
    raise ConfigurationError(
        f"database {path!r} is in use by a runtime in process {pid}; one runtime per "
        "database (stop that one, or use another storage_path)"
    )


def claim(path: str) -> str:
    """Register ``path`` as open by a runtime of this process; refuse a second one.

    ``:memory:`` is never refused: every connection to it is a new, private database.
    """
    if path == ":memory:":
        # A counter, not the number of claims: that number falls when a runtime stops and
        # would hand a new runtime the key of one still running.
        key = f":memory:{next(_memory_ids)}"
        _open_here.add(key)
        return key
    key = os.path.realpath(path)
    if key in _open_here:
        raise ConfigurationError(
            f"database {path!r} is already open by another runtime in this process; one "
            "runtime per database (stop that one, or use another storage_path)"
        )
    _open_here.add(key)
    return key


def release(key: str) -> None:
    """Forget a claim made with :func:`claim`."""
    _open_here.discard(key)
