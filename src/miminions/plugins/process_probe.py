"""OS facts about agent worker processes, for the process-isolation plugin.

The runtime runs each agent in its own worker process. This module reads what the plugin
needs to know about those workers (memory, CPU time, identity) and kills the leftovers of a
runtime that died without stopping its workers. Facts come from Linux ``/proc``, read with
plain file reads, no third-party package and no subprocess. Where there is no ``/proc``
(macOS, Windows) the probing functions return None, meaning "unknown", instead of raising.

A pid alone does not name a process: pids are reused. A pid together with the process's
start time (:func:`process_start_time`) does, for the whole life of the process; that pair
is what a :class:`WorkerRecord` stores and what :func:`reap` checks before it kills.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger("miminions.plugins.process_host")

# States in /proc/<pid>/stat of a process that has exited: a zombie waits for its parent to
# reap it, 'X'/'x' is a dead one being torn down. Neither uses resources nor can be killed.
_GONE_STATES = frozenset({"Z", "X", "x"})
_REAP_POLL_SECONDS = 0.01


def _sysconf(name: str, default: int) -> int:
    try:
        return os.sysconf(name)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no /proc to read either
        return default


_PAGE_SIZE = _sysconf("SC_PAGE_SIZE", 4096)
_CLOCK_TICKS = _sysconf("SC_CLK_TCK", 100)


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """Resources a process uses now: resident memory and CPU time consumed so far."""

    rss_bytes: int
    cpu_seconds: float


class _Stat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` this module uses."""

    state: str
    cpu_ticks: int  # utime + stime, in clock ticks
    start_time: int  # clock ticks after boot
    group: int = 0  # the process group
    children_cpu_ticks: int = 0  # cutime + cstime: of the children it waited for

    @property
    def alive(self) -> bool:
        return self.state not in _GONE_STATES


def _parse_stat(line: bytes) -> _Stat:
    """Parse a ``/proc/<pid>/stat`` line; raises ValueError on text not in that format.

    The second field is the command name in parentheses. A process may name itself anything,
    spaces and parentheses included, so the fields after the name are found from the *last*
    ``)`` of the line: nothing after the name can contain one.
    """
    close = line.rfind(b")")
    fields = line[close + 2 :].split()  # fields[0] is field 3 (state) in proc(5)
    if close < 0 or len(fields) < 20:
        raise ValueError(f"not a /proc/<pid>/stat line: {line!r}")
    return _Stat(
        state=fields[0].decode("ascii"),
        cpu_ticks=int(fields[11]) + int(fields[12]),  # fields 14 and 15: utime, stime
        start_time=int(fields[19]),  # field 22: starttime
        group=int(fields[2]),  # field 5: pgrp
        children_cpu_ticks=int(fields[13]) + int(fields[14]),  # fields 16 and 17
    )


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb", buffering=0) as file:
            return file.read()
    except OSError:  # no such process (ENOENT; ESRCH while it exits), no /proc, or hidepid
        return None


def _read_stat(pid: int) -> _Stat | None:
    line = _read_proc(pid, "stat")
    if line is None:
        return None
    try:
        return _parse_stat(line)
    except ValueError:  # unknown is the honest answer; a monitor loop must not die of it
        return None


def read_usage(pid: int, members: Iterable[int] = ()) -> ProcessUsage | None:
    """Resident memory and CPU time (user + system) of process ``pid``, with the CPU time
    of the children it waited for, plus the same of the processes ``members`` (those of
    its process group, see :func:`group_members`) that are still there.

    None when there is no such process, when it has exited and only its zombie is left, or
    when there is no ``/proc`` to read. Cheap enough to call several times a second per
    worker: two small file reads per process.
    """
    own = _usage_of(pid)
    if own is None:
        return None
    rss, ticks = own
    for member in members:
        if member != pid and (usage := _usage_of(member)) is not None:
            rss += usage[0]
            ticks += usage[1]
    return ProcessUsage(rss_bytes=rss, cpu_seconds=ticks / _CLOCK_TICKS)


def _usage_of(pid: int) -> tuple[int, int] | None:
    """(resident bytes, CPU ticks with its waited-for children's) of a live process."""
    stat = _read_stat(pid)
    if stat is None or not stat.alive:
        return None
    statm = _read_proc(pid, "statm")
    if statm is None:
        return None
    try:
        resident_pages = int(statm.split()[1])
    except (IndexError, ValueError):
        return None
    return resident_pages * _PAGE_SIZE, stat.cpu_ticks + stat.children_cpu_ticks


def group_members(groups: Iterable[int]) -> dict[int, list[int]]:
    """The live processes of each process group in ``groups``, besides its leader, from one
    pass over ``/proc`` (an agent's subprocesses stay in its worker's group); empty where
    there is no ``/proc``."""
    wanted = set(groups)
    found: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _read_stat(pid)
        if stat is not None and stat.group in wanted and pid != stat.group and stat.alive:
            found.setdefault(stat.group, []).append(pid)
    return found


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None when unknown.

    Unknown means there is no such process or no ``/proc``. Pids are reused, start times of
    one pid are not, so ``(pid, start time)`` names one process for its whole life.
    """
    stat = _read_stat(pid)
    return None if stat is None else stat.start_time


def machine_load() -> float:
    """The 1-minute load average per CPU this process may run on; 0.0 where unknown.

    About 1.0 means every usable CPU is busy. CPUs are counted from the affinity mask where
    there is one, as a container or ``taskset`` may allow fewer CPUs than the machine has.
    """
    try:
        one_minute = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no getloadavg; OSError: unobtainable
        return 0.0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity mask
        cpus = os.cpu_count() or 1
    return one_minute / max(cpus, 1)


class WorkerRecord(BaseModel):
    """What the runtime stores about each worker process it started.

    Kept (as JSON) in the runtime's database, so that a later runtime on the same database
    can find and :func:`reap` the workers of a runtime that was killed before it could stop
    them. ``start_time`` is None when it could not be read; such a worker is never reaped.
    """

    model_config = ConfigDict(extra="forbid")

    pid: int
    start_time: int | None
    agent_id: str
    runtime_pid: int


def is_same_process(record: WorkerRecord) -> bool:
    """Whether the worker of ``record`` is still running: its pid is alive and started then.

    A record without a start time is never the same process: without proof that the pid was
    not reused, it must not be killed. Always False where there is no ``/proc``.
    """
    # pid 0 and negative pids name process groups (-1: every process) in os.kill.
    if record.start_time is None or record.pid <= 0:
        return False
    stat = _read_stat(record.pid)
    return stat is not None and stat.alive and stat.start_time == record.start_time


def _kill_if_same(record: WorkerRecord) -> bool:
    """SIGKILL the worker of ``record`` if it is still running; whether a signal was sent.

    Raises ProcessLookupError or PermissionError from the kill itself.
    """
    # A pidfd pins the process: if the pid is reused after the check, the signal still goes
    # to the checked process (or fails), never to the newcomer. Without pidfds (not Linux,
    # or a kernel older than 5.3) a tiny window between check and kill remains.
    try:
        pidfd: int | None = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        pidfd = None
    try:
        if not is_same_process(record):
            return False
        if pidfd is None:
            os.kill(record.pid, signal.SIGKILL)
        else:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def signal_worker(pid: int, signum: int) -> None:
    """Send ``signum`` to a worker and to the processes its agent started.

    A worker leads its own process group (see ``process_worker``), which its agent's
    subprocesses join unless they start a session of their own: signalling the group pauses,
    resumes or ends them with it. A worker too young to have formed its group yet gets the
    signal alone. A process that is gone is not an error.
    """
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def kill_leftovers(pid: int) -> None:
    """SIGKILL what is left of the process group of worker ``pid``, which has exited.

    While any member of a group lives, the kernel does not give its number to a new
    process, so the group still named after the dead worker is made only of processes it
    started. A group that is gone is not an error.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def reap(records: Iterable[WorkerRecord], *, grace_seconds: float = 1.0) -> list[WorkerRecord]:
    """Kill the workers of ``records`` that are still running; return the records killed.

    Meant for the workers of a runtime that died: they have nothing left to save, so they
    get SIGKILL, not a polite SIGTERM. Records whose process is gone or was replaced (see
    :func:`is_same_process`) are left alone. A worker that exits meanwhile is skipped, one
    that may not be signalled is skipped with a warning; neither raises.

    Then waits, at most ``grace_seconds`` in all, until the killed processes are gone. A
    killed child of the caller stays a zombie until its parent waits for it; it counts as
    gone. The wait blocks the calling thread with short sleeps: this runs once, at start-up,
    in a worker thread, never on the event loop.
    """
    killed: list[WorkerRecord] = []
    for record in records:
        try:
            if _kill_if_same(record):
                killed.append(record)
        except ProcessLookupError:
            continue
        except PermissionError:
            logger.warning(
                "not reaping worker pid %d of agent %r (runtime pid %d): not permitted",
                record.pid,
                record.agent_id,
                record.runtime_pid,
            )
    deadline = time.monotonic() + grace_seconds
    alive = killed
    while alive:
        alive = [record for record in alive if is_same_process(record)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(_REAP_POLL_SECONDS)
    for record in alive:  # e.g. stuck in uninterruptible I/O; it dies when that returns
        logger.warning(
            "worker pid %d of agent %r was killed but is still running after %.1f s",
            record.pid,
            record.agent_id,
            grace_seconds,
        )
    for record in records:
        _kill_orphaned_group(record)
    return killed


def _kill_orphaned_group(record: WorkerRecord) -> None:
    """Kill the processes the dead worker of ``record`` started and left behind.

    Only when no live process holds the worker's pid: then a group with that number can
    only be what is left of the worker's (see :func:`kill_leftovers`). A live process with
    that pid is either the worker itself (not killed: leave all of it alone) or a newcomer
    that got the number after the group had emptied: its group is none of ours.
    """
    if record.pid <= 0:
        return
    stat = _read_stat(record.pid)
    if stat is None or not stat.alive:
        kill_leftovers(record.pid)


__all__ = [
    "ProcessUsage",
    "WorkerRecord",
    "is_same_process",
    "kill_leftovers",
    "machine_load",
    "process_start_time",
    "read_usage",
    "reap",
    "signal_worker",
]
