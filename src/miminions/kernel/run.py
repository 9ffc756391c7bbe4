"""``miminions.run()``: run a coroutine on the event loop the plugins ask for."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from miminions.kernel.errors import ConfigurationError, PluginError
from miminions.kernel.models import RuntimeConfig
from miminions.kernel.plugins import build_plugin_manager, loop_factory_of

_T = TypeVar("_T")


def run(
    main: Coroutine[Any, Any, _T],
    *,
    plugins: Sequence[object] = (),
    disable: Sequence[str] = (),
    config: RuntimeConfig | None = None,
) -> _T:
    """Like ``asyncio.run(main)``, on the loop a ``miminions_loop_factory`` plugin provides
    (uvloop, when its extra is installed and enabled), else asyncio's (the built-in
    ``asyncio_loop`` plugin's, whose timers are not rounded up to whole milliseconds)."""
    try:
        if _loop_running():
            # (asyncio.run's own refusal came only after a loop was made, then its
            # clean-up failed on that loop and hid the reason)
            raise RuntimeError(
                "miminions.run() cannot be called from a running event loop: await the "
                "coroutine there instead"
            )
        if config is not None and not isinstance(config, RuntimeConfig):
            raise ConfigurationError(
                f"config must be a miminions.RuntimeConfig, got {type(config).__name__}"
            )
        factory = loop_factory_of(build_plugin_manager(plugins, disable), config or RuntimeConfig())
        runner = asyncio.Runner(loop_factory=factory)
        # made now: a factory that fails does so before main is handed on
        loop = runner.get_loop()
        if not isinstance(loop, asyncio.AbstractEventLoop):
            if inspect.iscoroutine(loop):
                loop.close()
            raise PluginError(
                f"the function miminions_loop_factory answered made a {type(loop).__name__}, "
                "not an event loop"
            )
    except BaseException:
        main.close()  # it will never run: no "coroutine was never awaited" warning
        raise
    with runner:
        return runner.run(main)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
