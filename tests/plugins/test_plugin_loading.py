"""F-21: the plugin kernel — built-ins, entry points, user plugins, disabling, validation."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentInstance,
    AgentRuntime,
    ConfigurationError,
    EventType,
    PluginError,
    ResourceLimits,
    RuntimeConfig,
    Task,
    TaskStatus,
    hookimpl,
)
from miminions.kernel.hookspecs import passes_through
from miminions.kernel.plugins import AUTOLOAD_ENV, BUILTIN_PLUGINS, build_plugin_manager
from miminions.plugins.asyncio_executor import AsyncioExecutor
from miminions.plugins.memory_bus import MemoryBus
from miminions.plugins.sqlite_store import SQLiteStore
from tests.support import agents
from tests.support.events import EventRecorder
from tests.support.memory_store import MemoryStore

PLUGIN_SOURCE = """
import miminions
from tests.support.memory_store import MemoryStore

SEEN = []
STORES = []


@miminions.hookimpl
def miminions_event(event):
    SEEN.append(event.event_type.value)


@miminions.hookimpl
def miminions_make_store(config):
    store = MemoryStore()
    STORES.append(store)
    return store
"""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Install a real distribution ('acme-miminions') exposing an entry point."""
    site = tmp_path / "site"
    package = site / "acme_miminions_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    dist_info = site / "acme_miminions-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-miminions\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[miminions]\nacme = acme_miminions_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    return "acme"


def config(tmp_path: Path) -> RuntimeConfig:
    return RuntimeConfig(storage_path=str(tmp_path / "rt.db"), default_isolation="inline")


async def run_one_task(rt: AgentRuntime) -> Task:
    await rt.start_agent(await rt.register_agent("echo", agents.EchoAgent))
    return await rt.wait_for_task(await rt.submit_task("t"), 5)


async def test_entry_point_plugin_replaces_store_and_sees_events(
    tmp_path: Path, installed_plugin: str
) -> None:
    """F-21: a plugin installed as a distribution with an entry point is loaded; it can
    replace the store and observe every event."""
    import acme_miminions_plugin as plugin  # type: ignore[import-not-found]

    async with AgentRuntime(config=config(tmp_path)) as rt:
        assert installed_plugin in rt.plugin_manager.plugin_names()
        assert (await run_one_task(rt)).status is TaskStatus.COMPLETED
        assert isinstance(rt.store, MemoryStore)
    assert not (tmp_path / "rt.db").exists()  # the SQLite built-in was not used
    assert plugin.STORES[0].closed
    assert [t.status for t in plugin.STORES[0].tasks.values()] == [TaskStatus.COMPLETED]
    assert {"runtime_started", "task_enqueued", "task_completed", "runtime_stopped"} <= set(
        plugin.SEEN
    )


async def test_entry_point_plugin_can_be_disabled(tmp_path: Path, installed_plugin: str) -> None:
    """F-21: disable=[name] blocks an entry-point plugin; the built-in store is used."""
    async with AgentRuntime(config=config(tmp_path), disable=[installed_plugin]) as rt:
        assert installed_plugin not in rt.plugin_manager.plugin_names()
        assert isinstance(rt.store, SQLiteStore)
        assert (await run_one_task(rt)).status is TaskStatus.COMPLETED
    assert (tmp_path / "rt.db").exists()


def test_a_plugin_passed_again_by_hand_is_registered_once(installed_plugin: str) -> None:
    """Passing the module an entry point loaded already (as the docs show for the extras,
    for when autoload is off) is harmless, not a name clash."""
    import acme_miminions_plugin as plugin  # (mypy reports a missing module once)

    pm = build_plugin_manager([plugin])
    assert pm.plugin_names().count(installed_plugin) == 1
    assert pm.is_registered(plugin)
    clash = type("Clash", (), {"miminions_plugin_name": installed_plugin})()
    with pytest.raises(PluginError, match="registered already"):
        build_plugin_manager([clash])  # another object under a taken name


def test_autoload_can_be_switched_off(
    installed_plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F-21: MIMINIONS_DISABLE_PLUGIN_AUTOLOAD skips the entry-point group."""
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert installed_plugin not in build_plugin_manager().plugin_names()


def test_builtins_are_registered_by_name() -> None:
    """F-21: the built-ins are plugins like any other, registered by short name."""
    pm = build_plugin_manager()
    assert set(BUILTIN_PLUGINS) <= set(pm.plugin_names())
    assert pm.hooks_of("sqlite_store") == ["miminions_make_store"]
    assert pm.hooks_of("asyncio_executor") == ["miminions_configure", "miminions_make_executor"]


def test_async_hook_impl_is_rejected() -> None:
    """F-21: an async def hook implementation is refused with advice."""

    class AsyncPlugin:
        @hookimpl
        async def miminions_event(self, event: object) -> None:
            return None

    with pytest.raises(PluginError, match=r"'async def'.*synchronous"):
        build_plugin_manager([AsyncPlugin()])


def test_impl_matching_no_hook_is_rejected() -> None:
    """F-21: a misspelled hook is an error at registration (check_pending)."""

    class Typo:
        @hookimpl
        def miminions_evnt(self, event: object) -> None:
            return None

    with pytest.raises(PluginError, match="miminions_evnt"):
        build_plugin_manager([Typo()])


def test_an_unmarked_hook_function_is_rejected() -> None:
    """F-21: a function named like a hook without @hookimpl is an error at registration (it
    was registered silently with no hooks, and never called)."""

    class ForgotTheMarker:
        def miminions_event(self, event: object) -> None:
            raise AssertionError("never called")

    with pytest.raises(PluginError, match="miminions_event is named like a hook but not marked"):
        build_plugin_manager([ForgotTheMarker()])


@pytest.mark.parametrize("given", [["miminions.extras.prometheus"], [b"x"]])
def test_a_plugin_given_by_name_is_refused(given: list[object]) -> None:
    """A plugin given as a string (as pytest's -p takes it) is refused, with what to pass
    instead; it was registered as a plugin named 'str' with no hooks."""
    with pytest.raises(PluginError, match="pass the plugin itself"):
        build_plugin_manager(given)


def test_plugins_may_be_given_by_a_generator() -> None:
    """A generator of plugins is read once, wholly (the check of names used it up, and no
    plugin of it was registered)."""

    class Named:
        miminions_plugin_name = "named"

        @hookimpl
        def miminions_configure(self, config: RuntimeConfig) -> None:
            return None

    pm = build_plugin_manager(plugin for plugin in [Named()])
    assert "named" in pm.plugin_names()


@pytest.mark.parametrize(
    "arguments", [{"plugins": None}, {"disable": None}, {"plugins": "miminions.extras.otel"}]
)
def test_plugins_and_disable_must_be_lists(arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="list"):
        build_plugin_manager(**arguments)


class LeaveRoomForASidecar:
    """Adjusts nested configuration in miminions_configure."""

    miminions_plugin_name = "sidecar_room"

    @hookimpl
    def miminions_configure(self, config: RuntimeConfig) -> None:
        assert config.limits.max_concurrent_agents is not None
        config.limits.max_concurrent_agents -= 1
        config.plugin_options.setdefault("sidecar", {})["seen"] = True


async def test_configure_changes_stay_in_the_runtime(tmp_path: Path) -> None:
    """What miminions_configure adjusts (nested parts too) is the runtime's own copy: the
    caller's config, and the next runtime built from it, are untouched (the adjustment
    compounded, one agent fewer with every runtime)."""
    limits = ResourceLimits(max_concurrent_agents=4)
    config = RuntimeConfig(storage_path=str(tmp_path / "db.sqlite"), limits=limits)
    for _ in range(2):
        async with AgentRuntime(config=config, plugins=[LeaveRoomForASidecar()]) as rt:
            assert rt.config.limits.max_concurrent_agents == 3
    assert config.limits.max_concurrent_agents == 4
    assert config.plugin_options == {}
    async with AgentRuntime(
        storage_path=tmp_path / "db.sqlite", limits=limits, plugins=[LeaveRoomForASidecar()]
    ) as rt:
        assert rt.config.limits.max_concurrent_agents == 3
    assert limits.max_concurrent_agents == 4


class ClosingBus(MemoryBus):
    """A bus that counts its closes."""

    closed = 0

    def close(self) -> None:
        type(self).closed += 1
        super().close()


class FailingExecutor(AsyncioExecutor):
    """An executor whose start fails."""

    async def start(self) -> None:
        raise ConfigurationError("this executor cannot start here")


class BusAndFailingExecutor:
    miminions_plugin_name = "bus_and_failing_executor"

    @hookimpl
    def miminions_make_bus(self, runtime: AgentRuntime) -> MemoryBus:
        return ClosingBus(runtime.messenger.message_expired, runtime.messenger.message_returned)

    @hookimpl
    def miminions_make_executor(self, runtime: AgentRuntime) -> AsyncioExecutor:
        return FailingExecutor(runtime)


async def test_a_failed_start_closes_the_bus_it_made(tmp_path: Path) -> None:
    """A start failing after the bus was made closes it, as a stop would (a bus may hold
    timers or a connection; no miminions_runtime_stopped follows a failed start)."""
    ClosingBus.closed = 0
    rt = AgentRuntime(storage_path=tmp_path / "db.sqlite", plugins=[BusAndFailingExecutor()])
    with pytest.raises(ConfigurationError, match="cannot start here"):
        await rt.start()
    assert ClosingBus.closed == 1


@pytest.mark.parametrize(
    ("disabled", "what"),
    [
        (["sqlite_store"], "a store"),
        (["memory_bus"], "a message bus"),
        (["inline_host", "process_host"], "an agent host"),
    ],
)
def test_disabled_builtin_without_replacement_is_a_usage_error(
    tmp_path: Path, disabled: list[str], what: str
) -> None:
    """F-21: disabling an essential mechanism with no replacement fails at construction,
    also when another plugin wraps that hook but provides nothing itself (a wrapper marked
    ``passes_through``, like the otel extra's around hosts and buses)."""

    class Wraps:
        miminions_plugin_name = "wraps"

        @hookimpl(wrapper=True)
        @passes_through
        def miminions_make_bus(self, runtime: AgentRuntime) -> Any:
            return (yield)

        @hookimpl(wrapper=True)
        @passes_through
        def miminions_make_host(self, spec: Any, agent: object, runtime: AgentRuntime) -> Any:
            return (yield)

    with pytest.raises(PluginError, match=f"no plugin left provides {what}"):
        AgentRuntime(config=config(tmp_path), plugins=[Wraps()], disable=disabled)


async def test_no_answer_from_providers_names_plugins_asked(rt: AgentRuntime) -> None:
    """F-21: when every provider passes, the error lists the plugins consulted."""
    with pytest.raises(PluginError, match=r"isolation 'gpu'.*consulted: .*'inline_host'"):
        await rt.register_agent("x", agents.EchoAgent, isolation="gpu")


async def test_user_plugin_wins_over_builtin_store(tmp_path: Path) -> None:
    """F-21: a plugin passed in plugins=[...] replaces a built-in provider."""
    store = MemoryStore()

    class StorePlugin:
        @hookimpl
        def miminions_make_store(self, config: RuntimeConfig) -> MemoryStore:
            return store

    async with AgentRuntime(config=config(tmp_path), plugins=[StorePlugin()]) as rt:
        assert (await run_one_task(rt)).status is TaskStatus.COMPLETED
        assert rt.store is store


async def test_configure_and_lifecycle_hooks(tmp_path: Path) -> None:
    """F-21: configure, runtime_started and runtime_stopping are called in order."""
    calls: list[str] = []

    class Watcher:
        @hookimpl
        def miminions_configure(self, config: RuntimeConfig) -> None:
            calls.append(f"configure:{config.plugin_options.get('watcher', {}).get('flag')}")

        @hookimpl
        def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
            calls.append(f"started:{runtime.is_running}")

        @hookimpl
        def miminions_runtime_stopping(self, runtime: AgentRuntime) -> None:
            calls.append("stopping")

    cfg = config(tmp_path).model_copy(update={"plugin_options": {"watcher": {"flag": 7}}})
    async with AgentRuntime(config=cfg, plugins=[Watcher()]):
        pass
    assert calls == ["configure:7", "started:True", "stopping"]


async def test_custom_pick_agent_and_order_key(tmp_path: Path) -> None:
    """F-21: scheduling policy hooks replace the built-in policy."""
    picked: list[list[str]] = []

    class Policy:
        @hookimpl
        def miminions_pick_agent(self, task: Task, candidates: Sequence[AgentInstance]) -> str:
            names = sorted(c.name for c in candidates)
            picked.append(names)
            return next(c.agent_id for c in candidates if c.name == names[-1])

        @hookimpl
        def miminions_order_key(self, priority: int, ready_at: float) -> float:
            return -priority  # invert: the least urgent first

    async with AgentRuntime(config=config(tmp_path), plugins=[Policy()]) as rt:
        await rt.pause_queue()
        ids = [await rt.submit_task(name, priority=p) for name, p in (("urgent", 0), ("lazy", 100))]
        for name in ("a", "b"):
            await rt.start_agent(await rt.register_agent(name, agents.EchoAgent))
        await rt.resume_queue()
        done = [await rt.wait_for_task(task_id, 5) for task_id in ids]
    assert picked[0] == ["a", "b"]
    assert done[1].assigned_agent_id is not None
    assert agents.CALLS[0][1] == "lazy"


async def test_pick_agent_gets_a_task_it_cannot_change(tmp_path: Path) -> None:
    """A pick_agent plugin that changes the task it is shown changes a copy: the agent
    runs the task as submitted, and status and the store show it unchanged."""

    class Meddler:
        @hookimpl
        def miminions_pick_agent(self, task: Task, candidates: Sequence[AgentInstance]) -> None:
            task.input_data["nested"]["n"] = "changed"
            task.dependencies.append("bogus")
            return None

    async with AgentRuntime(config=config(tmp_path), plugins=[Meddler()]) as rt:
        await rt.start_agent(await rt.register_agent("echo", agents.EchoAgent))
        task_id = await rt.submit_task("t", {"nested": {"n": 1}})
        done = await rt.wait_for_task(task_id, 5)
        store = rt.store
        assert isinstance(store, SQLiteStore)
        [stored] = [t for t in await store.list_tasks() if t.task_id == task_id]
    assert done.output_data == {"echo": {"nested": {"n": 1}}, "agent": "echo"}
    for task in (done, stored):
        assert task.input_data == {"nested": {"n": 1}}
        assert task.dependencies == []


async def test_event_hook_errors_do_not_break_the_runtime(tmp_path: Path) -> None:
    """F-21: a monitor that raises is logged and ignored."""

    class Broken:
        @hookimpl
        def miminions_event(self, event: object) -> None:
            raise RuntimeError("monitor bug")

    recorder = EventRecorder()
    async with AgentRuntime(config=config(tmp_path), plugins=[Broken(), recorder]) as rt:
        assert (await run_one_task(rt)).status is TaskStatus.COMPLETED
    assert recorder.matching(EventType.TASK_COMPLETED)


async def test_pick_agent_passing_falls_back_to_longest_idle(tmp_path: Path) -> None:
    """F-21: when every pick_agent implementation passes, the longest-idle agent runs it."""

    class Undecided:
        @hookimpl
        def miminions_pick_agent(self, task: Task, candidates: Sequence[AgentInstance]) -> None:
            return None

    cfg = config(tmp_path)
    async with AgentRuntime(
        config=cfg, plugins=[Undecided()], disable=["priority_scheduling"]
    ) as rt:
        assert (await run_one_task(rt)).status is TaskStatus.COMPLETED


@pytest.mark.parametrize("mistake", ["raises", "answers-an-agent-object"])
async def test_a_broken_pick_agent_does_not_stall_the_queue(
    tmp_path: Path, mistake: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pick_agent that raises, or answers something that is no candidate's id, for one
    task ("vip"): that task goes to the first candidate and every other task still runs;
    the failure is logged once, naming the plugin."""

    class Buggy:
        @hookimpl
        def miminions_pick_agent(self, task: Task, candidates: Sequence[AgentInstance]) -> Any:
            if task.name != "vip":
                return None
            if mistake == "raises":
                raise RuntimeError("picker bug")
            return candidates[0]  # the instance, not its agent_id

    async with AgentRuntime(config=config(tmp_path), plugins=[Buggy()]) as rt:
        a = await rt.register_agent("a", agents.EchoAgent)
        await rt.start_agent(a)
        await rt.pause_queue()
        vip = await rt.submit_task("vip", priority=0)
        ordinary = await rt.submit_task("ordinary", priority=50)
        await rt.resume_queue()
        done = await rt.wait_for_tasks([vip, ordinary], timeout_seconds=5)
    assert [(t.status, t.assigned_agent_id) for t in done] == [(TaskStatus.COMPLETED, a)] * 2
    failures = [r for r in caplog.records if "miminions_pick_agent" in r.getMessage()]
    assert len(failures) == 1
    assert "Buggy" in failures[0].getMessage() or "buggy" in failures[0].getMessage().lower()


async def test_failing_runtime_started_hook_stops_the_runtime(tmp_path: Path) -> None:
    """F-21: a runtime whose start hook fails is stopped again, not left half running."""

    class Broken:
        @hookimpl
        def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
            raise RuntimeError("metrics port taken")

    rt = AgentRuntime(config=config(tmp_path), plugins=[Broken()])
    with pytest.raises(RuntimeError, match="metrics port taken"):
        await rt.start()
    assert not rt.is_running
    assert rt.store is not None
    async with AgentRuntime(config=config(tmp_path)) as again:  # the database is free
        assert again.recovery is None


async def test_a_start_hook_error_is_raised_even_when_the_stop_after_it_fails(
    tmp_path: Path,
) -> None:
    """The docs' pattern: a plugin starts something in runtime_started and ends it in
    runtime_stopping. When another plugin's runtime_started fails first, the stop that
    follows fails in the first plugin (it has nothing to end); start() still raises the
    start hook's error, with the stop's error as a note."""

    class Reporter:
        miminions_plugin_name = "reporter"

        @hookimpl
        def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
            self.running = True

        @hookimpl
        def miminions_runtime_stopping(self, runtime: AgentRuntime) -> None:
            del self.running  # AttributeError when runtime_started never ran

    class MetricsServer:
        miminions_plugin_name = "metrics_server"

        @hookimpl(tryfirst=True)
        def miminions_runtime_started(self, runtime: AgentRuntime) -> None:
            raise OSError("address already in use: port 9100")

    rt = AgentRuntime(config=config(tmp_path), plugins=[Reporter(), MetricsServer()])
    with pytest.raises(OSError, match="port 9100") as raised:
        await rt.start()
    assert any("stopping the runtime afterwards failed" in n for n in raised.value.__notes__)
    assert not rt.is_running
    async with AgentRuntime(config=config(tmp_path)) as again:  # the database is free
        assert again.recovery is None


@pytest.mark.parametrize(
    ("hook", "answer", "lacks"),
    [
        ("miminions_make_store", {"not": "a store"}, "put_task"),
        ("miminions_make_bus", object(), "open_mailbox"),
        ("miminions_make_executor", object(), "wake"),
    ],
)
async def test_a_make_hook_answer_that_is_not_the_thing_is_a_plugin_error(
    tmp_path: Path, hook: str, answer: object, lacks: str
) -> None:
    """A make_* answer without the protocol's methods is a PluginError naming the hook and
    what it lacks (not an AttributeError from deep inside the start or its clean-up); the
    database is left free."""

    class Wrong:
        miminions_plugin_name = "wrong"

    def make(self: Wrong, **kwargs: Any) -> object:
        return answer

    setattr(Wrong, hook, hookimpl(tryfirst=True, specname=hook)(make))
    rt = AgentRuntime(config=config(tmp_path), plugins=[Wrong()])
    with pytest.raises(PluginError, match=f"{hook} answered .* no .*{lacks}"):
        await rt.start()
    async with AgentRuntime(config=config(tmp_path)):  # the database is free
        pass


class ForwardingStore:
    """The docs' TimedStore pattern: wraps the chosen store, forwarding what it does not
    change through ``__getattr__``."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.flushes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def flush(self) -> None:
        self.flushes += 1
        await self._inner.flush()


async def test_a_store_wrapper_forwarding_through_getattr_is_a_store(tmp_path: Path) -> None:
    """A make_* answer that forwards its members through ``__getattr__`` has them all:
    accepted on every Python (since 3.12, isinstance against a protocol ignores
    ``__getattr__``, so the check asks each member)."""

    class Timing:
        miminions_plugin_name = "timing"

        @hookimpl(wrapper=True)
        def miminions_make_store(self, config: RuntimeConfig) -> Any:
            return ForwardingStore((yield))

    async with AgentRuntime(config=config(tmp_path), plugins=[Timing()]) as rt:
        await rt.submit_task("t")
        assert isinstance(rt.store, ForwardingStore)
    assert rt.store.flushes > 0


async def test_a_wrapper_that_provides_the_bus_itself_is_a_provider(tmp_path: Path) -> None:
    """A ``wrapper=True`` implementation may answer by itself when nothing was provided
    (pluggy runs it with no plain implementation): it counts as providing the hook."""

    class OwnBus:
        miminions_plugin_name = "own_bus"

        @hookimpl(wrapper=True)
        def miminions_make_bus(self, runtime: AgentRuntime) -> Any:
            bus = yield
            if bus is None:
                return MemoryBus(
                    runtime.messenger.message_expired, runtime.messenger.message_returned
                )
            return bus

    async with AgentRuntime(
        config=config(tmp_path), plugins=[OwnBus()], disable=["memory_bus"]
    ) as rt:
        assert rt.is_running
