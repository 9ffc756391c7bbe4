"""The uvloop extra (issue 5, points 1 and 4): ``miminions.run`` and process workers run on
uvloop when it is installed and the plugin is enabled; ``disable=["uvloop"]`` keeps plain
asyncio everywhere; without the package the plugin is dormant unless the configuration asks
for it, which then fails naming ``pip install 'miminions[uvloop]'``.

Worker processes import their agent by module path, so the agent that reports its loop lives
at module level here. Tests that need uvloop itself skip when it is not installed; the
"package missing" cases fake its absence, so they run everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import miminions
from miminions import (
    AgentContext,
    AgentRuntime,
    ConfigurationError,
    MissingExtraError,
    RuntimeConfig,
    Task,
    TaskStatus,
    hookimpl,
)
from miminions.extras import uvloop_loop
from miminions.kernel.plugins import AUTOLOAD_ENV, build_plugin_manager
from miminions.plugins import asyncio_loop
from tests.support.interpreter import run_python
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS

PIP_HINT = "pip install 'miminions[uvloop]'"
UVLOOP_LOOP = "uvloop.Loop"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``module.Class`` of an event loop, e.g. ``uvloop.Loop``."""
    kind = type(loop)
    return f"{kind.__module__}.{kind.__qualname__}"


async def report_loop(task: Task, context: AgentContext) -> dict[str, Any]:
    """A process agent that answers with the loop its worker runs on."""
    return {"loop": loop_name(asyncio.get_running_loop())}


class TaggedLoop(asyncio.SelectorEventLoop):
    """A standard loop under a name of its own, to recognise in a worker."""


def tagged_loop() -> asyncio.AbstractEventLoop:
    """A module-level loop factory: workers can import it by path."""
    return TaggedLoop()


class LoopFactoryPlugin:
    """A user plugin answering ``miminions_loop_factory`` with ``factory``."""

    miminions_plugin_name = "test_loop_factory"

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.factory = factory

    @hookimpl
    def miminions_loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        """Always the given factory."""
        return self.factory


async def loops_seen(
    config: RuntimeConfig, plugins: Sequence[object] = (), disable: Sequence[str] = ()
) -> dict[str, str]:
    """Run one task on a process agent; return the loop of the runtime and of the worker."""
    async with AgentRuntime(config=config, plugins=plugins, disable=disable) as rt:
        agent_id = await start_agent(rt, "loop-reporter", report_loop, isolation="process")
        task = await rt.wait_for_task(
            await rt.submit_task("which loop", agent_id=agent_id), timeout_seconds=WAIT_SECONDS
        )
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data is not None
    return {"runtime": loop_name(asyncio.get_running_loop()), "worker": task.output_data["loop"]}


async def running_loop() -> str:
    """The name of the loop this coroutine runs on."""
    return loop_name(asyncio.get_running_loop())


@pytest.fixture(autouse=True)
def _load_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin under test comes from the entry-point group: never skip loading it."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)


@pytest.fixture
def without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import uvloop`` fail, as on a machine without the extra."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


# --------------------------------------------------------------------------- registration
def test_registers_through_the_entry_point_group() -> None:
    """E-04: the plugin comes from the ``miminions`` entry-point group, named ``uvloop``."""
    pm = build_plugin_manager()
    assert pm.get_plugin(uvloop_loop.PLUGIN_NAME) is uvloop_loop
    assert "miminions_loop_factory" in pm.hooks_of("uvloop")
    assert build_plugin_manager(disable=["uvloop"]).get_plugin("uvloop") is None


def test_importing_the_plugin_does_not_import_uvloop() -> None:
    """E-04: every runtime loads the plugin module; that alone must not import uvloop."""
    code = "import sys, miminions.extras.uvloop_loop; print('uvloop' in sys.modules)"
    assert run_python(code).strip() == "False"


# --------------------------------------------------------------------------- uvloop installed
@pytest.mark.slow
def test_run_puts_the_runtime_and_its_workers_on_uvloop(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """E-02: under ``miminions.run`` the runtime and its process agents run on uvloop."""
    pytest.importorskip("uvloop")
    assert miminions.run(loops_seen(make_config())) == {
        "runtime": UVLOOP_LOOP,
        "worker": UVLOOP_LOOP,
    }


@pytest.mark.slow
async def test_workers_run_on_uvloop_whatever_loop_the_runtime_has(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """E-02: a runtime started in a loop made elsewhere keeps it; its workers use uvloop."""
    pytest.importorskip("uvloop")
    seen = await loops_seen(make_config())
    assert seen["runtime"] != UVLOOP_LOOP  # pytest-asyncio's loop
    assert seen["worker"] == UVLOOP_LOOP


def test_requested_uvloop_starts_when_installed(make_config: Callable[..., RuntimeConfig]) -> None:
    """E-02: an empty ``plugin_options["uvloop"]`` section requires uvloop; it is there."""
    pytest.importorskip("uvloop")
    config = make_config(plugin_options={"uvloop": {}})
    assert miminions.run(running_loop(), config=config) == UVLOOP_LOOP


@pytest.mark.slow
def test_disabled_plugin_means_asyncio_everywhere(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """E-04: ``disable=["uvloop"]`` keeps the standard loop in the runtime and its workers."""
    pytest.importorskip("uvloop")
    seen = miminions.run(loops_seen(make_config(), disable=["uvloop"]), disable=["uvloop"])
    assert not seen["runtime"].startswith("uvloop"), seen
    assert not seen["worker"].startswith("uvloop"), seen


# --------------------------------------------------------------------------- uvloop missing
@pytest.mark.slow
@pytest.mark.usefixtures("without_uvloop")
def test_missing_package_leaves_the_plugin_dormant(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """E-04: without uvloop nothing asks for, everything runs on the standard loop (the
    built-in ``asyncio_loop`` plugin's)."""
    factory = build_plugin_manager().hook.miminions_loop_factory(config=make_config())
    assert factory is asyncio_loop.new_event_loop
    seen = miminions.run(loops_seen(make_config()))
    assert not seen["runtime"].startswith("uvloop"), seen
    assert not seen["worker"].startswith("uvloop"), seen


@pytest.mark.usefixtures("without_uvloop")
async def test_missing_package_fails_a_runtime_that_asks_for_it(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """E-04: a ``plugin_options["uvloop"]`` section makes uvloop required: start fails."""
    runtime = AgentRuntime(config=make_config(plugin_options={"uvloop": {}}))
    with pytest.raises(MissingExtraError, match=PIP_HINT.replace("[", r"\[")) as info:
        await runtime.start()
    assert info.value.extra == "uvloop"
    assert not runtime.is_running


@pytest.mark.usefixtures("without_uvloop")
def test_missing_package_fails_run_when_asked_for(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """E-04: ``miminions.run`` with a uvloop section fails the same way, before running."""
    main = running_loop()
    assert isinstance(main, types.CoroutineType)  # a native coroutine: it has cr_frame
    with pytest.raises(MissingExtraError) as info:
        miminions.run(main, config=make_config(plugin_options={"uvloop": {}}))
    assert PIP_HINT in str(info.value)
    assert main.cr_frame is None  # closed, never started: no "never awaited" warning


@pytest.mark.parametrize("section", [{"workers": True}, {"enabled": False}])
async def test_unknown_options_are_a_configuration_error(
    make_config: Callable[..., RuntimeConfig], section: dict[str, Any]
) -> None:
    """E-04: the uvloop section takes no options; anything there is named in the error."""
    runtime = AgentRuntime(config=make_config(plugin_options={"uvloop": section}))
    with pytest.raises(ConfigurationError, match=next(iter(section))):
        await runtime.start()


# --------------------------------------------------------------------------- any loop factory
@pytest.mark.slow
def test_workers_use_the_factory_a_plugin_answers(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """The hook's answer reaches the workers by import path (no uvloop needed)."""
    plugin = LoopFactoryPlugin(tagged_loop)
    seen = miminions.run(loops_seen(make_config(), plugins=[plugin]), plugins=[plugin])
    tagged = f"{__name__}.TaggedLoop"
    assert seen == {"runtime": tagged, "worker": tagged}


@pytest.mark.slow
async def test_a_factory_workers_cannot_import_leaves_them_on_asyncio(
    make_config: Callable[..., RuntimeConfig], caplog: pytest.LogCaptureFixture
) -> None:
    """A factory with no import path (a lambda) cannot reach a worker: it says so and the
    worker runs the standard loop."""
    plugin = LoopFactoryPlugin(lambda: TaggedLoop())
    with caplog.at_level(logging.WARNING, logger="miminions.plugins.process_host"):
        seen = await loops_seen(make_config(), plugins=[plugin])
    assert seen["worker"].startswith("asyncio."), seen
    assert "cannot be imported by module path" in caplog.text


def test_the_plugin_passed_by_hand_is_named_uvloop_and_can_be_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without entry points (autoload off) the module passed in plugins=[...] registers as
    "uvloop", the name docs/extras.md gives, so disable=["uvloop"] blocks it."""
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    named = AgentRuntime(str(tmp_path / "a.db"), plugins=[uvloop_loop])
    assert "uvloop" in named.plugin_manager.plugin_names()
    blocked = AgentRuntime(str(tmp_path / "b.db"), plugins=[uvloop_loop], disable=["uvloop"])
    assert not blocked.plugin_manager.is_registered(uvloop_loop)
