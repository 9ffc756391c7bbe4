"""Trace context: which trace a piece of work belongs to, carried without being understood.

A *carrier* is a small dict of text headers — with the ``otel`` extra, the W3C
``traceparent``, ``tracestate`` and ``baggage`` headers. A tracing plugin hands the kernel a
carrier where the application creates work (``miminions_trace_context``) and may rewrite
it as the work travels (its own span around a run or a send); the kernel stores the carrier
with the task or message, sends it to the worker process with it and gives it back to the
agent, and never reads it.

Inside an agent (inline or in a worker process) the carrier of the work being done is
*current*, in a context variable, so concurrent handlers never mix: the task's while
``execute_task`` runs, a message's while ``on_message`` handles it. Whatever the agent
sends meanwhile carries the current carrier.

A :class:`TracePropagator`, installed once per process by a tracing plugin (in a worker,
through ``miminions_worker_setup``), bridges to a tracing library: it makes a carrier that
library's current context while the agent's code runs, so spans the agent makes itself are
children of the work's span, and it captures the library's current context, so a message
sent inside such a span carries that span. Without a propagator the carrier just travels.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, Protocol

from miminions.kernel.errors import PLUGIN_ERRORS

#: A trace carrier: text header name -> value.
Carrier = dict[str, str]

#: Bounds of a carrier that comes from outside (a worker, the store): a trace context is a
#: few short headers; anything bigger is not one, and is dropped rather than carried.
MAX_CARRIER_ENTRIES = 16
MAX_CARRIER_CHARS = 8192

_log = logging.getLogger("miminions.tracing")

_current: ContextVar[Carrier | None] = ContextVar("miminions_trace_context", default=None)
_propagators: list[TracePropagator] = []


class TracePropagator(Protocol):
    """Bridges carriers to a tracing library's own notion of the current context."""

    def attach(self, carrier: Carrier) -> AbstractContextManager[object]:
        """A context manager making ``carrier`` the library's current context inside it."""
        ...

    def capture(self) -> Carrier | None:
        """The library's current context as a carrier, or None when it has none."""
        ...


def install_propagator(propagator: TracePropagator) -> None:
    """Use ``propagator`` in this process from now on (installing it twice is harmless)."""
    if propagator not in _propagators:
        _propagators.append(propagator)


def remove_propagator(propagator: TracePropagator) -> None:
    """Stop using ``propagator`` (nothing happens if it is not installed)."""
    with contextlib.suppress(ValueError):
        _propagators.remove(propagator)


def scope_carrier() -> Carrier | None:
    """The carrier of the work the agent is doing in this context (None outside any)."""
    return _current.get()


def current_carrier() -> Carrier | None:
    """The carrier that work created now should carry: what an installed propagator
    captures (the agent's own span, if it made one), else the current work's carrier."""
    for propagator in tuple(_propagators):
        try:
            carrier = propagator.capture()
        except PLUGIN_ERRORS:  # tracing must never break the agent's work
            _log.exception("trace propagator %r failed to capture the context", propagator)
            continue
        if carrier:
            return carrier
    return _current.get()


@contextlib.contextmanager
def trace_scope(carrier: Carrier) -> Iterator[None]:
    """Make ``carrier`` current (and, through the installed propagators, the tracing
    library's current context) for the code run inside the ``with`` block."""
    token = _current.set(carrier)
    try:
        with contextlib.ExitStack() as stack:
            for propagator in tuple(_propagators):
                try:
                    stack.enter_context(propagator.attach(carrier))
                except PLUGIN_ERRORS:  # tracing must never break the agent's work
                    _log.exception("trace propagator %r failed to attach a context", propagator)
            yield
    finally:
        _current.reset(token)


def check_carrier(value: Any) -> Carrier | None:
    """``value`` if it is a plausible carrier (a small dict of strings), else None.

    For carriers that arrive from elsewhere (a worker's frame, a plugin's answer): one that
    is malformed is dropped — a trace loses a link, the work itself goes on.
    """
    if value is None:
        return None
    if (
        type(value) is dict
        and len(value) <= MAX_CARRIER_ENTRIES
        and all(type(k) is str and type(v) is str for k, v in value.items())
        and sum(len(k) + len(v) for k, v in value.items()) <= MAX_CARRIER_CHARS
    ):
        return value or None
    _log.debug("dropping a malformed trace carrier: %.200r", value)
    return None


__all__ = [
    "MAX_CARRIER_CHARS",
    "MAX_CARRIER_ENTRIES",
    "Carrier",
    "TracePropagator",
    "check_carrier",
    "current_carrier",
    "install_propagator",
    "remove_propagator",
    "scope_carrier",
    "trace_scope",
]
