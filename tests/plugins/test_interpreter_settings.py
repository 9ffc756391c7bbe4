"""Tests of the interpreter settings built-in plugins hold while they run
(``miminions.plugins.interpreter_settings``): the collector threshold the asyncio executor
raises, and the rules every held setting follows."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from miminions import AgentRuntime, ConfigurationError, RuntimeConfig
from miminions.kernel.hookspecs import hookimpl
from miminions.plugins.asyncio_executor import AsyncioExecutor
from miminions.plugins.interpreter_settings import (
    DISPATCH_GC_THRESHOLD,
    GC_THRESHOLD,
    ProcessSetting,
    hold_gc_threshold,
    hold_switch_interval,
)


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


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
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
    bad = RuntimeConfig(plugin_options={"asyncio_executor": {"gc_threshold": 0}})
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
        with pytest.raises(ConfigurationError, match="positive int or None"):
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
