"""What /proc says about a process, for tests that check which processes are left."""

from __future__ import annotations

from pathlib import Path


def proc_state(pid: int) -> str | None:
    """The state letter of ``pid`` in /proc (R, S, T, Z, ...), None when there is none."""
    try:
        line = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return line[line.rfind(b")") + 2 :].split()[0].decode()


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process nobody reaped)."""
    return proc_state(pid) not in (None, "Z", "X", "x")
