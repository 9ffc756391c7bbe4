"""Optional plugins that need third-party packages (uvloop, Prometheus, OpenTelemetry).

Each extra imports its package lazily through :func:`require`, so ``import miminions`` never
needs them, and asking for an extra whose package is missing raises
:class:`~miminions.MissingExtraError` naming the ``pip install 'miminions[extra]'`` to run.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from miminions.kernel.errors import MissingExtraError


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


__all__ = ["installed", "require"]
