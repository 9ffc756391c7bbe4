"""Built-in monitor: every event goes to the ``miminions.events`` logger.

Severity maps to the logging level (debug, info, warning, error, critical). The monitor
takes only the events the logger is enabled for (asked anew for each event, so a level set
later counts), so an unconfigured application pays almost nothing: no event is even built
for it.
"""

from __future__ import annotations

import logging

from miminions.kernel.hookspecs import accepts_events, hookimpl
from miminions.kernel.models import Event, EventType, Severity

_log = logging.getLogger("miminions.events")
_LEVELS = {
    Severity.DEBUG: logging.DEBUG,
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.ERROR: logging.ERROR,
    Severity.CRITICAL: logging.CRITICAL,
}


def _logged(event_type: EventType, severity: Severity) -> bool:
    """Whether the logger is enabled for events of ``severity``."""
    return _log.isEnabledFor(_LEVELS[severity])


@hookimpl
@accepts_events(_logged)
def miminions_event(event: Event) -> None:
    """Log the event at the level of its severity."""
    _log.log(
        _LEVELS[event.severity],
        "%s agent=%s task=%s %s",
        event.event_type.value,
        event.agent_id or "-",
        event.task_id or "-",
        event.details,
    )
