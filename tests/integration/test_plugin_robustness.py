"""F-21: the kernel stays whole when plugins misbehave, and plugin registration has no gaps.

A plugin's hook that raises must not stall the queue (``miminions_order_key``) nor cut a
shutdown short (``miminions_runtime_stopping`` / ``miminions_runtime_stopped``, a failing
executor); entry points that clash by name, async implementations under another name and
``disable`` of installed-but-not-loaded entry points are caught at construction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib.abc
import importlib.machinery
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    ConfigurationError,
    MissingExtraError,
    PluginError,
    ResourceLimits,
    RuntimeConfig,
    TaskStatus,
    UsageBudget,
    accepts_events,
    hookimpl,
)
from miminions.kernel.plugins import AUTOLOAD_ENV, build_plugin_manager
from miminions.plugins.asyncio_executor import AsyncioExecutor
from tests.support import agents

MakeConfig = Callable[..., RuntimeConfig]
BROKEN_PRIORITY = 42


class BrokenOrderKey:
    """Orders tasks by plain priority, but raises for priority 42."""

    miminions_plugin_name = "broken_order_key"

    @hookimpl
    def miminions_order_key(self, priority: int, ready_at: float) -> float | None:
        if priority == BROKEN_PRIORITY:
            raise RuntimeError("order key boom")
        return None


class StopRecorder:
    """Records that its runtime_stopping and runtime_stopped ran."""

    miminions_plugin_name = "stop_recorder"

    def __init__(self) -> None:
        self.stopping = False
        self.stopped = False

    @hookimpl
    def miminions_runtime_stopping(self, runtime: AgentRuntime) -> None:
        self.stopping = True

    @hookimpl
    def miminions_runtime_stopped(self, runtime: AgentRuntime) -> None:
        self.stopped = True


class RaisingLifecycle:
    """Raises from one of the stop hooks."""

    miminions_plugin_name = "raising_lifecycle"

    def __init__(self, which: str) -> None:
        self.which = which

    @hookimpl
    def miminions_runtime_stopping(self, runtime: AgentRuntime) -> None:
        if self.which == "stopping":
            raise RuntimeError("stopping boom")

    @hookimpl
    def miminions_runtime_stopped(self, runtime: AgentRuntime) -> None:
        if self.which == "stopped":
            raise RuntimeError("stopped boom")


class CloseFails(AsyncioExecutor):
    """The built-in executor, whose close() raises after closing."""

    async def close(self) -> list[str]:
        await super().close()
        raise RuntimeError("executor close boom")


class CloseFailsPlugin:
    miminions_plugin_name = "close_fails"

    @hookimpl
    def miminions_make_executor(self, runtime: AgentRuntime) -> AsyncioExecutor:
        return CloseFails(runtime)


async def assert_database_free(config: RuntimeConfig) -> None:
    """The database was closed and released: another runtime can use it."""
    async with AgentRuntime(config=config) as again:
        assert again.recovery is None  # the failed stop still marked the run clean


# ------------------------------------------------------------------ order key
async def test_a_raising_order_key_falls_back_to_the_default_order(
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Tasks the plugin fails on are ordered by the default aged key: dependents released
    with them run, other tasks run, stop works; the failure is logged once per streak."""
    config = make_config()
    async with AgentRuntime(config=config, plugins=[BrokenOrderKey()]) as rt:
        agent_id = await rt.register_agent("echo", agents.EchoAgent)
        await rt.start_agent(agent_id)
        await rt.pause_queue()
        first = await rt.submit_task("first", priority=10)
        dependents = [
            await rt.submit_task(name, priority=priority, dependencies=[first])
            for name, priority in (("b1", BROKEN_PRIORITY), ("b2", BROKEN_PRIORITY), ("c", 10))
        ]
        with caplog.at_level(logging.ERROR, logger="miminions.runtime"):
            await rt.resume_queue()
            done = await rt.wait_for_tasks([first, *dependents], timeout_seconds=10)
            later = await rt.wait_for_task(await rt.submit_task("later"), timeout_seconds=10)
        assert [task.status for task in done] == [TaskStatus.COMPLETED] * 4
        assert later.status is TaskStatus.COMPLETED
    failures = [r for r in caplog.records if "miminions_order_key" in r.getMessage()]
    assert len(failures) == 1  # b1 and b2 failed in a row: one streak
    assert "order key boom" in (failures[0].exc_text or "")
    await assert_database_free(config)


class NumberOrderKey:
    """Answers its key as another kind of number (inverted: the least urgent first)."""

    miminions_plugin_name = "number_order_key"

    def __init__(self, kind: Callable[[int], Any]) -> None:
        self.kind = kind

    @hookimpl
    def miminions_order_key(self, priority: int, ready_at: float) -> Any:
        return self.kind(-priority)


@pytest.mark.parametrize("kind", [Fraction, Decimal, float], ids=["Fraction", "Decimal", "float"])
async def test_an_order_key_of_any_kind_of_number_is_used(
    make_config: MakeConfig, kind: Callable[[int], Any]
) -> None:
    async with AgentRuntime(config=make_config(), plugins=[NumberOrderKey(kind)]) as rt:
        await rt.pause_queue()
        lazy = await rt.submit_task("lazy", priority=90)
        urgent = await rt.submit_task("urgent", priority=0)
        assert rt.get_task_status(lazy).queue_position == 0  # the plugin's order
        assert rt.get_task_status(urgent).queue_position == 1


class TextOrderKey:
    """Answers its key as text (a number's digits are not a number)."""

    miminions_plugin_name = "text_order_key"

    @hookimpl
    def miminions_order_key(self, priority: int, ready_at: float) -> Any:
        return str(-priority)  # as a number, this would run the least urgent first


async def test_an_order_key_answering_text_gets_the_default_order(
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    async with AgentRuntime(config=make_config(), plugins=[TextOrderKey()]) as rt:
        await rt.pause_queue()
        with caplog.at_level(logging.ERROR, logger="miminions.runtime"):
            lazy = await rt.submit_task("lazy", priority=90)
            urgent = await rt.submit_task("urgent", priority=0)
        assert rt.get_task_status(urgent).queue_position == 0
        assert rt.get_task_status(lazy).queue_position == 1
    assert any("is not a number" in (r.exc_text or "") for r in caplog.records)


async def test_a_raising_order_key_does_not_take_queue_slots(make_config: MakeConfig) -> None:
    """A task the plugin fails on is queued (default order), not rejected half-added."""
    config = make_config(limits=ResourceLimits(max_task_queue_size=2))
    async with AgentRuntime(config=config, plugins=[BrokenOrderKey()]) as rt:
        await rt.submit_task("bad", priority=BROKEN_PRIORITY)
        await rt.submit_task("good", priority=10)
        assert rt.get_queue_status().pending == 2


# ------------------------------------------------------------------ stop
@pytest.mark.parametrize("which", ["stopping", "stopped"])
async def test_a_raising_stop_hook_skips_no_cleanup(make_config: MakeConfig, which: str) -> None:
    """stop() still calls every other plugin's runtime_stopping and runtime_stopped, closes
    the store and releases the database; then it raises the hook's error, naming the
    plugin."""
    config = make_config()
    recorder = StopRecorder()
    # Registered last, so pluggy would call it first.
    rt = AgentRuntime(config=config, plugins=[recorder, RaisingLifecycle(which)])
    await rt.start()
    with pytest.raises(RuntimeError, match=f"{which} boom") as raised:
        await rt.stop()
    assert "raised by plugin 'raising_lifecycle'" in (raised.value.__notes__ or [])
    assert recorder.stopping
    assert recorder.stopped
    assert not rt.is_running
    await assert_database_free(config)


@pytest.mark.parametrize("hook", ["miminions_runtime_stopping", "miminions_runtime_stopped"])
@pytest.mark.parametrize("kind", ["wrapper", "hookwrapper"])
def test_the_stop_hooks_take_no_wrapper(hook: str, kind: str) -> None:
    """A wrapper would make the stop hooks one pluggy call again, where one implementation
    that raises skips the others' clean-up: refused at registration, saying why."""

    def wrapping(runtime: AgentRuntime) -> Any:
        return (yield)

    marked = hookimpl(wrapper=kind == "wrapper", hookwrapper=kind == "hookwrapper")(wrapping)
    plugin = type("StopWrapper", (), {hook: staticmethod(marked)})
    with pytest.raises(PluginError, match=f"{hook} takes no wrapper"):
        build_plugin_manager([plugin])


async def test_a_failing_executor_close_skips_no_cleanup(make_config: MakeConfig) -> None:
    """An executor whose close() raises: the store still closes, hooks still run."""
    config = make_config()
    recorder = StopRecorder()
    rt = AgentRuntime(config=config, plugins=[recorder, CloseFailsPlugin()])
    await rt.start()
    with pytest.raises(RuntimeError, match="executor close boom"):
        await rt.stop()
    assert recorder.stopped
    await assert_database_free(config)


# ------------------------------------------------------------------ registration
class Installer:
    """Installs fake distributions advertising ``miminions`` entry points."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
        self.site = tmp_path / "site"
        self.site.mkdir()
        self.prefix = prefix
        monkeypatch.syspath_prepend(str(self.site))
        monkeypatch.delenv(AUTOLOAD_ENV, raising=False)

    def module(self, name: str) -> str:
        """A plugin module with a miminions_event hook; returns its import name."""
        module = f"{self.prefix}_{name}"
        (self.site / f"{module}.py").write_text(
            textwrap.dedent(
                """
                from miminions import hookimpl

                @hookimpl
                def miminions_event(event):
                    pass
                """
            )
        )
        return module

    def distribution(self, dist: str, entry_points: Sequence[tuple[str, str]]) -> None:
        info = self.site / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points)
        (info / "entry_points.txt").write_text("[miminions]\n" + lines)


@pytest.fixture
def installer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Installer:
    # Module names unique per test: an imported module stays in sys.modules.
    return Installer(tmp_path, monkeypatch, f"robust_{request.node.name}".replace("-", "_"))


def test_an_entry_point_named_like_a_builtin_is_an_error(installer: Installer) -> None:
    installer.distribution("shadowing-plugin", [("sqlite_store", installer.module("store"))])
    with pytest.raises(PluginError) as raised:
        build_plugin_manager()
    message = str(raised.value)
    assert "shadowing-plugin" in message
    assert "miminions.plugins.sqlite_store" in message


def test_two_entry_points_with_one_name_are_an_error(installer: Installer) -> None:
    installer.distribution("first-plugin", [("dup", installer.module("a"))])
    installer.distribution("second-plugin", [("dup", installer.module("b"))])
    with pytest.raises(PluginError, match="two entry points are named 'dup'") as raised:
        build_plugin_manager()
    assert "first-plugin" in str(raised.value)
    assert "second-plugin" in str(raised.value)
    # Disabling the name loads neither: nothing is ambiguous then.
    assert "dup" not in build_plugin_manager(disable=["dup"]).plugin_names()


def test_disabling_an_installed_entry_point_without_autoload(
    installer: Installer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With autoload off, the names of installed entry points are still known."""
    installer.distribution("acme-plugin", [("acme", installer.module("acme"))])
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert "acme" not in build_plugin_manager(disable=["acme"]).plugin_names()
    with pytest.raises(ConfigurationError, match="unknown plugin"):
        build_plugin_manager(disable=["not-installed"])


def test_async_impl_under_another_name_is_rejected() -> None:
    """@hookimpl(specname=...) does not get an async def past the check."""

    class AsyncStore:
        @hookimpl(specname="miminions_make_store")
        async def store(self, config: RuntimeConfig) -> None:
            return None

    with pytest.raises(PluginError, match=r"store \(of miminions_make_store\) is 'async def'"):
        build_plugin_manager([AsyncStore()])


def test_async_monitor_behind_accepts_events_is_rejected() -> None:
    """accepts_events wraps the monitor in a sync function: an ``async def`` under it is
    still refused at registration (its coroutines would never be awaited)."""

    class AsyncMonitor:
        @hookimpl
        @accepts_events(lambda event_type, severity: True)
        async def miminions_event(self, event: Any) -> None:
            return None

    with pytest.raises(PluginError, match=r"miminions_event is 'async def'"):
        build_plugin_manager([AsyncMonitor()])


def scheduled(function: Callable[..., Any]) -> Callable[..., None]:
    """A sync decorator that hands the coroutine of an async function to a task."""

    @functools.wraps(function)
    def schedule(*args: Any, **kwargs: Any) -> None:
        asyncio.get_running_loop().create_task(function(*args, **kwargs))

    return schedule


async def test_a_sync_hook_that_schedules_a_coroutine_is_accepted(make_config: MakeConfig) -> None:
    """Only accepts_events' own wrapper is looked through: a sync decorator of the user's
    that schedules an async function is a sync hook, as the docs allow."""
    seen = asyncio.Event()

    class Notifier:
        miminions_plugin_name = "notifier"

        @hookimpl
        @scheduled
        async def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
            seen.set()

    async with AgentRuntime(config=make_config(), plugins=[Notifier()]):
        await asyncio.wait_for(seen.wait(), 5)


def passed_through(function: Callable[..., Any]) -> Callable[..., Any]:
    """An ordinary decorator: calls what it wraps and returns its answer."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return call


async def test_an_async_monitor_behind_a_decorator_is_reported_not_silently_dropped(
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Registration cannot see an ``async def`` behind an ordinary decorator; the coroutine
    it answers is closed and logged as the monitor's failure (never left unawaited)."""

    class AsyncMonitor:
        miminions_plugin_name = "async_monitor"

        @hookimpl
        @passed_through
        async def miminions_event(self, event: Any) -> None:
            return None

    with caplog.at_level(logging.ERROR, logger="miminions.events"):
        async with AgentRuntime(config=make_config(), plugins=[AsyncMonitor()]):
            pass
    failures = [r for r in caplog.records if "async_monitor" in r.getMessage()]
    assert failures
    assert "answered a coroutine" in (failures[0].exc_text or "")


async def test_an_async_make_hook_behind_a_decorator_fails_the_start_saying_why(
    make_config: MakeConfig,
) -> None:
    class AsyncStore:
        miminions_plugin_name = "async_store"

        @hookimpl(tryfirst=True)
        @passed_through
        async def miminions_make_store(self, config: RuntimeConfig) -> None:
            return None

    rt = AgentRuntime(config=make_config(), plugins=[AsyncStore()])
    with pytest.raises(PluginError, match="miminions_make_store answered a coroutine"):
        await rt.start()
    assert not rt.is_running


# ------------------------------------------------------------------ extras
class _Refuse(importlib.abc.MetaPathFinder):
    """A meta-path finder that hides a package by refusing to find it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == self.name:
            raise ModuleNotFoundError(f"{fullname} is hidden", name=fullname)
        return None


async def test_prometheus_export_hidden_by_a_finder_is_a_missing_extra(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")  # the prometheus extra is not loaded
    monkeypatch.delitem(sys.modules, "prometheus_client", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Refuse("prometheus_client"), *sys.meta_path])
    async with AgentRuntime(config=make_config()) as rt:
        with pytest.raises(MissingExtraError, match=r"miminions\[prometheus\]"):
            rt.export_prometheus_metrics()


class CancelledMonitor:
    """A monitor that raises the ``CancelledError`` a plugin gets from ``.result()`` of a
    cancelled task of its own, on one event type; with ``accepts_events`` or without."""

    miminions_plugin_name = "cancelled_monitor"

    def __init__(self, event_type: str) -> None:
        self.event_type = event_type

    @hookimpl
    def miminions_event(self, event: Any) -> None:
        if event.event_type == self.event_type:
            raise asyncio.CancelledError


@pytest.mark.parametrize("event_type", ["task_enqueued", "task_started", "task_completed"])
async def test_a_monitor_raising_cancelled_error_never_reaches_the_runtime(
    make_config: MakeConfig, event_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The exception a monitor raises is logged and goes no further, CancelledError too
    (a BaseException): the submit returns, the task completes, the runtime stops cleanly."""
    monitor = CancelledMonitor(event_type)
    async with AgentRuntime(config=make_config(), plugins=[monitor]) as rt:
        await rt.start_agent(await rt.register_agent("echo", agents.EchoAgent))
        task_id = await rt.submit_task("t")
        task = await rt.wait_for_task(task_id, timeout_seconds=5)
        assert task.status is TaskStatus.COMPLETED
    assert any(event_type in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


class _NoAgentSlots:
    @hookimpl
    def miminions_configure(self, config: RuntimeConfig) -> None:
        config.limits.max_concurrent_agents = 0  # ResourceLimits refuses it


class _LimitsAsADict:
    @hookimpl
    def miminions_configure(self, config: RuntimeConfig) -> None:
        config.limits = {"max_concurrent_agents": 4}  # type: ignore[assignment]


async def test_a_configuration_a_configure_plugin_made_invalid_fails_the_start(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """What ``miminions_configure`` sets is validated as the runtime's own config is (it was
    taken as is: with no agent slot, every start waited for good), and the runtime is not
    left running."""
    rt = AgentRuntime(config=make_config(), plugins=[_NoAgentSlots()])
    with pytest.raises(ConfigurationError, match="max_concurrent_agents"):
        await rt.start()
    assert not rt.is_running


async def test_a_value_a_configure_plugin_gives_in_another_shape_is_converted(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """``limits`` given as a dict, as ``RuntimeConfig(limits={...})`` takes it, is used (it
    failed the start with an AttributeError from deep inside)."""
    async with AgentRuntime(config=make_config(), plugins=[_LimitsAsADict()]) as rt:
        assert rt.get_capacity().max_concurrent_agents == 4


class _AppConfig(RuntimeConfig):
    """An application's config: the runtime's, plus settings of its own."""

    app_name: str = "billing"
    app_timeout_seconds: float = 1.0
    app_limits: ResourceLimits | None = None


class _AppSettingsInOtherShapes:
    @hookimpl
    def miminions_configure(self, config: RuntimeConfig) -> None:
        config.app_timeout_seconds = 3  # type: ignore[attr-defined]
        config.app_limits = {"max_concurrent_agents": 2}  # type: ignore[attr-defined]


async def test_a_subclass_field_a_configure_plugin_gives_in_another_shape_is_converted(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A config subclass's own fields are converted as the runtime's are (they were left
    as given: a dict for a model, an int for a float)."""
    config = _AppConfig.model_validate(dict(make_config()))
    async with AgentRuntime(config=config, plugins=[_AppSettingsInOtherShapes()]) as rt:
        assert isinstance(rt.config, _AppConfig)
        assert isinstance(rt.config.app_limits, ResourceLimits)
        assert rt.config.app_limits.max_concurrent_agents == 2
        assert type(rt.config.app_timeout_seconds) is float


@dataclasses.dataclass
class _Retry:
    attempts: int = 3


async def test_the_check_after_configure_changes_nothing_that_was_valid(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A config subclass with fields of its own starts (the check refused its extra field),
    and objects in ``plugin_options`` stay the objects given (they became dicts)."""
    retry = _Retry()
    base = make_config(plugin_options={"mine": {"retry": retry}})
    config = _AppConfig.model_validate(dict(base))
    limits = config.limits
    async with AgentRuntime(config=config) as rt:
        assert isinstance(rt.config, _AppConfig)
        assert rt.config.app_name == "billing"
        assert isinstance(rt.config.plugin_options["mine"]["retry"], _Retry)
        assert rt.config.limits == limits


class _NestedAsDicts:
    """Gives nested values as ``RuntimeConfig(...)`` takes them: dicts."""

    @hookimpl
    def miminions_configure(self, config: RuntimeConfig) -> None:
        config.group_budgets = {"team": {"cost": 1.0}}  # type: ignore[dict-item]
        config.limits.usage_budget = {"tokens": 5}  # type: ignore[assignment]


class _MyLimits(ResourceLimits):
    """An application's limits with a setting of its own."""

    note: str = "mine"


async def test_nested_values_a_configure_plugin_gives_as_dicts_are_converted(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A group budget (a dict's value) or an agent budget (a nested model's field) given as
    a dict is converted too (kept a dict, a group member's start failed on it); a field
    holding a subclass of its type keeps it (it became the base class)."""
    config = make_config(limits=_MyLimits(max_concurrent_agents=3))
    async with AgentRuntime(config=config, plugins=[_NestedAsDicts()]) as rt:
        assert isinstance(rt.config.group_budgets["team"], UsageBudget)
        assert isinstance(rt.config.limits.usage_budget, UsageBudget)
        assert isinstance(rt.config.limits, _MyLimits)
        assert rt.config.limits.note == "mine"
        assert rt.config.limits.max_concurrent_agents == 3
        agent_id = await rt.register_agent("a", agents.UsageAgent, group="team")
        assert (await rt.start_agent(agent_id)).status is AgentStatus.RUNNING
