"""The ``otel`` extra: OpenTelemetry traces of a runtime (``pip install 'miminions[otel]'``).

Registered through the ``miminions`` entry-point group under the name ``otel``. When
opentelemetry is installed and the plugin is not disabled (``disable=["otel"]``), a runtime
records spans with OpenTelemetry's global tracer provider, or the one given to
:func:`use_tracer_provider`, and one trace follows work across agents and processes:

- ``submit tasks`` (PRODUCER), a child of the caller's current span, for each
  ``submit_task`` / ``submit_tasks`` call (a batch's size in
  ``messaging.batch.message_count``); every task of the call carries its context;
- per attempt of a task, ``wait tasks`` (the time it waited in the queue) and ``process
  tasks`` (CONSUMER, the run; ERROR with the error when it fails or times out), children of
  the submit span, the task's name in ``miminions.task.name`` (span names stay few, as
  backends group by them). The agent runs inside the process span: in a worker process too,
  the run's context is OpenTelemetry's current context while ``execute_task`` runs, so spans
  the agent makes itself (with its own provider) nest under it, and what it sends carries it;
- ``send``/``publish``/``request``/``reply <destination>`` (PRODUCER) for each message,
  a child of what the sender was doing, and ``receive <destination>`` (CONSUMER) when it is
  taken; the receiver's ``on_message`` runs in the send span's context, and a reply in its
  request's trace, so a request and its reply between two agents is one trace;
- ``agent start`` / ``agent stop`` with their duration, and instant ``agent pause``,
  ``resume``, ``fail``, ``restart``, ``kill``, ... spans for the other lifecycle events.

Attributes follow the messaging semantic conventions (``messaging.system="miminions"``,
``messaging.operation.type``, ``messaging.destination.name``, ``messaging.message.id``,
``error.type``), plus ``miminions.*`` ones (task and agent ids, attempt, outcome). Trace
context travels as the W3C ``traceparent``/``tracestate``/``baggage`` headers in the
``trace_context`` of tasks and messages (stored with them, sent to workers as JSON).

Options, ``plugin_options={"otel": {...}}`` (a section also says the extra is required):
``tasks``, ``messages``, ``agents`` (which spans to record, all true by default) and
``agent_context`` (make the work's context current inside agents, true by default).

Without opentelemetry installed the plugin is dormant: it implements no hook but
``miminions_configure`` (whether the package is installed is decided once, when this module
is imported), so submits, sends and events cost what they cost without the plugin. If the
user asked for it with an ``otel`` section, starting the runtime raises
:class:`~miminions.MissingExtraError` naming ``pip install 'miminions[otel]'``. Options it
does not know, or bad values, are a :class:`~miminions.ConfigurationError` at start.

Importing this module never imports opentelemetry: every runtime loads it, and it must cost
nothing when the package is absent.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

import pydantic

from miminions import extras
from miminions.extras import installed, require
from miminions.extras.otel_context import PROPAGATOR, WORKER_SETUP
from miminions.kernel.errors import MissingExtraError
from miminions.kernel.hookspecs import hookimpl, passes_through
from miminions.kernel.models import AgentSpec, Event, RuntimeConfig
from miminions.kernel.tracing import Carrier, install_propagator, remove_propagator

if TYPE_CHECKING:
    from collections.abc import Generator

    from opentelemetry.trace import TracerProvider

    from miminions.extras.otel_spans import RuntimeTracing
    from miminions.kernel.runtime import AgentRuntime

#: The plugin's name: its entry point, its ``disable=[...]`` name and its options key.
PLUGIN_NAME = "otel"
#: Registered under this name when passed explicitly (``plugins=[otel]``) too.
miminions_plugin_name = PLUGIN_NAME
#: The extra that installs opentelemetry.
EXTRA = "otel"

logger = logging.getLogger("miminions.extras.otel")

# Decided once, at import, without importing it (a namespace package with no code).
_INSTALLED = installed("opentelemetry")


class OtelOptions(pydantic.BaseModel):
    """The ``plugin_options["otel"]`` section.

    ``tasks``: submit, wait and run spans. ``messages``: send and receive spans.
    ``agents``: agent lifecycle spans. ``agent_context``: while an agent handles a task or
    a message, its trace context is OpenTelemetry's current context (in worker processes
    too, where opentelemetry is imported when the first traced work arrives).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    tasks: pydantic.StrictBool = True
    messages: pydantic.StrictBool = True
    agents: pydantic.StrictBool = True
    agent_context: pydantic.StrictBool = True


def requested_options(config: RuntimeConfig) -> OtelOptions | None:
    """The validated ``plugin_options["otel"]`` section, or None when there is none.

    :raises ConfigurationError: the section holds an unknown option or a bad value.
    """
    return extras.requested_options(config, PLUGIN_NAME, OtelOptions)


def use_tracer_provider(runtime: AgentRuntime, tracer_provider: TracerProvider) -> None:
    """Record ``runtime``'s spans with ``tracer_provider`` instead of OpenTelemetry's global
    one (call it before ``start()``; later, spans from then on use it). The provider stays
    the caller's: the runtime never shuts it down."""
    _providers[runtime] = tracer_provider
    tracing = _runtimes.get(runtime)
    if tracing is not None:
        tracing.use(tracer_provider)


# One module serves every runtime of the process: its state is kept per runtime, weakly.
# None marks a runtime for which the plugin is dormant (or stopped), so activation is not
# retried per hook call.
_runtimes: weakref.WeakKeyDictionary[AgentRuntime, RuntimeTracing | None] = (
    weakref.WeakKeyDictionary()
)
_providers: weakref.WeakKeyDictionary[AgentRuntime, TracerProvider] = weakref.WeakKeyDictionary()
# Runtimes whose inline agents see their work's context (the propagator is process-wide).
_propagating: weakref.WeakSet[AgentRuntime] = weakref.WeakSet()


def _tracing(runtime: AgentRuntime) -> RuntimeTracing | None:
    """The runtime's tracing, made on first use; None while the plugin is dormant."""
    try:
        return _runtimes[runtime]
    except KeyError:
        pass
    options = requested_options(runtime.config)
    if options is None:
        try:
            require("opentelemetry.trace", EXTRA)
        except MissingExtraError:
            # Only auto-detected, never asked for: stay dormant (sentry-python's rule).
            logger.debug("opentelemetry is not installed; the otel plugin is dormant")
            _runtimes[runtime] = None
            return None
        options = OtelOptions()
    else:
        require("opentelemetry.trace", EXTRA)
    from miminions.extras.otel_spans import RuntimeTracing

    tracing = _runtimes[runtime] = RuntimeTracing(runtime, options, _providers.get(runtime))
    return tracing


@hookimpl
def miminions_configure(config: RuntimeConfig) -> None:
    """Fail the runtime's start when the ``otel`` section is invalid, or asks for the
    extra while opentelemetry is not installed."""
    if requested_options(config) is not None:
        require("opentelemetry.trace", EXTRA)


# The other hooks do nothing without opentelemetry, and some run for every piece of work
# (the trace hook on each submit and send, the event hook on each event). Every runtime
# loads this module, so without the package they are not defined at all: the runtime then
# makes no trace hook call and the event log has one listener fewer. A package hidden after
# this import (``sys.modules[name] = None``) leaves them defined and passing: dormant.
if _INSTALLED:

    @hookimpl(wrapper=True)
    @passes_through
    def miminions_make_bus(runtime: AgentRuntime) -> Generator[None, Any, Any]:
        """Wrap the chosen bus: a send span per message relayed, a receive span per take."""
        bus = yield
        tracing = _tracing(runtime)
        if bus is None or tracing is None or not tracing.options.messages:
            return bus
        from miminions.extras.otel_spans import TracedBus

        return TracedBus(bus, tracing)

    @hookimpl(wrapper=True)
    @passes_through
    def miminions_make_host(
        spec: AgentSpec, agent: object, runtime: AgentRuntime
    ) -> Generator[None, Any, Any]:
        """Wrap the chosen host: a wait and a run span around each task it runs."""
        host = yield
        tracing = _tracing(runtime)
        if host is None or tracing is None or not tracing.options.tasks:
            return host
        from miminions.extras.otel_spans import TracedHost

        return TracedHost(host, tracing)

    @hookimpl
    def miminions_trace_context(
        runtime: AgentRuntime, operation: str, count: int
    ) -> Carrier | None:
        """The carrier of work the application creates: a submit span's, or the caller's."""
        tracing = _tracing(runtime)
        return None if tracing is None else tracing.carrier_for(operation, count)

    @hookimpl
    def miminions_worker_setup(runtime: AgentRuntime) -> str | None:
        """Have agent worker processes attach their work's context (when opentelemetry is
        importable there)."""
        tracing = _tracing(runtime)
        if tracing is None or not tracing.options.agent_context:
            return None
        return WORKER_SETUP

    @hookimpl
    def miminions_event(event: Event, runtime: AgentRuntime) -> None:
        """Task outcomes end their run spans; agent lifecycle events become spans."""
        tracing = _runtimes.get(runtime)
        if tracing is not None:
            tracing.on_event(event)

    @hookimpl
    def miminions_runtime_started(runtime: AgentRuntime) -> None:
        """Let inline agents see their work's context (OpenTelemetry's current context)."""
        tracing = _tracing(runtime)
        if tracing is not None and tracing.options.agent_context:
            _propagating.add(runtime)
            install_propagator(PROPAGATOR)

    @hookimpl
    def miminions_runtime_stopped(runtime: AgentRuntime) -> None:
        """End the spans still open; the propagator goes when no runtime needs it any
        more."""
        tracing = _runtimes.get(runtime)
        if tracing is not None:
            tracing.close()
            _runtimes[runtime] = None
        _propagating.discard(runtime)
        if not _propagating:
            remove_propagator(PROPAGATOR)


__all__ = [
    "EXTRA",
    "PLUGIN_NAME",
    "OtelOptions",
    "requested_options",
    "use_tracer_provider",
]
