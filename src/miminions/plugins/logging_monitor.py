"""Built-in monitor: every event goes to the ``miminions.events`` logger.

Severity maps to the logging level (debug, info, warning, error, critical). Nothing is
formatted unless the logger is enabled for that level, so an unconfigured application pays
almost nothing.
"""

from __future__ import annotations

import logging

from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.models import Event, Severity

_log = logging.getLogger("miminions.events")
_LEVELS = {
    Severity.DEBUG: logging.DEBUG,
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}


@hookimpl
def miminions_event(event: Event) -> None:
    """Log the event at the level of its severity."""
    level = _LEVELS[event.severity]
    if _log.isEnabledFor(level):
        _log.log(
            level,
            "%s agent=%s task=%s %s",
            event.event_type.value,
            event.agent_id or "-",
            event.task_id or "-",
            event.details,
        )
