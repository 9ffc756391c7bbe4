"""The ``uvloop`` extra: run miminions on uvloop's event loop (``pip install 'miminions[uvloop]'``).

Registered through the ``miminions`` entry-point group under the name ``uvloop``. When the
uvloop package is installed and the plugin is not disabled (``disable=["uvloop"]``), it
answers :func:`~miminions.kernel.hookspecs.miminions_loop_factory` with
``uvloop.new_event_loop``, so:

- :func:`miminions.run` and the ``miminions`` command run on a uvloop loop;
- worker processes of ``process`` agents run their agent on a uvloop loop (the process
  plugin asks this hook once per runtime and hands the workers the factory's import path);
- an :class:`~miminions.AgentRuntime` started on a loop someone else made (``asyncio.run``,
  a test framework) keeps that loop: a running loop cannot be swapped.

Without uvloop installed the plugin is dormant (every hook passes), unless the user asked for
it with a ``plugin_options={"uvloop": {...}}`` section: then starting the runtime (or
:func:`miminions.run`) raises :class:`~miminions.MissingExtraError` naming
``pip install 'miminions[uvloop]'``. The section takes no options yet; anything in it is a
:class:`~miminions.ConfigurationError`.

Importing this module never imports uvloop: every runtime loads it, and it must cost nothing
when uvloop is absent or unused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

import pydantic

from miminions import extras
from miminions.extras import require
from miminions.kernel.errors import MissingExtraError
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.models import RuntimeConfig

if TYPE_CHECKING:
    from miminions.kernel.runtime import AgentRuntime

#: The plugin's name: its entry point, its ``disable=[...]`` name and its options key.
PLUGIN_NAME = "uvloop"
#: The name pluggy registers this module under when it is passed by hand
#: (``plugins=[uvloop_loop]``), so ``disable=["uvloop"]`` blocks it then too.
miminions_plugin_name = PLUGIN_NAME
#: The extra that installs uvloop.
EXTRA = "uvloop"

logger = logging.getLogger("miminions.extras.uvloop")


class UvloopOptions(pydantic.BaseModel):
    """The ``plugin_options["uvloop"]`` section. It has no options yet: its presence alone
    says uvloop is required, so a missing package is an error instead of a silent fallback
    to the standard asyncio loop."""

    model_config = pydantic.ConfigDict(extra="forbid")


def requested_options(config: RuntimeConfig) -> UvloopOptions | None:
    """The validated ``plugin_options["uvloop"]`` section, or None when there is none.

    :raises ConfigurationError: the section holds something this plugin does not know.
    """
    return extras.requested_options(
        config,
        PLUGIN_NAME,
        UvloopOptions,
        hint="the uvloop plugin takes no options: pass an empty section {} to require uvloop",
    )


def load_uvloop(config: RuntimeConfig) -> ModuleType | None:
    """The uvloop module, or None when it is not installed and nobody asked for it.

    :raises MissingExtraError: uvloop is missing although ``config`` has a uvloop section.
    :raises ConfigurationError: that section is invalid.
    """
    if requested_options(config) is not None:
        return require("uvloop", EXTRA)
    try:
        return require("uvloop", EXTRA)
    except MissingExtraError:
        # Only auto-detected, never asked for: stay dormant (sentry-python's rule).
        logger.debug("uvloop is not installed; the standard asyncio loop is used")
        return None


@hookimpl
def miminions_configure(config: RuntimeConfig) -> None:
    """Fail the runtime's start when uvloop was asked for but cannot be used."""
    load_uvloop(config)


@hookimpl
def miminions_loop_factory(
    config: RuntimeConfig,
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` when uvloop is installed; None (pass) otherwise."""
    uvloop = load_uvloop(config)
    if uvloop is None:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


@hookimpl
def miminions_runtime_started(runtime: AgentRuntime) -> None:
    """Say (at debug level) when a runtime runs on another loop than uvloop's: it was
    started inside a loop made elsewhere, which only :func:`miminions.run` would avoid."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    uvloop = load_uvloop(runtime.config)
    loop = asyncio.get_running_loop()
    if uvloop is not None and not isinstance(loop, uvloop.Loop):
        logger.debug(
            "the runtime on %s runs on %s, not uvloop: it was started in a loop made "
            "elsewhere (miminions.run(main) runs main on uvloop)",
            runtime.config.storage_path,
            type(loop).__name__,
        )
