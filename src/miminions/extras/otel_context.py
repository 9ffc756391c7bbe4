"""OpenTelemetry contexts as miminions trace carriers, and back (part of the ``otel`` extra).

A carrier (:mod:`miminions.kernel.tracing`) holds the W3C ``traceparent``, ``tracestate``
and ``baggage`` headers, written and read with OpenTelemetry's own W3C propagators — always
these, whatever ``OTEL_PROPAGATORS`` says, so the runtime and its workers agree.

:data:`PROPAGATOR` is the bridge the kernel calls while agent code runs: it attaches a
task's or message's carrier as OpenTelemetry's current context, so spans an agent makes
itself (with its own tracer provider) are children of the runtime's span for that work, and
it captures OpenTelemetry's current span, so a message sent inside such a span carries it.
The runtime installs it for inline agents; :func:`install_in_worker` is the
``miminions_worker_setup`` function that installs it in an agent's worker process.

Importing this module does not import opentelemetry: a worker imports it only when the
first traced task or message reaches it, and not at all when none does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from miminions.kernel.tracing import Carrier, install_propagator

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator

#: The ``miminions_worker_setup`` answer of the ``otel`` plugin: this module's installer.
WORKER_SETUP = f"{__name__}:install_in_worker"

logger = logging.getLogger("miminions.extras.otel")

_w3c: TextMapPropagator | None = None


def _propagator() -> TextMapPropagator:
    """W3C trace context and baggage, made on first use (the first opentelemetry import)."""
    global _w3c
    if _w3c is None:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _w3c = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    return _w3c


def inject(context: Context | None = None) -> Carrier | None:
    """The carrier of ``context`` (default: the current one); None when it names no trace."""
    carrier: Carrier = {}
    _propagator().inject(carrier, context=context)
    return carrier or None


def extract(carrier: Carrier | None) -> Context:
    """The context a carrier names; an empty context (a new trace begins) for None. Never
    the caller's ambient context: work is parented by what it carries, nothing else."""
    from opentelemetry.context import Context

    if not carrier:
        return Context()
    return _propagator().extract(carrier, context=Context())


class OtelPropagator:
    """The :class:`~miminions.kernel.tracing.TracePropagator` of OpenTelemetry."""

    def attach(self, carrier: Carrier) -> contextlib.AbstractContextManager[object]:
        """A context manager making ``carrier`` OpenTelemetry's current context."""
        return _attached(extract(carrier))

    def capture(self) -> Carrier | None:
        """OpenTelemetry's current span as a carrier, or None when there is none."""
        if "opentelemetry.context" not in sys.modules:
            return None  # no OpenTelemetry code ran in this process: nothing is current
        from opentelemetry import trace

        if not trace.get_current_span().get_span_context().is_valid:
            return None
        return inject()

    def __repr__(self) -> str:
        return "<miminions OpenTelemetry propagator>"


@contextlib.contextmanager
def _attached(context: Context) -> Iterator[object]:
    from opentelemetry import context as otel_context

    token = otel_context.attach(context)
    try:
        yield context
    finally:
        otel_context.detach(token)


#: The one propagator of the process (installing it again changes nothing).
PROPAGATOR = OtelPropagator()


def install_in_worker() -> None:
    """Install :data:`PROPAGATOR` in this (worker) process if opentelemetry is importable
    here; otherwise carriers still travel, the agent's code just cannot see them."""
    if importlib.util.find_spec("opentelemetry") is None:
        logger.debug("opentelemetry is not importable in this worker; not attaching contexts")
        return
    install_propagator(PROPAGATOR)


__all__ = ["PROPAGATOR", "WORKER_SETUP", "OtelPropagator", "extract", "inject", "install_in_worker"]
