"""One runtime per database: the run record a runtime keeps, and who holds a database now.

Two guards: within one process, a registry of the database files open by a runtime; across
processes, the run record (``RUN_META_KEY``: pid, clean-stop flag) a runtime writes when it
starts and stops.
"""

from __future__ import annotations

import os
from typing import Any

from miminions.kernel.errors import ConfigurationError

RUN_META_KEY = "runtime.run"

_open_here: set[str] = set()


def live_owner(run_record: Any) -> int | None:
    """The pid of a runtime that has the database open, from the run record it keeps
    (``get_meta(RUN_META_KEY)``): None when it stopped cleanly or its process is gone."""
    if not isinstance(run_record, dict) or run_record.get("clean", True):
        return None
    pid = run_record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by another user
    except OSError:
        return None
    return pid


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
    """Register ``path`` as open by a runtime of this process; refuse a second one."""
    key = os.path.realpath(path) if path != ":memory:" else f":memory:{len(_open_here)}"
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
