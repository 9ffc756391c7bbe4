"""Optional plugins that need third-party packages (uvloop, Prometheus, OpenTelemetry).

Each extra imports its package lazily through :func:`require`, so ``import miminions`` never
needs them, and asking for an extra whose package is missing raises
:class:`~miminions.MissingExtraError` naming the ``pip install 'miminions[extra]'`` to run.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import TypeVar

import pydantic

from miminions.kernel.errors import ConfigurationError, MissingExtraError
from miminions.kernel.models import RuntimeConfig

_Options = TypeVar("_Options", bound=pydantic.BaseModel)


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` for the ``extra``; raise MissingExtraError if it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra) from exc


def installed(package: str) -> bool:
    """Whether the top-level ``package`` is installed, found without importing anything:
    an extra's plugin module asks this once, when it is imported, to leave out the hooks
    that would only pass without it.

    A name set to None in ``sys.modules`` counts as missing, as ``import`` sees it; so does
    one whose spec cannot be told (``find_spec`` raises ValueError for a module without one).
    """
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def requested_options(
    config: RuntimeConfig, name: str, model: type[_Options], *, hint: str | None = None
) -> _Options | None:
    """The ``plugin_options[name]`` section of ``config`` validated as ``model``, or None
    when there is none (a section, even an empty one, is how a user asks for an extra).

    :raises ConfigurationError: the section holds an unknown option or a bad value; the
        message lists the problems, then ``hint`` (by default, the known options).
    """
    section = config.plugin_options.get(name)
    if section is None:
        return None
    try:
        return model.model_validate(section)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'section'}: {error['msg']}"
            for error in exc.errors()
        )
        hint = hint or f"known options: {sorted(model.model_fields)}"
        raise ConfigurationError(
            f"plugin_options[{name!r}] is invalid ({problems}); {hint}"
        ) from None


__all__ = ["installed", "requested_options", "require"]
