"""An ``async def`` hook implementation behind a decorator registration cannot see through
answers a coroutine: whatever the hook, the runtime closes it and reports a PluginError
(logged where the hook's failures are contained), never leaving it unawaited."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import pytest

import miminions
from miminions import AgentRuntime, BaseAgent, PluginError, RuntimeConfig, Task, hookimpl
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
