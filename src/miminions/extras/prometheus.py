"""The ``prometheus`` extra: Prometheus metrics of a runtime (``miminions[prometheus]``).

Registered through the ``miminions`` entry-point group under the name ``prometheus``. When
prometheus_client is installed and the plugin is not disabled (``disable=["prometheus"]``),
every runtime gets its own metrics, kept in a ``CollectorRegistry`` of its own (never the
global default registry, so several runtimes in one process never clash):

- :meth:`AgentRuntime.export_prometheus_metrics` returns them in the Prometheus text format
  (it calls :func:`~miminions.kernel.hookspecs.miminions_export_metrics`, which this plugin
  answers);
- with a port configured, ``plugin_options={"prometheus": {"port": 9464}}``, an HTTP
  endpoint serves them at ``/metrics``, bound to ``127.0.0.1`` unless ``"host"`` says
  otherwise; port 0 takes a free port, and :func:`endpoint` tells where it listens. It
  opens when the runtime has started and closes when it stops.

Counters and histograms the runtime does not keep itself are fed from its events
(``miminions_event``); everything else is read from the runtime's in-memory answers
(``get_queue_status()``, ``get_capacity()``, ``get_metrics()``, ``list_agents()``) when a
scrape asks, so a scrape never touches the database. The metric names are listed in
``docs/extras.md`` and in :mod:`miminions.extras.prometheus_collect`.

Without prometheus_client installed the plugin is dormant: it implements no hook but
``miminions_configure`` (whether the package is installed is decided once, when this module
is imported), so events cost what they cost without the plugin. If the user asked for it
with a ``plugin_options={"prometheus": {...}}`` section, starting the runtime raises
:class:`~miminions.MissingExtraError` naming ``pip install 'miminions[prometheus]'``.
Options it does not know, or bad values, are a :class:`~miminions.ConfigurationError` at
start.

Importing this module never imports prometheus_client: every runtime loads it, and it must
cost nothing when the package is absent.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import pydantic

from miminions import extras
from miminions.extras import installed, require
from miminions.kernel.errors import MissingExtraError
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.models import Event, RuntimeConfig

if TYPE_CHECKING:
    from miminions.extras.prometheus_collect import RuntimeMetrics
    from miminions.extras.prometheus_http import Endpoint, MetricsEndpoint
    from miminions.kernel.runtime import AgentRuntime

#: The plugin's name: its entry point, its ``disable=[...]`` name and its options key.
PLUGIN_NAME = "prometheus"
#: Registered under this name when passed explicitly (``plugins=[prometheus]``) too.
miminions_plugin_name = PLUGIN_NAME
#: The extra that installs prometheus_client.
EXTRA = "prometheus"
#: The exposition formats :func:`miminions_export_metrics` answers for.
FORMATS = frozenset({"prometheus", "openmetrics"})

#: Default buckets of ``miminions_task_duration_seconds``: agent tasks run from
#: milliseconds (a lookup) to many minutes (a chain of model calls).
TASK_DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0,
)  # fmt: skip
#: Default buckets of ``miminions_message_delivery_latency_seconds``: a message handed to a
#: waiting receiver takes microseconds; one waiting in a mailbox, as long as it waits.
MESSAGE_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

logger = logging.getLogger("miminions.extras.prometheus")

# Decided once, at import, without importing it.
_INSTALLED = installed("prometheus_client")

Buckets = Annotated[tuple[pydantic.PositiveFloat, ...], pydantic.Field(min_length=1)]


class PrometheusOptions(pydantic.BaseModel):
    """The ``plugin_options["prometheus"]`` section.

    ``port``: serve ``/metrics`` over HTTP on this port (0: any free port); None (the
    default) opens no endpoint. ``host``: the address to bind, ``127.0.0.1`` by default so
    nothing outside the machine can read the metrics unless asked; a name is resolved and
    its first address bound (``localhost`` may give ``::1``). ``task_duration_buckets``
    / ``message_latency_buckets``: upper bounds (seconds, increasing) of the two histograms.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    port: Annotated[int, pydantic.Field(strict=True, ge=0, le=65535)] | None = None
    host: Annotated[str, pydantic.Field(min_length=1)] = "127.0.0.1"
    task_duration_buckets: Buckets = TASK_DURATION_BUCKETS
    message_latency_buckets: Buckets = MESSAGE_LATENCY_BUCKETS

    @pydantic.field_validator("task_duration_buckets", "message_latency_buckets")
    @classmethod
    def _increasing(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if any(later <= earlier for earlier, later in itertools.pairwise(buckets)):
            raise ValueError("bucket bounds must be strictly increasing")
        return buckets


def requested_options(config: RuntimeConfig) -> PrometheusOptions | None:
    """The validated ``plugin_options["prometheus"]`` section, or None when there is none.

    :raises ConfigurationError: the section holds an unknown option or a bad value.
    """
    return extras.requested_options(config, PLUGIN_NAME, PrometheusOptions)


@dataclass(eq=False)
class _Active:
    """What the plugin keeps for one runtime while prometheus_client is available."""

    options: PrometheusOptions
    metrics: RuntimeMetrics
    endpoint: MetricsEndpoint | None = None


# One module serves every runtime of the process, so its state is kept per runtime: by id,
# and dropped by a finalizer when the runtime is garbage, so a runtime that is dropped takes
# its registry with it (and its id, once free, cannot find a stale entry). A plain dict
# because it is read for every event: half the cost of a WeakKeyDictionary lookup. None
# marks a runtime for which the plugin is dormant (prometheus_client missing), so the
# import is not retried per event.
_runtimes: dict[int, _Active | None] = {}


def _activate(runtime: AgentRuntime) -> _Active | None:
    options = requested_options(runtime.config)
    try:
        require("prometheus_client", EXTRA)
    except MissingExtraError:
        if options is not None:
            raise  # asked for explicitly: never a silent fallback
        # Only auto-detected, never asked for: stay dormant (sentry-python's rule).
        logger.debug("prometheus_client is not installed; no Prometheus metrics")
        return None
    from miminions.extras.prometheus_collect import RuntimeMetrics

    options = options or PrometheusOptions()
    return _Active(options=options, metrics=RuntimeMetrics(runtime, options))


def _state(runtime: AgentRuntime) -> _Active | None:
    key = id(runtime)
    try:
        return _runtimes[key]
    except KeyError:
        state = _activate(runtime)
        _runtimes[key] = state
        weakref.finalize(runtime, _runtimes.pop, key, None)
        return state


def metrics_of(runtime: AgentRuntime) -> RuntimeMetrics | None:
    """The runtime's :class:`~miminions.extras.prometheus_collect.RuntimeMetrics` (its
    ``registry`` is a ``prometheus_client.CollectorRegistry`` to add collectors to, or to
    serve some other way), or None when the plugin is dormant or not loaded in it."""
    if runtime.plugin_manager.get_plugin(PLUGIN_NAME) is None:
        return None  # disabled: no events would ever reach a registry made here
    state = _state(runtime)
    return None if state is None else state.metrics


def endpoint(runtime: AgentRuntime) -> Endpoint | None:
    """Where the runtime's metrics endpoint listens (``host``, ``port``, ``url``), or None
    when it has none open: no port configured, the plugin dormant or disabled, or the
    runtime not started yet or stopped."""
    state = _runtimes.get(id(runtime))
    if state is None or state.endpoint is None:
        return None
    return state.endpoint.address


# --------------------------------------------------------------------------- hooks
@hookimpl
def miminions_configure(config: RuntimeConfig) -> None:
    """Fail the runtime's start when the extra was asked for but cannot be used: its
    options are invalid, or prometheus_client is not installed."""
    if requested_options(config) is not None:
        require("prometheus_client", EXTRA)


# The other hooks do nothing without prometheus_client, and the event hook runs for every
# event. Every runtime loads this module, so without the package they are not defined at
# all: the event log has one listener fewer, and the runtime's export names the missing
# extra itself. A package hidden after this import (``sys.modules[name] = None``) leaves
# them defined and passing: dormant.
if _INSTALLED:

    @hookimpl
    def miminions_event(event: Event, runtime: AgentRuntime | None) -> None:
        """Count the event, and feed the histograms and counters it stands for."""
        if runtime is None:  # an event log built without a runtime (unit tests of the kernel)
            return
        state = _state(runtime)
        if state is not None:
            state.metrics.observe(event)

    @hookimpl
    def miminions_runtime_started(runtime: AgentRuntime) -> None:
        """Open the HTTP endpoint when a port is configured.

        :raises ConfigurationError: the address cannot be listened on (the port is taken);
            the runtime's start then fails and stops it again.
        """
        state = _state(runtime)
        if state is None or state.options.port is None:
            return
        from miminions.extras.prometheus_http import MetricsEndpoint

        state.endpoint = MetricsEndpoint.listen(
            state.options.host, state.options.port, state.metrics.render_for
        )
        logger.info(
            "Prometheus metrics of %s at %s", runtime.config.storage_path, state.endpoint.url
        )

    @hookimpl
    def miminions_runtime_stopped(runtime: AgentRuntime) -> None:
        """Close the endpoint: no socket outlives the runtime, also after a cut-short stop."""
        state = _runtimes.get(id(runtime))
        if state is not None and state.endpoint is not None:
            state.endpoint.close()
            state.endpoint = None

    @hookimpl
    def miminions_export_metrics(runtime: AgentRuntime, format: str) -> bytes | None:
        """The runtime's metrics as ``prometheus`` (text 0.0.4) or ``openmetrics`` (1.0.0)
        exposition; None (pass) for another format or while the plugin is dormant."""
        if format not in FORMATS:
            return None
        state = _state(runtime)
        if state is None:
            return None
        return state.metrics.render(format)


__all__ = [
    "EXTRA",
    "FORMATS",
    "MESSAGE_LATENCY_BUCKETS",
    "PLUGIN_NAME",
    "TASK_DURATION_BUCKETS",
    "PrometheusOptions",
    "endpoint",
    "metrics_of",
    "requested_options",
]
