"""Tests of the interpreter settings built-in plugins hold while they run
(``miminions.plugins.interpreter_settings``): the collector threshold the asyncio executor
raises, the timer slack it shortens on its loop's thread, sqlite3's adapter for None the
SQLite store registers, and the rules every held setting follows."""

from __future__ import annotations

import ctypes
import gc
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from miminions import AgentRuntime, ConfigurationError, RuntimeConfig
from miminions.kernel.hookspecs import hookimpl
from miminions.plugins import interpreter_settings
from miminions.plugins.asyncio_executor import AsyncioExecutor
from miminions.plugins.interpreter_settings import (
    DISPATCH_GC_THRESHOLD,
    DISPATCH_TIMER_SLACK_NS,
    GC_THRESHOLD,
    ProcessSetting,
    hold_gc_threshold,
    hold_none_adapter,
    hold_switch_interval,
    hold_timer_slack,
)
from tests.support.process_agents import TimerSlackAgent

LINUX = sys.platform.startswith("linux")
needs_linux = pytest.mark.skipif(not LINUX, reason="the timer slack is a Linux setting")
DEFAULT_SLACK_NS = 50_000
_T = TypeVar("_T")


@pytest.fixture
def threshold() -> Iterator[tuple[int, int, int]]:
    """The collector's thresholds before the test, restored after it."""
    before = gc.get_threshold()
    yield before
    GC_THRESHOLD._forget()
    gc.set_threshold(*before)


class Knob:
    """A stand-in process-wide setting, so the rules are tested without touching one."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.writes: list[float] = []

    def write(self, value: float) -> None:
        self.value = value
        self.writes.append(value)


def lowest(before: float, wanted: list[float]) -> float:
    return min(before, *wanted)


def test_the_strongest_wish_applies_and_the_last_release_restores() -> None:
    knob = Knob(10)
    setting = ProcessSetting(lambda: knob.value, knob.write, lowest)
    first = setting.hold(5)
    second = setting.hold(3)
    assert knob.value == 3
    second()
    assert knob.value == 5  # back to what the remaining holder asked for
    second()  # a second call changes nothing
    assert knob.value == 5
    first()
    assert knob.value == 10


def test_a_setting_already_better_is_kept_and_a_change_made_meanwhile_survives() -> None:
    knob = Knob(2)
    setting = ProcessSetting(lambda: knob.value, knob.write, lowest)
    release = setting.hold(5)
    assert knob.value == 2  # never made worse
    release()
    assert knob.value == 2

    knob.value = 10
    release = setting.hold(5)
    knob.value = 7  # someone else's choice, while held
    release()
    assert knob.value == 7  # theirs, not the value before the hold


def test_a_hold_that_cannot_be_applied_is_not_kept() -> None:
    knob = Knob(10)
    failing = True

    def write(value: float) -> None:
        if failing:
            raise OSError("refused")
        knob.write(value)

    setting = ProcessSetting(lambda: knob.value, write, lowest)
    with pytest.raises(OSError, match="refused"):
        setting.hold(5)
    failing = False
    release = setting.hold(7)
    assert knob.value == 7
    release()
    assert knob.value == 10  # nothing of the failed hold is left over


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_the_setting_from_before_the_holds(
    threshold: tuple[int, int, int],
) -> None:
    gc.set_threshold(700)
    release = hold_gc_threshold(20_000)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its threshold, then out without cleanup
            try:
                os.write(write, str(gc.get_threshold()[0]).encode())
            finally:
                os._exit(0)
        os.close(write)
        try:
            child = int(os.read(read, 64).decode())
        finally:
            os.close(read)
            os.waitpid(pid, 0)
        assert child == 700  # none of the parent's holders runs in the child
        assert gc.get_threshold()[0] == 20_000  # the parent's hold is untouched
    finally:
        release()
    assert gc.get_threshold()[0] == 700


def test_gc_threshold_is_raised_never_lowered_and_restored(
    threshold: tuple[int, int, int],
) -> None:
    gc.set_threshold(700, 11, 12)
    release = hold_gc_threshold(20_000)
    assert gc.get_threshold() == (20_000, 11, 12)  # only the first threshold changes
    inner = hold_gc_threshold(5_000)
    assert gc.get_threshold()[0] == 20_000
    inner()
    release()
    assert gc.get_threshold() == (700, 11, 12)

    gc.set_threshold(50_000)
    release = hold_gc_threshold(20_000)
    assert gc.get_threshold()[0] == 50_000
    release()
    assert gc.get_threshold()[0] == 50_000


def test_a_threshold_of_zero_stays_off(threshold: tuple[int, int, int]) -> None:
    gc.set_threshold(0)  # automatic collection switched off on purpose
    release = hold_gc_threshold(20_000)
    assert gc.get_threshold()[0] == 0
    release()
    assert gc.get_threshold()[0] == 0


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100", 2**31])
def test_bad_gc_thresholds_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="positive int"):
        hold_gc_threshold(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -0.001])
def test_bad_switch_intervals_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        hold_switch_interval(bad)


async def test_a_running_runtime_holds_the_threshold_and_gives_it_back(
    tmp_path: Path, threshold: tuple[int, int, int]
) -> None:
    gc.set_threshold(700)
    async with AgentRuntime(str(tmp_path / "a.db")):
        assert gc.get_threshold()[0] == DISPATCH_GC_THRESHOLD
    assert gc.get_threshold()[0] == 700


async def test_the_threshold_is_set_by_plugin_options_or_left_alone(
    tmp_path: Path, threshold: tuple[int, int, int]
) -> None:
    gc.set_threshold(700)
    chosen = RuntimeConfig(plugin_options={"asyncio_executor": {"gc_threshold": 50_000}})
    async with AgentRuntime(str(tmp_path / "a.db"), config=chosen):
        assert gc.get_threshold()[0] == 50_000
    alone = RuntimeConfig(plugin_options={"asyncio_executor": {"gc_threshold": None}})
    async with AgentRuntime(str(tmp_path / "b.db"), config=alone):
        assert gc.get_threshold()[0] == 700
    for value in (0, True, 2**40):  # 2**40: beyond what the collector takes (a C int)
        bad = RuntimeConfig(plugin_options={"asyncio_executor": {"gc_threshold": value}})
        with pytest.raises(ConfigurationError, match="gc_threshold"):
            async with AgentRuntime(str(tmp_path / "c.db"), config=bad):
                pass
    assert gc.get_threshold()[0] == 700


async def test_a_bad_section_fails_the_start_before_the_database_is_touched(
    tmp_path: Path, threshold: tuple[int, int, int]
) -> None:
    path = str(tmp_path / "a.db")
    bad = RuntimeConfig(plugin_options={"asyncio_executor": {"gc_threshold": "lots"}})
    with pytest.raises(ConfigurationError, match="gc_threshold"):
        await AgentRuntime(path, config=bad).start()
    async with AgentRuntime(path) as rt:
        assert rt.recovery is None  # the failed start left no crash behind
        assert await rt.query_events(event_type="runtime_recovered") == []


class _AuditingExecutor(AsyncioExecutor):
    """A subclass made the documented way, with the runtime only."""


class _AuditingPlugin:
    @hookimpl
    def miminions_make_executor(self, runtime: AgentRuntime) -> AsyncioExecutor:
        return _AuditingExecutor(runtime)


async def test_a_subclass_of_the_executor_honours_the_option(
    tmp_path: Path, threshold: tuple[int, int, int]
) -> None:
    gc.set_threshold(700)
    config = RuntimeConfig(plugin_options={"asyncio_executor": {"gc_threshold": 30_000}})
    async with AgentRuntime(
        str(tmp_path / "a.db"), config=config, plugins=[_AuditingPlugin()]
    ) as rt:
        assert isinstance(rt.executor, _AuditingExecutor)
        assert gc.get_threshold()[0] == 30_000
        with pytest.raises(ConfigurationError, match="positive int up to"):
            AsyncioExecutor(rt, gc_threshold=0)
    assert gc.get_threshold()[0] == 700


class _FailingStartPlugin:
    @hookimpl
    def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
        raise RuntimeError("refusing to start")


async def test_a_start_that_fails_after_dispatch_began_gives_the_threshold_back(
    tmp_path: Path, threshold: tuple[int, int, int]
) -> None:
    gc.set_threshold(700)
    rt = AgentRuntime(str(tmp_path / "a.db"), plugins=[_FailingStartPlugin()])
    with pytest.raises(Exception, match="refusing to start"):
        await rt.start()
    assert gc.get_threshold()[0] == 700
    assert not GC_THRESHOLD._holders


# ----------------------------------------------------------------------------- timer slack
def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0))


def thread_slack() -> int:
    """The calling thread's timer slack in nanoseconds, as the kernel reports it."""
    return _prctl(30)  # PR_GET_TIMERSLACK


def set_thread_slack(nanoseconds: int) -> None:
    assert _prctl(29, nanoseconds) == 0  # PR_SET_TIMERSLACK


@pytest.fixture
def slack() -> Iterator[None]:
    """The calling thread starts at the kernel's default slack and gets its own back."""
    if not LINUX:
        pytest.skip("the timer slack is a Linux setting")
    before = thread_slack()
    set_thread_slack(DEFAULT_SLACK_NS)
    yield
    interpreter_settings._thread_slacks.clear()
    set_thread_slack(before)


@pytest.fixture
def other_thread() -> Iterator[ThreadPoolExecutor]:
    """A thread started before the test's holds (a new thread inherits its creator's
    slack: Linux's rule)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: None).result(timeout=10)
        yield pool


def _in(pool: ThreadPoolExecutor, function: Callable[[], _T]) -> _T:
    return pool.submit(function).result(timeout=10)


@needs_linux
def test_a_timer_slack_hold_shortens_the_calling_threads_slack_only(
    slack: None, other_thread: ThreadPoolExecutor
) -> None:
    other_before = _in(other_thread, thread_slack)
    release = hold_timer_slack(1_000)
    assert thread_slack() == 1_000
    assert _in(other_thread, thread_slack) == other_before  # another thread keeps its own
    inner = hold_timer_slack(5_000)
    assert thread_slack() == 1_000  # the shortest wish applies
    inner()
    release()
    assert thread_slack() == DEFAULT_SLACK_NS
    release()  # a second call changes nothing
    assert thread_slack() == DEFAULT_SLACK_NS


@needs_linux
def test_a_shorter_slack_already_set_is_kept(slack: None) -> None:
    set_thread_slack(10)
    release = hold_timer_slack(1_000)
    assert thread_slack() == 10
    release()
    assert thread_slack() == 10


@needs_linux
def test_a_release_from_another_thread_leaves_the_slack_alone(
    slack: None, other_thread: ThreadPoolExecutor
) -> None:
    other_before = _in(other_thread, thread_slack)
    release = hold_timer_slack(1_000)
    _in(other_thread, release)
    assert _in(other_thread, thread_slack) == other_before
    assert thread_slack() == 1_000  # only the holder's own thread can give it back


def test_without_prctl_a_timer_slack_hold_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(interpreter_settings, "_prctl", None)
    before = thread_slack() if LINUX else None
    release = hold_timer_slack(1_000)
    assert (thread_slack() if LINUX else None) == before
    release()


@needs_linux
def test_a_refused_timer_slack_leaves_it_alone(
    slack: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(nanoseconds: float) -> None:
        raise OSError(1, "refused")

    monkeypatch.setattr(interpreter_settings, "_write_timer_slack", refuse)
    interpreter_settings._thread_slacks.clear()
    release = hold_timer_slack(1_000)  # an optimisation only: no error
    assert thread_slack() == DEFAULT_SLACK_NS
    release()


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100", 10**9 + 1])
def test_bad_timer_slacks_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="positive int"):
        hold_timer_slack(bad)  # type: ignore[arg-type]


@needs_linux
async def test_a_running_runtime_shortens_its_loops_timer_slack_and_gives_it_back(
    tmp_path: Path, slack: None, other_thread: ThreadPoolExecutor
) -> None:
    other_before = _in(other_thread, thread_slack)
    async with AgentRuntime(str(tmp_path / "a.db")):
        assert thread_slack() == DISPATCH_TIMER_SLACK_NS
        assert _in(other_thread, thread_slack) == other_before  # only the loop's thread
    assert thread_slack() == DEFAULT_SLACK_NS


@needs_linux
async def test_the_timer_slack_is_set_by_plugin_options_or_left_alone(
    tmp_path: Path, slack: None
) -> None:
    chosen = RuntimeConfig(plugin_options={"asyncio_executor": {"timer_slack_ns": 200}})
    async with AgentRuntime(str(tmp_path / "a.db"), config=chosen):
        assert thread_slack() == 200
    alone = RuntimeConfig(plugin_options={"asyncio_executor": {"timer_slack_ns": None}})
    async with AgentRuntime(str(tmp_path / "b.db"), config=alone):
        assert thread_slack() == DEFAULT_SLACK_NS
    for bad in (0, -1, "fine", True, "1000", 1000.0, 10**9 + 1):
        config = RuntimeConfig(plugin_options={"asyncio_executor": {"timer_slack_ns": bad}})
        with pytest.raises(ConfigurationError, match="timer_slack_ns"):
            async with AgentRuntime(str(tmp_path / "c.db"), config=config):
                pass
    assert thread_slack() == DEFAULT_SLACK_NS


@needs_linux
async def test_a_subclass_of_the_executor_honours_the_timer_slack_option(
    tmp_path: Path, slack: None
) -> None:
    config = RuntimeConfig(plugin_options={"asyncio_executor": {"timer_slack_ns": 300}})
    async with AgentRuntime(
        str(tmp_path / "a.db"), config=config, plugins=[_AuditingPlugin()]
    ) as rt:
        assert thread_slack() == 300
        with pytest.raises(ConfigurationError, match="timer_slack_ns must be a positive int up to"):
            AsyncioExecutor(rt, timer_slack_ns=0)
    assert thread_slack() == DEFAULT_SLACK_NS


@needs_linux
async def test_a_start_that_fails_after_dispatch_began_gives_the_timer_slack_back(
    tmp_path: Path, slack: None
) -> None:
    rt = AgentRuntime(str(tmp_path / "a.db"), plugins=[_FailingStartPlugin()])
    with pytest.raises(Exception, match="refusing to start"):
        await rt.start()
    assert thread_slack() == DEFAULT_SLACK_NS


async def _worker_slack(rt: AgentRuntime) -> int:
    agent = await rt.register_agent("slack", TimerSlackAgent, isolation="process")
    await rt.start_agent(agent)
    task_id = await rt.submit_task("probe", agent_id=agent)
    finished = await rt.wait_for_task(task_id, timeout_seconds=30)
    assert finished.output_data is not None, finished.error_message
    return int(finished.output_data["slack"])


@needs_linux
async def test_process_workers_take_the_runtimes_timer_slack_not_their_forkservers(
    tmp_path: Path, slack: None
) -> None:
    """A worker sets its loop thread's slack to the runtime's, or to Linux's default when the
    runtime leaves its own alone, whatever the forkserver it was forked from inherited (a
    forkserver started while an earlier runtime of the program held 1 µs keeps that)."""
    async with AgentRuntime(str(tmp_path / "a.db")) as first:
        assert await _worker_slack(first) == DISPATCH_TIMER_SLACK_NS
    chosen = RuntimeConfig(plugin_options={"asyncio_executor": {"timer_slack_ns": 300}})
    async with AgentRuntime(str(tmp_path / "b.db"), config=chosen) as second:
        assert await _worker_slack(second) == 300
    alone = RuntimeConfig(plugin_options={"asyncio_executor": {"timer_slack_ns": None}})
    async with AgentRuntime(str(tmp_path / "c.db"), config=alone) as third:
        assert await _worker_slack(third) == DEFAULT_SLACK_NS


# ----------------------------------------------------------------------------- sqlite3 None
NONE_KEY: tuple[type[Any], type[Any]] = (type(None), sqlite3.PrepareProtocol)


@pytest.fixture
def sqlite_adapters() -> Iterator[None]:
    """sqlite3's adapter for None as it was before the test, put back after it."""
    before = sqlite3.adapters.get(NONE_KEY)
    yield
    sqlite3.adapters.pop(NONE_KEY, None)
    if before is not None:
        sqlite3.adapters[NONE_KEY] = before


def test_a_none_adapter_is_held_until_the_last_release(sqlite_adapters: None) -> None:
    sqlite3.adapters.pop(NONE_KEY, None)
    first = hold_none_adapter()
    second = hold_none_adapter()
    adapter = sqlite3.adapters[NONE_KEY]
    assert adapter(None) is None
    first()
    first()  # a second call changes nothing
    assert sqlite3.adapters[NONE_KEY] is adapter
    second()
    assert NONE_KEY not in sqlite3.adapters


def test_none_is_still_stored_as_null_while_the_adapter_is_held(
    sqlite_adapters: None,
) -> None:
    release = hold_none_adapter()
    try:
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE t (a, b)")
        db.execute("INSERT INTO t VALUES (?, ?)", (None, 1))
        assert db.execute("SELECT a IS NULL, typeof(a) FROM t").fetchone() == (1, "null")
        db.close()
    finally:
        release()


def test_someone_elses_none_adapter_is_left_in_place(sqlite_adapters: None) -> None:
    def theirs(value: None) -> str:
        return "theirs"

    sqlite3.register_adapter(type(None), theirs)
    hold_none_adapter()()
    assert sqlite3.adapters[NONE_KEY] is theirs  # neither replaced nor removed
    sqlite3.adapters.pop(NONE_KEY)
    release = hold_none_adapter()
    sqlite3.register_adapter(type(None), theirs)  # registered over ours meanwhile
    release()
    assert sqlite3.adapters[NONE_KEY] is theirs


async def test_an_open_store_holds_the_none_adapter_until_closed(
    tmp_path: Path, sqlite_adapters: None
) -> None:
    sqlite3.adapters.pop(NONE_KEY, None)
    async with AgentRuntime(str(tmp_path / "a.db")) as rt:
        assert NONE_KEY in sqlite3.adapters
        task_id = await rt.submit_task("stored", {"x": None})
    assert NONE_KEY not in sqlite3.adapters
    db = sqlite3.connect(tmp_path / "a.db")
    try:
        row = db.execute(
            "SELECT typeof(agent_id), typeof(started_at) FROM tasks WHERE task_id = ?",
            (task_id,),
        ).fetchone()
    finally:
        db.close()
    assert row == ("null", "null")
