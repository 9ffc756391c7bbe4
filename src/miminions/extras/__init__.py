"""Optional plugins that need third-party packages (uvloop, Prometheus, OpenTelemetry).

Each extra imports its package lazily through :func:`require`, so ``import miminions`` never
needs them, and asking for an extra whose package is missing raises
:class:`~miminions.MissingExtraError` naming the ``pip install 'miminions[extra]'`` to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TypeVar

import pydantic

from miminions.kernel.errors import ConfigurationError, MissingExtraError
from miminions.kernel.models import RuntimeConfig
from miminions.kernel.plugins import installed

_Options = TypeVar("_Options", bound=pydantic.BaseModel)


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` for the ``extra``; raise MissingExtraError if it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra) from exc


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
