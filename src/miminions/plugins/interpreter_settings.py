"""Interpreter settings the built-in plugins adjust while they run, and put back after.

Three process-wide settings and one of the event loop's thread cost the runtime dearly at
their defaults:

* **The GIL switch interval.** The SQLite store writes from a thread of its own. SQLite
  itself runs without the GIL, but the thread needs it back between statements (to bind
  parameters, to hand results to the loop), and while the loop thread is busy it gets it
  only when the interpreter forces a switch: after ``sys.getswitchinterval()``, 5 ms by
  default. Each statement then waits up to 5 ms, so under load a commit took four times as
  long as SQLite needs for it, and every ``wait_for_task`` waited for it. At 0.5 ms the
  writer keeps pace and the loop loses little.
* **The cyclic garbage collector's first threshold.** A busy runtime allocates a few
  container objects per task and keeps every task in memory. With the default threshold
  (a young collection every 700 allocations) collections took a fifth of a no-op task
  throughput round, most of it in full collections walking all those tasks. At 20,000 the
  young collections are as cheap in total and the full ones, which follow from them, rare.
  Reference counting still frees everything that is not part of a cycle at once; cyclic
  garbage waits a little longer for its collection.
* **How sqlite3 binds None.** Python's ``sqlite3`` binds an exact ``int``, ``float`` or
  ``str`` at once, but looks for an adapter for any other value, None included, and that
  search (a failed attribute lookup that formats, then drops, an error message) costs the
  database thread several times what binding the value does, with the GIL held. A task
  writes about fifteen Nones (its unset fields) on its way through the queue. While the
  SQLite store is open, an adapter for None is registered that gives None back, so None is
  still bound as NULL, found at once. This one is the ``sqlite3`` module's, not the
  interpreter's; what is stored does not change, only how fast (``sqlite3.adapters``
  shows the entry, and ``sqlite3.adapt(None)`` returns None instead of raising).
* **The timer slack of the loop's thread** (Linux). The kernel may end a thread's timed
  waits (``epoll_wait``, ``select``, ``nanosleep``) up to its timer slack late, 50 µs by
  default, to wake several waiters at once. The loop waits like that for its next timer,
  so every ``asyncio.sleep``, timeout and deadline of the runtime fired that much later:
  ten agents sleeping 10 ms per task lost about half a per cent of their time to it
  (docs/benchmarks.md, P-05). The slack is a setting of each thread: it is held for the
  thread that asks (the loop's), and released there; a thread or process started meanwhile
  from that thread starts with its slack (Linux's rule), the others keep theirs. Process
  workers set theirs themselves, to the runtime's (see the process host).

Each setting is held while at least one holder needs it, only ever in the direction that
helps (the interval shortened, the threshold raised), and the value in force before the
first holder comes back after the last one, unless someone else set a different one
meanwhile (theirs is kept).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from typing import cast

#: The switch interval the SQLite store asks for unless configured otherwise.
WRITER_SWITCH_INTERVAL = 0.0005
#: The collector threshold the asyncio executor asks for unless configured otherwise.
DISPATCH_GC_THRESHOLD = 20_000
#: The timer slack (nanoseconds) the asyncio executor asks for on its loop's thread unless
#: configured otherwise.
DISPATCH_TIMER_SLACK_NS = 1_000
#: The largest collector threshold the interpreter takes (a C int).
MAX_GC_THRESHOLD = 2**31 - 1
#: The largest timer slack accepted (ns): a second. More would only make timers late.
MAX_TIMER_SLACK_NS = 1_000_000_000

logger = logging.getLogger("miminions.plugins.interpreter_settings")


class ProcessSetting:
    """One process-wide setting, held by any number of holders at once.

    ``read`` and ``write`` get and set it; ``strongest(before, wanted)`` is the value to
    apply, given the one in force before the first holder and what the holders asked for.
    """

    def __init__(
        self,
        read: Callable[[], float],
        write: Callable[[float], None],
        strongest: Callable[[float, list[float]], float],
    ) -> None:
        self._read = read
        self._write = write
        self._strongest = strongest
        self._lock = threading.Lock()
        self._holders: list[float] = []  # what each current holder asked for
        self._before: float | None = None  # in force before the first holder
        self._set: float | None = None  # what we set last, as read back
        os.register_at_fork(after_in_child=self._after_fork)

    def hold(self, value: float) -> Callable[[], None]:
        """Apply ``value`` (combined with the other holders') until the returned function
        is called (calling it again does nothing)."""
        with self._lock:
            self._holders.append(value)
            try:
                self._apply()
            except BaseException:
                self._holders.remove(value)
                raise
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._holders.remove(value)
                self._apply()

        return release

    def _apply(self) -> None:
        current = self._read()
        if self._set is not None and current != self._set:
            self._before = current  # changed by someone else: theirs is the one to come back to
        if not self._holders:
            if self._before is not None and self._set is not None:
                self._write(self._before)
            self._before = self._set = None
            return
        if self._set is None:
            self._before = current
        self._write(
            self._strongest(current if self._before is None else self._before, self._holders)
        )
        self._set = self._read()

    def _after_fork(self) -> None:
        # A forked child runs none of its parent's holders (they live in the parent): it
        # gets the value from before them back, and a lock no other thread holds.
        self._lock = threading.Lock()
        if self._holders and self._before is not None and self._read() == self._set:
            self._write(self._before)
        self._holders.clear()
        self._before = self._set = None

    def _forget(self) -> None:
        """Drop every holder without touching the setting (for tests that leave holders)."""
        with self._lock:
            self._holders.clear()
            self._before = self._set = None


def _write_switch_interval(seconds: float) -> None:
    # The interpreter keeps whole microseconds, truncating: aim at the middle of the one
    # meant, so a value read back and set again stays the same.
    sys.setswitchinterval((max(1, round(seconds * 1e6)) + 0.5) / 1e6)


def _write_gc_threshold(threshold: float) -> None:
    gc.set_threshold(int(threshold), *gc.get_threshold()[1:])


def _raise_gc_threshold(before: float, wanted: list[float]) -> float:
    # A threshold of 0 turns automatic collection off: whoever did that meant it.
    return before if before == 0 else max(before, *wanted)


SWITCH_INTERVAL = ProcessSetting(
    sys.getswitchinterval,
    _write_switch_interval,
    lambda before, wanted: min(before, *wanted),
)
GC_THRESHOLD = ProcessSetting(
    lambda: gc.get_threshold()[0], _write_gc_threshold, _raise_gc_threshold
)


def hold_switch_interval(seconds: float) -> Callable[[], None]:
    """Keep the interpreter's switch interval at most ``seconds`` until the returned
    function is called (calling it again does nothing)."""
    if not seconds > 0:
        raise ValueError(f"a switch interval must be positive, not {seconds!r}")
    return SWITCH_INTERVAL.hold(seconds)


def hold_gc_threshold(allocations: int) -> Callable[[], None]:
    """Keep the collector's first threshold (``gc.get_threshold()[0]``) at least
    ``allocations`` until the returned function is called (calling it again does nothing).
    A threshold of 0 (automatic collection off) is left alone."""
    _check_count(allocations, MAX_GC_THRESHOLD, "a collector threshold")
    return GC_THRESHOLD.hold(allocations)


# ----------------------------------------------------------------------------- sqlite3 None
_NONE_ADAPTER_KEY = (type(None), sqlite3.PrepareProtocol)
#: sqlite3's adapter for None while held: a C function that gives None back for None (an
#: empty dict's ``get``), so None is bound as NULL, as sqlite3 binds it without an adapter.
_NONE_TO_NULL: Callable[[None], None] = cast(Callable[[None], None], {}.get)
_none_adapter_lock = threading.Lock()
_none_adapter_holders = 0


def hold_none_adapter() -> Callable[[], None]:
    """Register :data:`_NONE_TO_NULL` as ``sqlite3``'s adapter for None until the returned
    function is called (calling it again does nothing); see the module for why.

    An adapter for None that someone else registered is left in place (theirs is used), and
    one registered over ours while held is not removed at the end.
    """
    global _none_adapter_holders
    with _none_adapter_lock:
        _none_adapter_holders += 1
        if _none_adapter_holders == 1 and _NONE_ADAPTER_KEY not in sqlite3.adapters:
            sqlite3.register_adapter(type(None), _NONE_TO_NULL)
    released = False

    def release() -> None:
        global _none_adapter_holders
        nonlocal released
        with _none_adapter_lock:
            if released:
                return
            released = True
            _none_adapter_holders -= 1
            if not _none_adapter_holders and sqlite3.adapters.get(_NONE_ADAPTER_KEY) is (
                _NONE_TO_NULL
            ):
                del sqlite3.adapters[_NONE_ADAPTER_KEY]

    return release


# ----------------------------------------------------------------------------- timer slack
_PR_SET_TIMERSLACK = 29
_PR_GET_TIMERSLACK = 30


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, if this is Linux and it answers ``PR_GET_TIMERSLACK``; else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        if prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0) < 0:
            return None
    except (OSError, AttributeError):  # no libc to load, or a libc without prctl
        return None
    return prctl


_prctl = _load_prctl()
_thread_slacks: dict[int, ProcessSetting] = {}  # by thread ident
_thread_slacks_lock = threading.Lock()


def _read_timer_slack() -> float:
    assert _prctl is not None
    return float(_prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0))


def _write_timer_slack(nanoseconds: float) -> None:
    assert _prctl is not None
    if _prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(int(nanoseconds)), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot set the timer slack: {os.strerror(error)}")


def hold_timer_slack(nanoseconds: int) -> Callable[[], None]:
    """Keep the calling thread's timer slack at most ``nanoseconds`` until the returned
    function is called, from the same thread (calling it again does nothing).

    Linux only: elsewhere, or where ``prctl`` is refused, this changes nothing. A release
    from another thread cannot reach the slack (it is set by the thread itself): it is
    ignored, and the thread keeps the shorter slack.
    """
    _check_timer_slack(nanoseconds)
    if _prctl is None:
        return _nothing
    thread = threading.get_ident()
    with _thread_slacks_lock:
        setting = _thread_slacks.get(thread)
        if setting is None:
            setting = _thread_slacks[thread] = ProcessSetting(
                _read_timer_slack, _write_timer_slack, lambda before, wanted: min(before, *wanted)
            )
    try:
        release = setting.hold(nanoseconds)
    except OSError as exc:  # refused (a sandbox): timers only fire a little later
        logger.debug("timer slack left alone: %s", exc)
        return _nothing

    def release_in_thread() -> None:
        if threading.get_ident() == thread:
            release()
        else:
            logger.debug("timer slack released from another thread than its holder's: kept")

    return release_in_thread


#: The timer slack Linux gives a thread by default (nanoseconds).
LINUX_DEFAULT_TIMER_SLACK_NS = 50_000


def set_timer_slack(nanoseconds: int) -> bool:
    """Set the calling thread's timer slack, for good (for a process that owns its thread:
    a worker); whether it was set (False off Linux, or where ``prctl`` is refused)."""
    _check_timer_slack(nanoseconds)
    if _prctl is None:
        return False
    try:
        _write_timer_slack(nanoseconds)
    except OSError:
        return False
    return True


def _check_timer_slack(nanoseconds: int) -> None:
    _check_count(nanoseconds, MAX_TIMER_SLACK_NS, "a timer slack (ns)")


def _check_count(value: object, most: int, what: str) -> None:
    """Raise ValueError unless ``value`` is an int (not a bool) from 1 to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValueError(f"{what} must be a positive int up to {most}, not {value!r}")


def _nothing() -> None:
    """The release of a hold that changed nothing."""


__all__ = [
    "DISPATCH_GC_THRESHOLD",
    "DISPATCH_TIMER_SLACK_NS",
    "GC_THRESHOLD",
    "LINUX_DEFAULT_TIMER_SLACK_NS",
    "MAX_GC_THRESHOLD",
    "MAX_TIMER_SLACK_NS",
    "SWITCH_INTERVAL",
    "WRITER_SWITCH_INTERVAL",
    "ProcessSetting",
    "hold_gc_threshold",
    "hold_none_adapter",
    "hold_switch_interval",
    "hold_timer_slack",
    "set_timer_slack",
]
