"""The seams of miminions: every hook a plugin can implement.

Hooks are grouped by concern. Three kinds are used consistently:

- ``make_*`` hooks pick a mechanism. They are *firstresult*: the first implementation that
  returns something other than ``None`` wins; built-ins are registered ``trylast`` so any
  other plugin that answers is preferred.
- ``order_key`` / ``pick_agent`` decide something per task; also *firstresult*.
- ``event``, ``configure``, ``runtime_started`` and ``runtime_stopping`` notify; every
  implementation is called (*broadcast*) and return values are ignored.

Every hook is synchronous: pluggy cannot await, and an ``async def`` implementation would
return a coroutine that always "wins" a firstresult hook, so such implementations are rejected
when the plugin is registered. Async work lives in the objects a ``make_*`` hook returns.
Implementations may accept any subset of a hook's arguments, so hooks can gain arguments
without breaking plugins.
"""

from __future__ import annotations

import functools
import inspect
import types
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pluggy

if TYPE_CHECKING:
    import asyncio

    from miminions.kernel.interfaces import AgentHost, Executor, Store
    from miminions.kernel.models import (
        AgentInstance,
        AgentSpec,
        Event,
        EventType,
        RuntimeConfig,
        Severity,
        Task,
    )
    from miminions.kernel.runtime import AgentRuntime

PROJECT_NAME = "miminions"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The attribute :func:`accepts_events` sets on a ``miminions_event`` implementation.
EVENT_FILTER_ATTRIBUTE = "miminions_accepts_event"

_F = TypeVar("_F", bound=Callable[..., Any])


def accepts_events(predicate: Callable[[EventType, Severity], bool]) -> Callable[[_F], _F]:
    """Decorate a ``miminions_event`` implementation with a filter.

    Before each event the runtime calls ``predicate(event_type, severity)`` and passes the
    event on only when it returns True; when no implementation wants an event, no
    :class:`~miminions.Event` is built for it at all. Every task makes three routine events,
    so a monitor that cares only about some (warnings, one type) should say so: the
    built-in logging monitor takes only what its logger is enabled for. The predicate is
    asked anew for each event, so it may follow settings that change (a log level); it
    must be cheap, and one that raises counts as a failure of its monitor (logged, the
    event not passed on). The implementation must take the ``event`` argument.

    The decorated function checks the filter itself too, so the filter holds however the
    implementation is called (pluggy calls every implementation with every event while
    another plugin wraps the hook); the runtime asks the predicate once per event either way.
    """

    def decorate(function: _F) -> _F:
        try:
            position = list(inspect.signature(function).parameters).index("event")
        except ValueError:
            raise TypeError(
                f"{function.__qualname__} takes no 'event' argument, so it has nothing to "
                "filter: accepts_events is for miminions_event implementations"
            ) from None

        @functools.wraps(function)
        def filtered(*args: Any, **kwargs: Any) -> Any:
            event = kwargs["event"] if "event" in kwargs else args[position]
            if predicate(event.event_type, event.severity):
                return function(*args, **kwargs)
            return None

        setattr(filtered, EVENT_FILTER_ATTRIBUTE, predicate)
        _FILTER_WRAPPERS.add(filtered)
        return cast(_F, filtered)

    return decorate


#: The wrappers :func:`accepts_events` made. The filter attribute alone does not tell one:
#: a decorator of the user's own over it, written with ``functools.wraps``, copies it.
_FILTER_WRAPPERS: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def event_filter(function: Callable[..., Any]) -> Callable[[EventType, Severity], bool] | None:
    """The predicate of an implementation that is :func:`accepts_events`' own wrapper
    (bound or not), else None: anything else around it is called whole, and the filter
    inside still checks itself."""
    raw = function.__func__ if inspect.ismethod(function) else function
    if raw not in _FILTER_WRAPPERS:
        return None
    return cast("Callable[[EventType, Severity], bool]", getattr(raw, EVENT_FILTER_ATTRIBUTE))


#: Set by :func:`passes_through`.
PASSES_THROUGH_ATTRIBUTE = "miminions_passes_through"


def passes_through(function: _F) -> _F:
    """Mark a ``wrapper=True`` implementation of a ``make_*`` hook that only wraps what
    another plugin provides (it answers None when nothing was): the runtime does not count
    it as a provider when it checks, at creation, that something provides each essential
    hook. A wrapper without the mark may provide the answer itself and counts."""
    setattr(function, PASSES_THROUGH_ATTRIBUTE, True)
    return function


def unfiltered(function: Callable[..., Any]) -> Callable[..., Any]:
    """The implementation behind an :func:`accepts_events` filter (bound like ``function``),
    for a caller that has asked its predicate (:func:`event_filter`) already; ``function``
    itself when it is not such a filter."""
    if event_filter(function) is None:
        return function
    inner: Callable[..., Any] = function.__wrapped__  # type: ignore[attr-defined]
    if inspect.ismethod(function):
        return types.MethodType(inner, function.__self__)
    return inner


# --------------------------------------------------------------------------- configuration
@hookspec
def miminions_configure(config: RuntimeConfig) -> None:
    """Read or adjust the runtime configuration before anything is built.

    :param config: the runtime's configuration; plugins find their own settings in
        ``config.plugin_options[<plugin name>]``.

    Called once per runtime, before the store and executor are made. Broadcast: every
    implementation is called; return values are ignored.
    """


# --------------------------------------------------------------------------- scheduling
@hookspec(firstresult=True)
def miminions_loop_factory(config: RuntimeConfig) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return a factory for the event loop that runs a runtime, or None to pass.

    :param config: the runtime configuration.

    Used by :func:`miminions.run` and the ``miminions`` command (an ``AgentRuntime``
    always runs on the loop it was started in), and once per runtime by the ``process`` host,
    whose workers run on the answer: they get its import path, so only a module-level
    callable reaches them. Firstresult: the first non-None answer wins; without one, the
    standard asyncio loop is used.
    """


@hookspec(firstresult=True)
def miminions_make_executor(runtime: AgentRuntime) -> Executor | None:
    """Return the executor that dispatches and runs tasks, or None to pass.

    :param runtime: the runtime the executor serves.

    The executor owns the dispatch loop, task timeouts, retries with backoff and
    cancellation (see :class:`miminions.kernel.interfaces.Executor`). Firstresult: the first
    non-None answer wins; the built-in ``asyncio_executor`` answers last.
    """


@hookspec(firstresult=True)
def miminions_order_key(priority: int, ready_at: float, config: RuntimeConfig) -> float | None:
    """Return the order key of a task that just became ready, or None to pass.

    :param priority: the task's priority after inheritance (the most urgent of its own and
        that of every task waiting for it), 0..100.
    :param ready_at: the monotonic time at which it became ready.
    :param config: the runtime configuration.

    Smaller keys run first; ties keep submission order. Called whenever a task becomes ready
    or its inherited priority changes, so keep it cheap and pure. Firstresult: the first
    non-None answer wins; the built-in ``priority_scheduling`` plugin answers with aged
    priority (``priority * config.aging_seconds_per_level + ready_at``).
    """


@hookspec(firstresult=True)
def miminions_pick_agent(task: Task, candidates: Sequence[AgentInstance]) -> str | None:
    """Choose which idle agent runs ``task``: return its ``agent_id``, or None to pass.

    :param task: the task about to be dispatched (a copy: changing it changes nothing).
    :param candidates: idle agents allowed to run it (its target agent or group, or any),
        in the order they became idle, except that for a task any agent may run those a
        waiting targeted task needs come last; never empty (copies too).

    Returning an id that is not among the candidates is an error. Firstresult: the first
    non-None answer wins; the built-in ``priority_scheduling`` plugin picks the first
    candidate.
    """


@hookspec(firstresult=True)
def miminions_machine_load() -> float | None:
    """Return the machine's current load per CPU (1.0 = every CPU busy), or None to pass.

    While it is above ``ResourceLimits.max_load_per_cpu``, agent starts wait (status
    ``queued`` with the reason) and are re-checked every second (F-08). Firstresult: the
    built-in ``process_host`` plugin answers with the 1-minute load average divided by the
    usable CPUs; a plugin can answer from another source (a cgroup, a test). An
    implementation that raises counts as "load unknown": logged, and starts are not held.
    """


# --------------------------------------------------------------------------- isolation
@hookspec(firstresult=True)
def miminions_make_host(spec: AgentSpec, agent: Any, runtime: AgentRuntime) -> AgentHost | None:
    """Return the host that runs one agent, or None if this plugin does not serve
    ``spec.isolation``.

    :param spec: how the agent was registered (``spec.isolation`` names the mode, e.g.
        ``"inline"`` or ``"process"``; ``spec.target`` is its import path when it has one).
    :param agent: what was registered: a class, an instance, or an async function.
    :param runtime: the runtime that will drive the host.

    Firstresult: the first non-None answer wins; a runtime with no answer for an isolation
    mode rejects the registration naming the plugins it asked.
    """


# --------------------------------------------------------------------------- messaging
@hookspec(firstresult=True)
def miminions_make_bus(runtime: AgentRuntime) -> Any | None:
    """Return the message bus agents use to talk to each other, or None to pass.

    :param runtime: the runtime the bus serves.

    The bus delivers direct, multicast, broadcast and topic messages to per-agent mailboxes
    and matches request/response pairs by correlation id. Firstresult: the first non-None
    answer wins.
    """


# --------------------------------------------------------------------------- storage
@hookspec(firstresult=True)
def miminions_make_store(config: RuntimeConfig) -> Store | None:
    """Return the durable store for tasks, agents, events and dead letters, or None to pass.

    :param config: the runtime configuration (``config.storage_path`` for file stores).

    The store must group-commit writes (see :class:`miminions.kernel.interfaces.Store`).
    Firstresult: the first non-None answer wins; the built-in ``sqlite_store`` answers last.
    """


# --------------------------------------------------------------------------- tracing
@hookspec(firstresult=True)
def miminions_trace_context(
    runtime: AgentRuntime, operation: str, count: int
) -> dict[str, str] | None:
    """Return the trace carrier for work the application is creating now, or None to pass.

    :param runtime: the runtime the work is created in.
    :param operation: what is being created: ``"submit"`` (``submit_task`` /
        ``submit_tasks``: one call per batch) or a message from ``rt.send_message``
        (``"send"``), ``rt.send_to_group``, ``rt.broadcast``, ``rt.publish`` or
        ``rt.request`` (the method's name).
    :param count: how many requests the call holds: a ``submit_tasks`` batch's size, 1
        for everything else.

    A carrier is a small dict of text headers (e.g. W3C ``traceparent``) naming the
    caller's current trace, or a span the plugin starts for the operation. The kernel
    stores it on the new tasks or messages, hands it to the agent with them and never
    reads it (see :mod:`miminions.kernel.tracing`). Called only when some plugin implements
    it, on the runtime's loop, in the caller's context; keep it cheap (``submit_task`` is a
    hot path). Firstresult: the first non-None answer wins. Built-in: none; the ``otel``
    extra answers.
    """


@hookspec
def miminions_worker_setup(spec: AgentSpec, runtime: AgentRuntime) -> str | None:
    """Name a function a worker process calls before it builds the agent, or return None.

    :param spec: the agent whose worker process is starting.
    :param runtime: the runtime that starts it.

    Return the function's import path, ``"module:qualname"``. A worker is a separate
    process with no plugin manager, so this is how a plugin prepares it (e.g. installs a
    :class:`~miminions.kernel.tracing.TracePropagator`); the function is called with no
    arguments, in the worker, before the agent is imported, and an error it raises fails
    the agent's start. Called on every start of a ``process`` agent. Broadcast: every
    non-None answer is called, in hook order. Built-in: none; the ``otel`` extra answers.
    """


# --------------------------------------------------------------------------- monitoring
@hookspec
def miminions_event(event: Event, runtime: AgentRuntime) -> None:
    """Observe one event of the runtime's event log.

    :param event: the event, already queued for the store (its ``event_id`` is assigned when
        it is committed and may still be None here).
    :param runtime: the runtime that emitted it (one plugin module may serve several
        runtimes in a process; an implementation may leave this argument out).

    Called synchronously on the runtime's loop for each event it takes (every event, unless
    an :func:`accepts_events` filter says otherwise), so return quickly and never block;
    hand slow work to a thread or queue. Errors raised here are logged and ignored.
    Broadcast: every implementation is called.
    """


@hookspec
def miminions_runtime_started(runtime: AgentRuntime) -> None:
    """The runtime has started: storage is open, recovery is done, dispatch is running.

    :param runtime: the runtime that started.

    A good place to start servers (metrics endpoints) or tracing providers. Broadcast.
    """


@hookspec
def miminions_runtime_stopping(runtime: AgentRuntime) -> None:
    """The runtime is about to stop: release what ``runtime_started`` acquired.

    :param runtime: the runtime that is stopping.

    Called before agents are stopped and the store is closed. Broadcast.
    """


@hookspec
def miminions_runtime_stopped(runtime: AgentRuntime) -> None:
    """The runtime has stopped: agents are stopped and the store is closed.

    :param runtime: the runtime that stopped.

    Also called when the stop was cut short (cancelled, interrupted): the place to make
    sure nothing a plugin started (a process, a thread, a server) outlives the runtime.
    Must not block. Broadcast.
    """


@hookspec(firstresult=True)
def miminions_export_metrics(runtime: AgentRuntime, format: str) -> bytes | None:
    """Render the runtime's metrics in an exposition ``format``, or return None to pass.

    :param runtime: the runtime whose metrics are asked for (started; possibly stopped).
    :param format: the exposition format: ``"prometheus"`` (the Prometheus text format
        0.0.4) or ``"openmetrics"`` (OpenMetrics 1.0.0); pass on a format you do not know.

    Called by :meth:`AgentRuntime.export_prometheus_metrics` (``format="prometheus"``), on
    the runtime's loop; read in-memory state only. Firstresult: the first non-None answer
    wins. Built-in: none; the ``prometheus`` extra answers.
    """
