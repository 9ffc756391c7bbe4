"""Optional plugins that need third-party packages (uvloop, Prometheus, OpenTelemetry).

Each extra imports its package lazily through :func:`require`, so ``import miminions`` never
needs them, and asking for an extra whose package is missing raises
:class:`~miminions.MissingExtraError` naming the ``pip install 'miminions[extra]'`` to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from miminions.kernel.errors import MissingExtraError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` for the ``extra``; raise MissingExtraError if it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra) from exc


__all__ = ["require"]
