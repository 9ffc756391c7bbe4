"""An ``async def`` hook implementation behind a decorator registration cannot see through
answers a coroutine: whatever the hook, the runtime closes it and reports a PluginError
(logged where the hook's failures are contained), never leaving it unawaited."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import logging
import types
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import miminions
from miminions import AgentRuntime, BaseAgent, PluginError, RuntimeConfig, Task, hookimpl
from tests.support.process_agents import SmallTaskAgent
from tests.support.waiting import WAIT_SECONDS


def passed_through(function: Callable[..., Any]) -> Callable[..., Any]:
    """An ordinary decorator (as in tests/integration/test_plugin_robustness.py)."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return call


ANSWERED: list[Any] = []


def keep(function: Callable[..., Any]) -> Callable[..., Any]:
    """Remember the coroutine each call answers, to see whether it was closed."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        answer = function(*args, **kwargs)
        ANSWERED.append(answer)
        return answer

    return call


@pytest.fixture(autouse=True)
def _clear() -> None:
    ANSWERED.clear()


def all_closed() -> bool:
    return bool(ANSWERED) and all(
        inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in ANSWERED
    )


class Quick(BaseAgent):
    async def execute_task(self, task: Task) -> Any:
        return {}


async def test_an_async_pick_agent_behind_a_decorator_is_reported_as_a_coroutine(
    make_config: Callable[..., RuntimeConfig], caplog: pytest.LogCaptureFixture
) -> None:
    class AsyncPicker:
        miminions_plugin_name = "async_picker"

        @hookimpl
        @keep
        @passed_through
        async def miminions_pick_agent(self, task: Any, candidates: Any) -> Any:
            return candidates[0].agent_id

    with caplog.at_level(logging.ERROR):
        async with AgentRuntime(config=make_config(), plugins=[AsyncPicker()]) as rt:
            await rt.register_agent("a", Quick, isolation="inline")
            agent_id = rt.list_agents()[0].agent_id
            await rt.start_agent(agent_id)
            await rt.wait_for_task(await rt.submit_task("t"), timeout_seconds=WAIT_SECONDS)
    assert "answered a coroutine" in caplog.text, caplog.text[-600:]
    assert all_closed(), ANSWERED


async def test_an_async_trace_context_behind_a_decorator_is_reported_not_dropped_silently(
    make_config: Callable[..., RuntimeConfig], caplog: pytest.LogCaptureFixture
) -> None:
    class AsyncTracer:
        miminions_plugin_name = "async_tracer"

        @hookimpl(tryfirst=True)
        @keep
        @passed_through
        async def miminions_trace_context(self, runtime: Any, operation: str) -> Any:
            return {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}

    with caplog.at_level(logging.ERROR):
        async with AgentRuntime(config=make_config(), plugins=[AsyncTracer()]) as rt:
            await rt.submit_task("t")
    assert "answered a coroutine" in caplog.text, caplog.text[-600:]
    assert all_closed(), ANSWERED


async def test_an_async_export_metrics_behind_a_decorator_is_a_plugin_error(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    class AsyncExporter:
        miminions_plugin_name = "async_exporter"

        @hookimpl(tryfirst=True)
        @keep
        @passed_through
        async def miminions_export_metrics(self, runtime: Any, format: str) -> Any:
            return b"# nothing\n"

    async with AgentRuntime(config=make_config(), plugins=[AsyncExporter()]) as rt:
        with pytest.raises(PluginError, match="answered a coroutine"):
            rt.export_prometheus_metrics()
    assert all_closed(), ANSWERED


def test_an_async_loop_factory_behind_a_decorator_is_a_plugin_error() -> None:
    class AsyncLoops:
        miminions_plugin_name = "async_loops"

        @hookimpl(tryfirst=True)
        @keep
        @passed_through
        async def miminions_loop_factory(self, config: Any) -> Any:
            return asyncio.new_event_loop

    async def main() -> int:
        return 1

    with pytest.raises(PluginError, match="answered a coroutine"):
        miminions.run(main(), plugins=[AsyncLoops()])
    assert all_closed(), ANSWERED


# ----------------------------------------------------------------- 1. worker loop factory
def _standard_loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


class AsyncLoops:
    miminions_plugin_name = "async_loops"

    @hookimpl(tryfirst=True)
    @keep
    async def miminions_loop_factory(self, config: Any) -> Any:
        return _standard_loop


async def test_an_async_loop_factory_is_refused_for_worker_processes_too(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """Asked for the loop of process workers too (when the runtime starts), the coroutine
    is closed and the start is a PluginError saying so (as in miminions.run), not a
    misleading warning about import paths."""
    rt = AgentRuntime(config=make_config(), plugins=[AsyncLoops()])
    with pytest.raises(PluginError, match="miminions_loop_factory answered a coroutine"):
        await rt.start()
    assert not rt.is_running
    assert ANSWERED, "the hook was never asked"
    assert all_closed(), f"the coroutine answer was left unawaited: {ANSWERED}"


# ----------------------------------------------------------------- 2. worker setup
class AsyncSetup:
    miminions_plugin_name = "async_setup"

    @hookimpl
    @keep
    async def miminions_worker_setup(self, spec: Any, runtime: Any) -> Any:
        return "os:getpid"


async def test_an_async_worker_setup_is_reported_as_a_coroutine(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """A coroutine answered by miminions_worker_setup is closed and named, not sent into
    the worker's boot message (where it failed the start with an unrelated error)."""
    error: BaseException | None = None
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        async with AgentRuntime(config=make_config(), plugins=[AsyncSetup()]) as rt:
            await rt.register_agent("p", SmallTaskAgent, isolation="process")
            agent_id = rt.list_agents()[0].agent_id
            try:
                await rt.start_agent(agent_id)
            except Exception as exc:
                error = exc
            reason = f"{error!r} / {rt.list_agents()[0].error_message}"
        gc.collect()
    assert ANSWERED, "the hook was never asked"
    assert all_closed(), f"the coroutine answer was left unawaited: {ANSWERED}; {reason}"
    assert "answered a coroutine" in reason, reason


# ----------------------------------------------------------------- 4. run() and the factory
def _broken_loop_factory() -> asyncio.AbstractEventLoop:
    raise OSError("no event loop for you")


class BrokenLoops:
    miminions_plugin_name = "broken_loops"

    @hookimpl(tryfirst=True)
    def miminions_loop_factory(self, config: Any) -> Any:
        return _broken_loop_factory


class LoopInsteadOfFactory:
    """A common slip: answering a loop rather than a function that makes one."""

    miminions_plugin_name = "loop_instead_of_factory"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    @hookimpl(tryfirst=True)
    def miminions_loop_factory(self, config: Any) -> Any:
        return self.loop


def test_run_closes_main_when_the_factory_it_was_given_fails() -> None:
    """run() closes ``main`` also when the factory the hook answered fails (no "coroutine
    'main' was never awaited")."""
    import miminions

    async def main() -> int:
        return 1

    coro = main()
    assert isinstance(coro, types.CoroutineType)  # a native coroutine: it has cr_frame
    with pytest.raises(OSError, match="no event loop for you"):
        miminions.run(coro, plugins=[BrokenLoops()])
    assert coro.cr_frame is None, "main was left unawaited (never closed)"


def test_run_with_a_non_callable_loop_factory_answer_is_a_clear_plugin_error() -> None:
    """An answer that is not callable (a loop instead of a factory) is a PluginError
    naming the hook (it failed deep in asyncio.Runner, naming neither hook nor plugin)."""
    import miminions

    async def main() -> int:
        return 1

    plugin = LoopInsteadOfFactory()
    coro = main()
    assert isinstance(coro, types.CoroutineType)  # a native coroutine: it has cr_frame
    try:
        with pytest.raises(PluginError, match="miminions_loop_factory"):
            miminions.run(coro, plugins=[plugin])
    finally:
        plugin.loop.close()
        if coro.cr_frame is not None:
            coro.close()


async def _make_loop_later() -> asyncio.AbstractEventLoop:  # wrong: must be a plain def
    return asyncio.new_event_loop()


def _not_a_loop() -> Any:
    return "a loop, trust me"


class AsyncLoopFactory:
    miminions_plugin_name = "async_loop_factory"

    @hookimpl(tryfirst=True)
    def miminions_loop_factory(self, config: Any) -> Any:
        return _make_loop_later


class NotALoopFactory:
    miminions_plugin_name = "not_a_loop_factory"

    @hookimpl(tryfirst=True)
    def miminions_loop_factory(self, config: Any) -> Any:
        return _not_a_loop


@pytest.mark.parametrize(
    ("plugin", "said"),
    [(AsyncLoopFactory(), "'async def' function"), (NotALoopFactory(), "made a str")],
)
def test_a_loop_factory_that_makes_no_loop_is_a_clear_plugin_error(
    plugin: object, said: str
) -> None:
    """A factory that is an ``async def`` function, or returns something other than an
    event loop, is a PluginError naming the hook, and ``main`` is closed (it failed later
    with AttributeErrors about a coroutine object, and 'main' was never awaited)."""
    import miminions

    async def main() -> int:
        return 1

    coro = main()
    assert isinstance(coro, types.CoroutineType)  # a native coroutine: it has cr_frame
    with pytest.raises(PluginError, match=f"miminions_loop_factory.*{said}|{said}.*"):
        miminions.run(coro, plugins=[plugin])
    assert coro.cr_frame is None, "main was left unawaited (never closed)"
