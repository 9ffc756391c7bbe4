"""Tests of the worker-process probe (``miminions.plugins.process_probe``)."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest

from miminions.plugins import process_probe
from miminions.plugins.process_probe import (
    ProcessUsage,
    WorkerRecord,
    is_same_process,
    machine_load,
    process_start_time,
    read_usage,
    reap,
)

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux /proc")

MiB = 2**20

# Says it is ready, then blocks until stdin gets a line (or closes).
WAIT = "import sys; print('ready', flush=True); sys.stdin.readline()"

Child = subprocess.Popen[str]


@pytest.fixture
def spawn() -> Iterator[Callable[[str], Child]]:
    """Start Python children running the given code; every one is killed and reaped after."""
    children: list[Child] = []

    def start(code: str = WAIT) -> Child:
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


def read_line(child: Child, timeout: float = 10.0) -> str:
    """The next line the child prints, failing if none arrives within ``timeout``."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    assert ready, f"child printed nothing within {timeout} s"
    return child.stdout.readline().strip()


def started(spawn: Callable[[str], Child], code: str = WAIT) -> Child:
    """A child that is running ``code`` (past the interpreter start-up)."""
    child = spawn(code)
    assert read_line(child) == "ready"
    return child


def record_of(child: Child, start_time: int | None = -1) -> WorkerRecord:
    """A worker record of ``child``; ``start_time=-1`` means its real start time."""
    if start_time == -1:
        start_time = process_start_time(child.pid)
        assert start_time is not None
    return WorkerRecord(
        pid=child.pid, start_time=start_time, agent_id="a1", runtime_pid=os.getpid()
    )


def gone_record(spawn: Callable[[str], Child]) -> WorkerRecord:
    """The record of a worker that has exited and been reaped since it was recorded."""
    child = started(spawn)
    record = record_of(child)
    child.kill()
    child.wait(timeout=10)
    return record


def wait_exited(child: Child) -> None:
    """Block until ``child`` has exited, leaving it a zombie (not reaped)."""
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)


# ----------------------------------------------------------------------------- stat parsing
STAT_TAIL = b"S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 1 0 987654 12345678 512"


@pytest.mark.parametrize(
    "comm",
    [b"python", b"my worker", b"x) Z 1 2 3 (y", b"a)", b")))", b"(", b""],
)
def test_parse_stat_finds_fields_after_the_last_parenthesis(comm: bytes) -> None:
    """The command name may hold spaces, parentheses and things that look like fields."""
    stat = process_probe._parse_stat(b"4242 (" + comm + b") " + STAT_TAIL + b"\n")
    assert stat.state == "S"
    assert stat.cpu_ticks == 150 + 25
    assert stat.start_time == 987654
    assert stat.alive


def test_parse_stat_sees_zombies_as_not_alive() -> None:
    stat = process_probe._parse_stat(b"7 (w) " + b"Z" + STAT_TAIL[1:])
    assert stat.state == "Z"
    assert not stat.alive


@pytest.mark.parametrize("line", [b"", b"4242 python S 1 2", b"4242 (python) S 1 2 3"])
def test_parse_stat_rejects_other_text(line: bytes) -> None:
    with pytest.raises(ValueError, match="stat line"):
        process_probe._parse_stat(line)


# ----------------------------------------------------------------------------- usage
@linux_only
def test_read_usage_of_this_process() -> None:
    usage = read_usage(os.getpid())
    assert isinstance(usage, ProcessUsage)
    assert usage.rss_bytes > 0
    assert usage.cpu_seconds >= 0


@linux_only
def test_read_usage_counts_cpu_time() -> None:
    before = read_usage(os.getpid())
    assert before is not None
    busy_until = time.process_time() + 0.3
    while time.process_time() < busy_until:
        pass
    after = read_usage(os.getpid())
    assert after is not None
    assert after.cpu_seconds - before.cpu_seconds >= 0.2


@linux_only
@pytest.mark.slow
def test_read_usage_of_a_missing_process_is_none(spawn: Callable[[str], Child]) -> None:
    assert read_usage(gone_record(spawn).pid) is None


@linux_only
@pytest.mark.slow
def test_read_usage_sees_a_child_allocate(spawn: Callable[[str], Child]) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        print("ready", flush=True)
        sys.stdin.readline()
        data = b"x" * {50 * MiB}
        print("allocated", flush=True)
        sys.stdin.readline()
        """
    )
    child = started(spawn, code)
    before = read_usage(child.pid)
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()
    assert read_line(child) == "allocated"
    after = read_usage(child.pid)
    assert before is not None
    assert after is not None
    assert after.rss_bytes - before.rss_bytes >= 45 * MiB


@linux_only
@pytest.mark.slow
def test_a_zombie_has_no_usage_and_is_not_the_same_process(
    spawn: Callable[[str], Child],
) -> None:
    child = started(spawn)
    record = record_of(child)
    child.kill()
    wait_exited(child)
    assert read_usage(child.pid) is None
    assert not is_same_process(record)


@linux_only
@pytest.mark.slow
def test_a_process_named_like_stat_fields_is_read_right(spawn: Callable[[str], Child]) -> None:
    """A process can rename itself; a name with ')' and fake fields must not shift them."""
    name = "w) Z 1 (x"
    code = f"open('/proc/self/comm', 'w').write({name!r}); {WAIT}"
    child = started(spawn, code)
    with open(f"/proc/{child.pid}/comm") as comm:
        assert comm.read().strip() == name
    usage = read_usage(child.pid)
    assert usage is not None
    assert usage.rss_bytes > 0
    assert process_start_time(child.pid) is not None
    assert is_same_process(record_of(child))


# ----------------------------------------------------------------------------- identity
@linux_only
def test_start_time_of_a_process_does_not_change() -> None:
    first = process_start_time(os.getpid())
    assert isinstance(first, int)
    assert process_start_time(os.getpid()) == first


@linux_only
@pytest.mark.slow
def test_start_times_tell_processes_apart(spawn: Callable[[str], Child]) -> None:
    mine = process_start_time(os.getpid())
    child = started(spawn)
    theirs = process_start_time(child.pid)
    assert mine is not None
    assert theirs is not None
    assert theirs > mine  # this test process started well before its child


@linux_only
def test_start_time_of_a_missing_process_is_none() -> None:
    assert process_start_time(-1) is None


@linux_only
def test_is_same_process_needs_the_right_start_time() -> None:
    start = process_start_time(os.getpid())
    assert start is not None

    def record(start_time: int | None, pid: int = os.getpid()) -> WorkerRecord:
        return WorkerRecord(pid=pid, start_time=start_time, agent_id="a", runtime_pid=1)

    assert is_same_process(record(start))
    assert not is_same_process(record(start + 1))
    assert not is_same_process(record(None))  # no proof, no match
    assert not is_same_process(record(start, pid=0))
    assert not is_same_process(record(start, pid=-1))


@linux_only
@pytest.mark.slow
def test_a_gone_process_is_not_the_same(spawn: Callable[[str], Child]) -> None:
    assert not is_same_process(gone_record(spawn))


def test_worker_record_round_trips_json_and_forbids_extra_fields() -> None:
    record = WorkerRecord(pid=12, start_time=None, agent_id="a1", runtime_pid=3)
    assert WorkerRecord.model_validate_json(record.model_dump_json()) == record
    with pytest.raises(ValueError, match="extra"):
        WorkerRecord.model_validate({**record.model_dump(), "host": "x"})


# ----------------------------------------------------------------------------- reaping
@linux_only
@pytest.mark.slow
def test_reap_kills_matching_workers_and_spares_the_others(
    spawn: Callable[[str], Child],
) -> None:
    doomed = started(spawn)
    reused = started(spawn)  # its pid, recorded with another start time: a reused pid
    unproven = started(spawn)
    doomed_record = record_of(doomed)
    reused_start = process_start_time(reused.pid)
    assert reused_start is not None
    reused_record = record_of(reused, reused_start + 1)

    killed = reap([doomed_record, reused_record, record_of(unproven, None)], grace_seconds=5)

    assert killed == [doomed_record]
    assert not is_same_process(doomed_record)  # reap waited until it was gone
    assert doomed.wait(timeout=10) == -signal.SIGKILL
    for spared in (reused, unproven):
        assert spared.poll() is None
        assert is_same_process(record_of(spared))


@linux_only
@pytest.mark.slow
def test_reap_of_a_gone_worker_does_nothing(spawn: Callable[[str], Child]) -> None:
    assert reap([gone_record(spawn)]) == []


def test_reap_of_nothing_returns_at_once() -> None:
    assert reap([]) == []


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "warned"), [(PermissionError, True), (ProcessLookupError, False)]
)
def test_reap_skips_workers_it_cannot_kill(
    spawn: Callable[[str], Child],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: type[OSError],
    warned: bool,
) -> None:
    """Not permitted: skipped with a warning. Exited between check and kill: skipped."""

    def refuse(*args: object) -> None:
        raise error

    monkeypatch.setattr(signal, "pidfd_send_signal", refuse, raising=False)
    monkeypatch.setattr(os, "kill", refuse)
    child = started(spawn)
    record = record_of(child)

    with caplog.at_level(logging.WARNING, logger="miminions.plugins.process_host"):
        assert reap([record]) == []

    assert child.poll() is None
    warnings = [r for r in caplog.records if r.name == "miminions.plugins.process_host"]
    assert bool(warnings) is warned
    if warned:
        assert str(child.pid) in warnings[0].getMessage()


# ----------------------------------------------------------------------------- load
def test_machine_load_is_a_non_negative_float() -> None:
    load = machine_load()
    assert isinstance(load, float)
    assert load >= 0.0


def test_machine_load_is_per_usable_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0), raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert machine_load() == 1.5


def test_machine_load_is_zero_when_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def unobtainable() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unobtainable, raising=False)
    assert machine_load() == 0.0


# A group leader with a subprocess that holds 40 MiB; it prints the subprocess's pid and
# waits for stdin; killing its group ends both.
_LEADER_WITH_A_HOG = textwrap.dedent(
    """
    import os, subprocess, sys
    os.setpgid(0, 0)
    hog = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; b = bytearray(40 * 2**20); b[::4096] = b'1' * len(b[::4096]);"
         "print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert hog.stdout.readline().strip() == "held"
    print(hog.pid, flush=True)
    sys.stdin.readline()
    """
)


@linux_only
def test_the_usage_of_a_group_counts_its_members(spawn: Callable[[str], Child]) -> None:
    """group_members finds the other processes of a worker's group, and read_usage adds
    their memory to the worker's."""
    leader = spawn(_LEADER_WITH_A_HOG)
    try:
        hog = int(read_line(leader))
        assert process_probe.group_members([leader.pid, os.getpid()]) == {leader.pid: [hog]}
        alone = read_usage(leader.pid)
        together = read_usage(leader.pid, [hog])
        assert alone is not None
        assert together is not None
        assert together.rss_bytes - alone.rss_bytes >= 40 * MiB
        assert read_usage(leader.pid, [hog, 2**22 + 1]) is not None  # a gone member: skipped
    finally:
        os.killpg(leader.pid, signal.SIGKILL)


def test_parse_stat_reads_the_group_and_the_children_cpu() -> None:
    stat = process_probe._parse_stat(
        b"4242 (w) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 7 3 20 0 1 0 987654 1 512"
    )
    assert (stat.group, stat.children_cpu_ticks) == (4242, 10)
