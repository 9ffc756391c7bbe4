"""``miminions.run()``: run a coroutine on the event loop the plugins ask for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from miminions.kernel.models import RuntimeConfig
from miminions.kernel.plugins import build_plugin_manager, refuse_coroutines

_T = TypeVar("_T")


def run(
    main: Coroutine[Any, Any, _T],
    *,
    plugins: Sequence[object] = (),
    disable: Sequence[str] = (),
    config: RuntimeConfig | None = None,
) -> _T:
    """Like ``asyncio.run(main)``, on the loop a ``miminions_loop_factory`` plugin provides
    (uvloop, when its extra is installed and enabled), else the standard asyncio loop."""
    try:
        pm = build_plugin_manager(plugins, disable)
        factory: Callable[[], asyncio.AbstractEventLoop] | None = pm.hook.miminions_loop_factory(
            config=config or RuntimeConfig()
        )
        refuse_coroutines(factory, "miminions_loop_factory")
    except BaseException:
        main.close()  # it will never run: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
