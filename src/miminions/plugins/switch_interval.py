"""A shorter GIL switch interval while a database thread works beside the event loop.

The SQLite store writes from a thread of its own. SQLite itself runs without the GIL, but
the thread needs it back between statements (to bind parameters, to hand results to the
loop), and while the loop thread is busy it gets it only when the interpreter forces a
switch: after ``sys.getswitchinterval()``, 5 ms by default. Each statement then waits up to
5 ms, so under load a commit took four times as long as SQLite needs for it, and every
``wait_for_task`` waited for it. At 0.5 ms the writer keeps pace and the loop loses little.

The interval is process-wide: it is lowered (never raised) while at least one holder needs
it, and the value in force before the first holder comes back after the last one, unless
someone else set a different one meanwhile (theirs is kept).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

#: What the SQLite store asks for unless configured otherwise.
WRITER_SWITCH_INTERVAL = 0.0005

_lock = threading.Lock()
_holders: list[float] = []  # the interval each current holder asked for
_before: float | None = None  # in force before the first holder
_set: float | None = None  # what we set last


def hold_switch_interval(seconds: float) -> Callable[[], None]:
    """Keep the interpreter's switch interval at most ``seconds`` until the returned
    function is called (calling it again does nothing)."""
    if not seconds > 0:
        raise ValueError(f"a switch interval must be positive, not {seconds!r}")
    with _lock:
        _holders.append(seconds)
        _apply()
    released = False

    def release() -> None:
        nonlocal released
        with _lock:
            if released:
                return
            released = True
            _holders.remove(seconds)
            _apply()

    return release


def _apply() -> None:
    global _before, _set
    current = sys.getswitchinterval()
    if _set is not None and current != _set:
        _before = current  # changed by someone else: theirs is the one to come back to
    if not _holders:
        if _before is not None and _set is not None:
            _set_interval(_before)
        _before = _set = None
        return
    if _set is None:
        _before = current
    wanted = min(min(_holders), _before if _before is not None else current)
    _set_interval(wanted)
    _set = sys.getswitchinterval()  # as the interpreter stores it


def _set_interval(seconds: float) -> None:
    # The interpreter keeps whole microseconds, truncating: aim at the middle of the one
    # meant, so a value read back and set again stays the same.
    sys.setswitchinterval((max(1, round(seconds * 1e6)) + 0.5) / 1e6)


__all__ = ["WRITER_SWITCH_INTERVAL", "hold_switch_interval"]
