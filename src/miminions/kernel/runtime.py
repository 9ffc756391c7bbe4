"""``AgentRuntime``: the façade users hold.

It wires the plugins (store, executor, hosts, monitors), owns start, stop and crash
recovery, and answers status queries from memory. The rules live in the scheduler, the task
book and the agent book; this module connects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import pydantic

from miminions.kernel import queries
from miminions.kernel.agent import (
    AgentContext,
    ContextChannel,
    check_not_loading_main_in_worker,
    classify_agent,
)
from miminions.kernel.communication import CommunicationAPI
from miminions.kernel.errors import (
    PLUGIN_ERRORS,
    ConfigurationError,
    InvalidStateError,
    MiminionsError,
    MissingExtraError,
    PluginError,
    RuntimeNotRunningError,
    ValidationError,
    shown,
)
from miminions.kernel.events import EventLog
from miminions.kernel.export import EXPORT_FORMATS, is_database_file, write_events
from miminions.kernel.hookspecs import PASSES_THROUGH_ATTRIBUTE
from miminions.kernel.interfaces import AgentHost, Bus, Executor, Store, at_once_arguments
from miminions.kernel.jsonutil import copy_json
from miminions.kernel.kv import KVCalls, KVStore
from miminions.kernel.lifecycle import AgentBook, AgentSlot
from miminions.kernel.messaging import Messenger
from miminions.kernel.models import (
    AgentInstance,
    AgentSpec,
    AgentStatus,
    Capacity,
    DeadLetter,
    Event,
    EventType,
    JSONObject,
    Metrics,
    QueueStatus,
    ResourceLimits,
    RuntimeConfig,
    Severity,
    Task,
    TaskExplanation,
    TaskStatus,
    check_storage_path,
    fast_construct,
    task_snapshot,
)
from miminions.kernel.ownership import (
    RUN_META_KEY,
    claim,
    live_owner,
    refuse_live_owner,
    release,
    running_record,
    stopped_record,
    unclean,
)
from miminions.kernel.plugins import (
    PluginManager,
    build_plugin_manager,
    first_result,
    installed,
    refuse_coroutines,
)
from miminions.kernel.scheduler import Scheduler
from miminions.kernel.task_book import TaskBook
from miminions.kernel.task_input import TaskRequest, describe_error
from miminions.kernel.tracing import Carrier
from miminions.kernel.usage import UsageBook
from miminions.kernel.validation import (
    build_event_query,
    check_flag,
    check_limit,
    check_name,
    check_seconds,
    escape_non_utf8,
    parse_enum,
)

_T = TypeVar("_T")
_log = logging.getLogger("miminions.runtime")

QUEUE_PAUSED_KEY = "queue.paused"
#: How long a stop waits for background work it cancelled (see run_in_background) to end.
BACKGROUND_CANCEL_GRACE_SECONDS = 2.0
_BUILTIN_SCHEDULING = "priority_scheduling"
_EVENT_FILTERS = frozenset(
    {
        "event_type",
        "agent_id",
        "task_id",
        "severity",
        "since",
        "until",
        "limit",
        "newest",
        "after_id",
    }
)
#: The mark of the :meth:`AgentRuntime.run_in_background` work this code runs in, if any.
_BACKGROUND_WORK: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "miminions_background_work", default=None
)

_ESSENTIAL_HOOKS = {
    "miminions_make_store": "a store",
    "miminions_make_bus": "a message bus",
    "miminions_make_executor": "an executor",
    "miminions_make_host": "an agent host",
}


class AgentRuntime(CommunicationAPI):
    """Runs agents and their tasks on one machine (see the package docs for a tour).

    Use it as an async context manager (``async with AgentRuntime(...) as rt``) or call
    :meth:`start` and :meth:`stop`. Status queries (``get_*``, ``list_*``, ``explain``)
    are synchronous and answered from memory; everything that changes state is async and
    returns once the change is durable.
    """

    def __init__(
        self,
        storage_path: str | os.PathLike[str] | None = None,
        *,
        limits: ResourceLimits | None = None,
        plugins: Sequence[object] = (),
        disable: Sequence[str] = (),
        config: RuntimeConfig | None = None,
    ) -> None:
        if config is not None and not isinstance(config, RuntimeConfig):
            raise ConfigurationError("config must be a miminions.RuntimeConfig")
        if limits is not None and not isinstance(limits, ResourceLimits):
            raise ConfigurationError("limits must be a miminions.ResourceLimits")
        base = config or RuntimeConfig()
        updates: dict[str, Any] = {}
        if storage_path is not None:
            try:
                updates["storage_path"] = check_storage_path(storage_path)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
        if limits is not None:
            updates["limits"] = limits.model_copy(deep=True)
        # The runtime's own copy, nested parts too: miminions_configure may adjust it, and
        # that must not reach the caller's object (nor the next runtime built from it).
        self.config = base.model_copy(update=updates, deep=True)
        self.plugin_manager: PluginManager = build_plugin_manager(plugins, disable)
        for hook_name, what in _ESSENTIAL_HOOKS.items():
            impls = getattr(self.plugin_manager.hook, hook_name).get_hookimpls()
            # an old-style hookwrapper cannot answer; a wrapper marked as passing through
            # (the otel extra's, around hosts and buses) provides nothing itself
            if not any(
                not impl.hookwrapper and not getattr(impl.function, PASSES_THROUGH_ATTRIBUTE, False)
                for impl in impls
            ):
                raise PluginError(
                    f"no plugin left provides {what} ({hook_name}) after disable={list(disable)}; "
                    "keep the built-in enabled or pass a plugin that implements it"
                )
        self._state: Literal["new", "starting", "running", "stopping", "stopped"] = "new"
        self._queue_paused = False
        self._started_mono = 0.0
        self._starting: asyncio.Future[None] | None = None  # done once start() ended
        self._previous_run: Any = None  # the run record found at the start
        self._run_recorded = False  # this start wrote its run record
        self._store: Store | None = None
        self._executor: Executor | None = None
        self._events: EventLog | None = None
        self._scheduler: Scheduler | None = None
        self._task_book: TaskBook | None = None
        self._agent_book: AgentBook | None = None
        self.recovery: dict[str, Any] | None = None
        self.usage = UsageBook(group_budgets=dict(self.config.group_budgets))
        self.messenger = Messenger(self)
        self._kv: KVStore | None = None
        self._kv_calls: KVCalls | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._plugin_work: dict[asyncio.Future[Any], object] = {}  # run_in_background's
        self._claim = ""
        self._stopped: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it was started on
        # Asked where the application creates work; most runtimes have no tracing plugin,
        # and then submit and send do not pay for a hook call.
        trace_hook = self.plugin_manager.hook.miminions_trace_context
        self._trace_hook = trace_hook if trace_hook.get_hookimpls() else None

    # ------------------------------------------------------------------ plumbing for plugins
    @property
    def scheduler(self) -> Scheduler:
        """The pure scheduler (for executor plugins)."""
        return _need(self._scheduler)

    @property
    def task_book(self) -> TaskBook:
        """The task book (for executor and host plugins)."""
        return _need(self._task_book)

    @property
    def agent_book(self) -> AgentBook:
        """The agent book (for executor plugins)."""
        return _need(self._agent_book)

    @property
    def store(self) -> Store:
        """The store the runtime writes to."""
        return _need(self._store)

    @property
    def executor(self) -> Executor:
        """The executor that runs tasks."""
        return _need(self._executor)

    @property
    def events(self) -> EventLog:
        """The event log front door (``emit``) for plugins that record events."""
        return _need(self._events)

    @property
    def queue_paused(self) -> bool:
        """True while :meth:`pause_queue` holds the queue."""
        return self._queue_paused

    @property
    def is_running(self) -> bool:
        """True between a completed :meth:`start` and the beginning of :meth:`stop`."""
        return self._state == "running"

    def custom_hook(self, hook_name: str) -> bool:
        """True when a plugin other than the built-in policy implements ``hook_name``."""
        hook = getattr(self.plugin_manager.hook, hook_name)
        return any(impl.plugin_name != _BUILTIN_SCHEDULING for impl in hook.get_hookimpls())

    def make_context(self, spec: AgentSpec, channel: ContextChannel) -> AgentContext:
        """Build the :class:`AgentContext` an agent sees (for host plugins)."""
        return AgentContext(
            agent_id=spec.agent_id,
            name=spec.name,
            group=spec.group,
            config=spec.config,
            channel=channel,
        )

    def run_in_background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """For plugins: run ``work`` (a coroutine) as a task the runtime's stop waits for
        (within the shutdown timeout, then cancelled) before it closes the store, so work a
        plugin begins in ``miminions_runtime_started`` may use the store to its end. Its
        errors are logged; the returned future may be awaited too."""
        # The work's context carries its mark, and so does any task it starts (a stop it
        # calls through asyncio.wait_for runs in one): the stop then leaves it out.
        mark = object()
        context = contextvars.copy_context()
        context.run(_BACKGROUND_WORK.set, mark)
        future = asyncio.get_running_loop().create_task(work, context=context)
        self._plugin_work[future] = mark
        future.add_done_callback(self._plugin_work_done)
        return future

    def _plugin_work_done(self, future: asyncio.Future[Any]) -> None:
        self._plugin_work.pop(future, None)
        if not future.cancelled() and future.exception() is not None:
            _log.error("background work of a plugin failed", exc_info=future.exception())

    async def _settle_background(self, timeout_seconds: float) -> None:
        """Wait for the work given to :meth:`run_in_background`; cancel what is left (all
        of it when this wait is cancelled: the store closes next). Not the work this stop
        runs in, if a plugin's background work stops the runtime."""
        mine = _BACKGROUND_WORK.get()
        work = [future for future, mark in self._plugin_work.items() if mark is not mine]
        if not work:
            return
        late: set[asyncio.Future[Any]] = set(work)
        try:
            _, late = await asyncio.wait(work, timeout=timeout_seconds)
        finally:
            for future in late:
                future.cancel()
            if late:
                # Bounded too: work whose cancel clean-up does not end must not hold the
                # stop up for good.
                _, stuck = await asyncio.wait(late, timeout=BACKGROUND_CANCEL_GRACE_SECONDS)
                if stuck:
                    _log.warning(
                        "%d piece(s) of background work did not end within %s s of being "
                        "cancelled at the stop; left running",
                        len(stuck),
                        BACKGROUND_CANCEL_GRACE_SECONDS,
                    )

    def report_host_failure(
        self, agent_id: str, reason: str, details: JSONObject | None = None
    ) -> None:
        """For host plugins: the agent died on its own (its process exited, hung or broke a
        limit). It is failed and restarted per ``config.restart`` (see
        :class:`~miminions.RestartPolicy`); ``details`` go into the AGENT_FAILED event."""
        self.agent_book.host_failed(agent_id, reason, details)

    def report_task_halted(self, agent_id: str, task_id: str) -> None:
        """For host plugins: during a pause, the agent's running task ``task_id`` halted at
        a safe point. Its timeout stops counting from then (F-25) instead of from when
        ``on_pause`` returns; a host that does not report it only loses that refinement."""
        self.agent_book.task_halted(agent_id, task_id)

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> AgentRuntime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open storage, recover what an earlier run left, and begin dispatching."""
        check_not_loading_main_in_worker()
        if self._state != "new":
            raise InvalidStateError(
                f"this runtime is {self._state}; a runtime starts once — create a new "
                "AgentRuntime on the same storage_path to continue its work"
            )
        self._state = "starting"
        self._loop = asyncio.get_running_loop()
        starting = self._starting = self._loop.create_future()
        try:
            try:
                await self._start()
            except BaseException:
                await self._abort_start()
                raise
            self._state = "running"
        finally:
            starting.set_result(None)  # a stop asked meanwhile goes ahead now
        try:
            refuse_coroutines(
                self.plugin_manager.hook.miminions_runtime_started(runtime=self),
                "miminions_runtime_started",
            )
        except BaseException as failure:
            try:
                await self.stop()  # a half-started runtime must not be left running
            except Exception as cleanup:  # the start's error is the one to report
                _log.error("stopping after miminions_runtime_started failed", exc_info=cleanup)
                failure.add_note(f"stopping the runtime afterwards failed too: {cleanup!r}")
            raise

    async def _start(self) -> None:
        config = self.config
        pm = self.plugin_manager
        refuse_coroutines(pm.hook.miminions_configure(config=config), "miminions_configure")
        try:  # as configure left it (model attributes are set without validation)
            config.storage_path = check_storage_path(config.storage_path)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        _revalidate(config)
        # The database as configure left it: one runtime per database in this process.
        self._claim = claim(config.storage_path)
        self.usage.group_budgets = dict(config.group_budgets)  # as configure left them
        store: Store = first_result(pm, "miminions_make_store", "a store", Store, config=config)
        self._store = store
        await store.open()
        events = self._events = EventLog(
            store, pm, runtime=self, record_task_events=config.record_task_events
        )
        order_key = None
        if self.custom_hook("miminions_order_key"):
            order_key = _guarded_order_key(pm, config)
        self._scheduler = Scheduler(
            aging_seconds=config.aging_seconds_per_level,
            max_waiting=config.limits.max_task_queue_size,
            clock=time.monotonic,
            order_key=order_key,
        )
        self._agent_book = AgentBook(
            store=store,
            events=events,
            limits=config.limits,
            make_host=self._make_host,
            start_timeout=config.agent_start_timeout_seconds,
            restart_policy=config.restart,
            machine_load=self.plugin_manager.hook.miminions_machine_load,
        )
        self._task_book = TaskBook(
            scheduler=self._scheduler,
            store=store,
            events=events,
            backoff_base=config.retry_backoff_base_seconds,
            backoff_max=config.retry_backoff_max_seconds,
            default_timeout=config.limits.task_timeout_seconds,
            agent_exists=self._agent_book.slots.__contains__,
        )
        # Read, check, then write the run record: not atomic across processes by itself. A
        # store holding its database exclusively (the built-in one takes an OS lock in
        # open()) settles it: its record's pid, if alive, is another process by now (pids
        # are reused). For other stores the record is the only guard. It also says whether
        # the last run crashed.
        previous = self._previous_run = await store.get_meta(RUN_META_KEY)
        if getattr(store, "exclusive", False) is not True:
            refuse_live_owner(previous, config.storage_path)
        self._queue_paused = bool(await store.get_meta(QUEUE_PAUSED_KEY))
        self._agent_book.restore(await store.load_agents())
        report = self._task_book.restore(await store.load_tasks(), await store.load_dead_letters())
        self._started_mono = time.monotonic()
        store.put_meta(RUN_META_KEY, running_record())
        self._run_recorded = True
        events.emit(
            EventType.RUNTIME_STARTED,
            # (A path that is not UTF-8 would make the event unstorable: its bytes escaped.)
            details={"pid": os.getpid(), "storage_path": escape_non_utf8(config.storage_path)},
        )
        crashed = unclean(previous)
        if crashed or report["requeued"] or report["unstarted"] or report["failed"]:
            self.recovery = {
                "previous_pid": previous.get("pid") if isinstance(previous, dict) else None,
                "clean_shutdown": not crashed,
                "tasks_restored": report["restored"],
                "tasks_requeued": report["requeued"],
                "tasks_unstarted": report["unstarted"],
                "tasks_failed": report["failed"],
            }
            events.emit(
                EventType.RUNTIME_RECOVERED,
                severity=Severity.WARNING if crashed else Severity.INFO,
                details=self.recovery,
            )
        self.messenger.attach(
            first_result(pm, "miminions_make_bus", "a message bus", Bus, runtime=self)
        )
        await self.messenger.load()
        kv = self._kv = KVStore(store, self._require_own_loop)
        await kv.load()
        self._kv_calls = KVCalls(kv)
        self._agent_book.paused_listener = self._agent_paused
        self._agent_book.ended_listener = self._kv_calls.close_agent
        self._agent_book.running_listener = self._agent_running
        executor: Executor = first_result(
            pm, "miminions_make_executor", "an executor", Executor, runtime=self
        )
        self._executor = executor
        self._task_book.executor = executor
        self._agent_book.executor = executor
        if self._queue_paused:
            executor.pause_clocks(None)
        await executor.start()
        await store.flush()

    async def _abort_start(self) -> None:
        self._state = "stopped"
        release(self._claim)
        steps = _Cleanup("aborting the start")
        if self._executor is not None:
            await steps.wait(self._executor.close)
        # What the start made goes as a stop would take it down (a bus may hold timers or
        # a connection; no miminions_runtime_stopped follows a failed start).
        if self._task_book is not None:
            steps.call(self._task_book.close)
        if self.messenger._bus is not None:
            steps.call(self.messenger.bus.close)
        if self._kv is not None:
            steps.call(self._kv.close)
        if self._store is not None:
            if self._run_recorded:
                # Nothing ran: the next runtime must not report this start as a crash.
                # A crash before it stays on record (its recovery was not reported yet).
                previous = self._previous_run
                record = previous if unclean(previous) else stopped_record()
                steps.call(self._store.put_meta, RUN_META_KEY, record)
            await steps.wait(self._store.close)
        steps.log_all()  # the start error is the one to report

    async def stop(self, timeout_seconds: float | None = None, graceful: bool = True) -> None:
        """Shut down (F-14). Graceful: running tasks get ``timeout_seconds`` (default
        ``config.shutdown_timeout_seconds``) to finish, the rest are re-queued with their
        checkpoints; agents run ``on_stop`` and their workers exit (SIGTERM, then SIGKILL
        after the grace period). Not graceful: running tasks are re-queued and workers
        killed at once. Paused agents stay paused in the store; storage closes. Calling
        stop again waits for the first call to finish; a stop called while the runtime
        starts waits for the start to end, then stops it; on a runtime that never started
        it does nothing."""
        if self._state not in ("new", "stopped"):  # a stopped one: nothing to do, anywhere
            if self._loop is not None and self._loop.is_closed():
                self._abandon_after_loop_end()
                return
            self._require_own_loop()
        starting = self._starting
        if starting is not None and not starting.done():
            await asyncio.shield(starting)
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        if self._state != "running":
            return
        check_flag(graceful, "graceful")
        if timeout_seconds is None:
            timeout_seconds = self.config.shutdown_timeout_seconds
        timeout = check_seconds(timeout_seconds, allow_none=False) or 0.0
        self._state = "stopping"
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            await self._stop(timeout if graceful else 0.0, graceful)
        finally:
            self._stopped.set_result(None)

    async def _stop(self, timeout_seconds: float, graceful: bool = True) -> None:
        """The shutdown steps, in order. Each runs even when one before it raised (a broken
        executor or plugin must not leave the store open, the database claimed or another
        plugin's server running); the first error is raised once all ran (see
        :class:`_Cleanup`). Only a cancellation skips the steps that wait for agents."""
        pm = self.plugin_manager
        executor, store, events = self.executor, self.store, self.events
        steps = _Cleanup("stopping the runtime")
        steps.hook_errors(pm.call_each("miminions_runtime_stopping", runtime=self))
        steps.call(self.task_book.finish_booking)  # an accepted batch is booked in full
        steps.call(self.agent_book.request_stop_all)
        interrupted: list[str] = []
        if not steps.cut_short:
            at_once = {} if graceful else at_once_arguments(executor.drain)
            interrupted = await steps.wait(executor.drain, timeout_seconds, **at_once) or []
        if not steps.cut_short:
            await steps.wait(self.agent_book.stop_all, timeout_seconds, graceful=graceful)
        # An executor may say which runs its close gave back (a stop cut short skips drain).
        closed = await steps.wait(executor.close)
        interrupted += [task_id for task_id in closed or () if task_id not in interrupted]
        if steps.cut_short:
            steps.call(self.agent_book.abandon_all)
        await steps.wait(self._settle_background, timeout_seconds)  # before the store closes
        steps.call(self.task_book.close)
        if self.messenger._bus is not None:
            steps.call(self.messenger.bus.close)
        if self._kv is not None:
            steps.call(self._kv.close)
        steps.call(
            events.emit, EventType.RUNTIME_STOPPED, details={"tasks_requeued": len(interrupted)}
        )
        steps.call(
            store.put_meta,
            RUN_META_KEY,
            stopped_record(),
        )
        self._state = "stopped"
        await steps.wait(store.close)
        release(self._claim)
        steps.hook_errors(pm.call_each("miminions_runtime_stopped", runtime=self))
        steps.raise_first()

    def _abandon_after_loop_end(self) -> None:
        """``stop()`` of a runtime whose event loop ended without stopping it: nothing of it
        can run any more, but the database must not stay claimed and locked for the rest of
        the process. Released as a crash would leave it: the next start recovers its work
        (what was not committed yet is lost). Worker processes are killed."""
        _log.warning(
            "the event loop runtime %r was started on ended without stopping it; releasing "
            "its database now (writes not committed are lost; the next start recovers)",
            self.config.storage_path,
        )
        self._state = "stopped"
        release(self._claim)
        for part in (self._store, self._executor):
            abandon = getattr(part, "abandon", None)  # optional for a store, an executor
            if callable(abandon):
                with contextlib.suppress(Exception):
                    abandon()
        for name, error in self.plugin_manager.call_each("miminions_runtime_stopped", runtime=self):
            _log.error("plugin %r failed to clean up: %r", name, error)

    def _require_running(self) -> None:
        if self._state != "running":
            hint = (
                "await rt.start() or use 'async with AgentRuntime(...)'"
                if self._state == "new"
                else "create a new AgentRuntime"
            )
            raise RuntimeNotRunningError(f"the runtime is {self._state}; {hint}")
        self._require_own_loop()

    def _require_own_loop(self) -> None:
        """Refuse a call from another event loop (or thread) than the one the runtime was
        started on, before it changes anything: the runtime's futures, timers and store
        belong to that loop, and a call from elsewhere would hang or half happen."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        own = self._loop
        if current is own or own is None:
            return
        if own.is_closed():
            raise InvalidStateError(
                "this runtime was started on an event loop that has ended (two asyncio.run "
                "calls?): start, use and stop a runtime within one event loop, e.g. in one "
                "asyncio.run(main()) with 'async with AgentRuntime(...)' inside"
            )
        raise InvalidStateError(
            "this runtime runs on another event loop (the one that started it): call it "
            "there; from another thread, use asyncio.run_coroutine_threadsafe(rt.<call>, "
            "that loop)"
        )

    def _make_host(self, spec: AgentSpec, agent: object) -> AgentHost:
        host: AgentHost = first_result(
            self.plugin_manager,
            "miminions_make_host",
            f"a host for isolation {spec.isolation!r}",
            AgentHost,
            spec=spec,
            agent=agent,
            runtime=self,
        )
        return host

    # ------------------------------------------------------------------ agents
    async def register_agent(
        self,
        name: str,
        agent: object,
        config: JSONObject | None = None,
        group: str | None = None,
        isolation: str | None = None,
        limits: ResourceLimits | None = None,
        topics: Sequence[str] | None = None,
    ) -> str:
        """Register an agent class, agent object or function under a unique ``name``.

        Returns the agent id. Registering a name an earlier run on the same database knew
        gives back the same id, and a paused agent comes back paused with its state.
        ``topics`` (and a ``topics`` attribute of the agent) subscribe it to those topics.
        """
        self._require_running()
        kind, target = classify_agent(agent)
        declared: list[Any] = []
        for given, where in (
            (getattr(agent, "topics", None), "the agent's topics"),
            (topics, "topics"),
        ):
            if isinstance(given, str | bytes):  # list("prices") would be six one-letter topics
                raise ValidationError(
                    f"{where} must be a list of topic names, got the string {given!r}; "
                    f"write [{given!r}]"
                )
            if given is None:
                continue
            try:
                declared += list(given)
            except TypeError:
                raise ValidationError(
                    f"{where} must be a list of topic names, got {type(given).__name__}"
                ) from None
        for topic in declared:
            check_name(topic, "topic")  # before registering: the bus would refuse it after
        return await self.agent_book.register(
            name,
            agent,
            kind=kind,
            target=target,
            config=config,
            group=group,
            isolation=self.config.default_isolation if isolation is None else isolation,
            limits=limits,
            # Its mailbox opens with it, not after its record's commit: a register_agent
            # cancelled or refused by the store there left an agent that had none.
            added=partial(self._open_mailbox, topics=declared),
        )

    def _open_mailbox(self, agent_id: str, topics: list[str]) -> None:
        self.messenger.agent_registered(agent_id, topics)
        if self.agent_book.get(agent_id).status is AgentStatus.PAUSED:
            self.messenger.bus.freeze(agent_id)  # came back paused: its TTLs wait too

    async def start_agent(self, agent_id: str) -> AgentInstance:
        """Start an agent (``on_start`` runs); queued while every agent slot is in use."""
        self._require_running()
        return await self.agent_book.start(agent_id)

    async def pause_agent(
        self, agent_id: str, timeout_seconds: float | None = None
    ) -> AgentInstance:
        """Pause an agent; returns once it reached a safe point and its state is stored."""
        self._require_running()
        return await self.agent_book.pause(agent_id, timeout_seconds)

    async def resume_agent(self, agent_id: str) -> AgentInstance:
        """Resume a paused agent with the state its ``on_pause`` returned."""
        self._require_running()
        return await self.agent_book.resume(agent_id)

    async def stop_agent(
        self, agent_id: str, graceful: bool = True, timeout_seconds: float = 5.0
    ) -> AgentInstance:
        """Stop an agent: graceful lets its task finish within ``timeout_seconds``."""
        self._require_running()
        check_flag(graceful, "graceful")
        return await self.agent_book.stop(
            agent_id, graceful=graceful, timeout_seconds=timeout_seconds
        )

    # Group calls (see _group_call): each waits for every member it acted on, and raises
    # one error naming every member that failed (see _group_error).
    async def start_group(self, group: str) -> list[AgentInstance]:
        """Start every agent of ``group`` that is registered, stopped or failed."""
        return await self._group_call(
            "start_group",
            group,
            self.start_agent,
            _with_status(AgentStatus.REGISTERED, AgentStatus.STOPPED, AgentStatus.FAILED),
        )

    async def pause_group(self, group: str) -> list[AgentInstance]:
        """Pause every running agent of ``group``; returns when all reached a safe point."""
        return await self._group_call(
            "pause_group", group, self.pause_agent, _with_status(AgentStatus.RUNNING)
        )

    async def resume_group(self, group: str) -> list[AgentInstance]:
        """Resume every paused agent of ``group``."""
        return await self._group_call(
            "resume_group", group, self.resume_agent, _with_status(AgentStatus.PAUSED)
        )

    async def stop_group(
        self, group: str, graceful: bool = True, timeout_seconds: float = 5.0
    ) -> list[AgentInstance]:
        """Stop every agent of ``group`` that is not stopped."""
        check_seconds(timeout_seconds, allow_none=False)  # once, not once per member
        check_flag(graceful, "graceful")

        async def stop(agent_id: str) -> AgentInstance:
            return await self.stop_agent(agent_id, graceful, timeout_seconds)

        active = _with_status(
            AgentStatus.QUEUED, AgentStatus.STARTING, AgentStatus.RUNNING, AgentStatus.PAUSED
        )
        return await self._group_call(
            "stop_group",
            group,
            stop,
            # a failed member waiting to restart would come back: stopping cancels that
            lambda slot: (
                active(slot)
                or (slot.status is AgentStatus.FAILED and slot.restart_timer is not None)
            ),
        )

    async def _group_call(
        self,
        what: str,
        group: str,
        call: Callable[[str], Awaitable[AgentInstance]],
        wanted: Callable[[AgentSlot], bool],
    ) -> list[AgentInstance]:
        """``call`` every member of ``group`` that is ``wanted``, concurrently; return what
        the calls returned, in registration order.

        Waits for every call even when one fails, so no member is still pausing (or
        stopping, ...) when this returns or raises (F-25). A member no longer ``wanted``
        when its call got to it (a concurrent call acted first) is skipped, not an
        error. When calls failed, raises one error naming each failed member and
        its error (:func:`_group_error`; the first failure is the ``__cause__``).
        """
        self._require_running()
        if not isinstance(group, str) or not group:
            raise ValidationError(f"group must be a non-empty string, got {shown(group)}")
        members = [slot for slot in self.agent_book.in_group(group) if wanted(slot)]

        async def one(slot: AgentSlot) -> AgentInstance | None:
            try:
                return await call(slot.agent_id)
            except RuntimeNotRunningError:
                raise
            except InvalidStateError:
                # A concurrent call may have got to the member first (a stop abandons a
                # pause it finds waiting). The member's lock orders lifecycle calls: once
                # the calls queued before this one are done, its status tells.
                async with slot.lock:
                    if wanted(slot):
                        raise  # no race: the call itself refused
                return None

        results = await asyncio.gather(*(one(slot) for slot in members), return_exceptions=True)
        done: list[AgentInstance] = []
        failed: list[tuple[AgentSlot, BaseException]] = []
        for slot, result in zip(members, results, strict=True):
            if isinstance(result, BaseException):
                failed.append((slot, result))
            elif result is not None:
                done.append(result)
        if failed:
            raise _group_error(f"{what}({group!r})", failed, len(members)) from failed[0][1]
        return done

    # ------------------------------------------------------------------ tasks
    async def submit_task(
        self,
        name: str,
        input_data: JSONObject | None = None,
        priority: int = 50,
        dependencies: Sequence[str] | None = None,
        timeout_seconds: float | None = None,
        max_retries: int = 0,
        agent_id: str | None = None,
        group: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Queue a task and return its id once it is durable.

        ``priority`` 0..100 (0 most urgent); ``dependencies`` are ids of tasks that must
        complete first; ``agent_id`` or ``group`` restrict which agents may run it;
        ``max_retries`` retries with exponential backoff; an ``idempotency_key`` seen
        before returns the earlier task's id instead of adding a task.
        """
        self._require_running()
        # Not validated here: the task book checks every value as it builds the task.
        request = fast_construct(
            TaskRequest,
            {
                "name": name,
                "input_data": input_data,
                "priority": priority,
                "dependencies": [] if dependencies is None else dependencies,
                "timeout_seconds": timeout_seconds,
                "max_retries": max_retries,
                "agent_id": agent_id,
                "group": group,
                "idempotency_key": idempotency_key,
                "task_id": None,
            },
        )
        return (await self._submit([request]))[0]

    async def submit_tasks(self, requests: Sequence[TaskRequest | Mapping[str, Any]]) -> list[str]:
        """Queue several tasks at once, all or nothing; they may depend on each other by
        the ``task_id`` they are given here. Returns their ids in order."""
        self._require_running()
        if isinstance(requests, str | bytes | Mapping | TaskRequest) or not isinstance(
            requests, Iterable
        ):
            raise ValidationError(
                "requests must be a list of TaskRequest objects or dicts, got "
                f"{type(requests).__name__}"
            )
        parsed = []
        for request in requests:
            if isinstance(request, TaskRequest):
                parsed.append(request)
                continue
            try:
                parsed.append(TaskRequest.model_validate(request))
            except pydantic.ValidationError as exc:
                raise ValidationError(f"invalid task request {request!r}: {exc}") from None
        return await self._submit(parsed)

    async def _submit(self, requests: list[TaskRequest]) -> list[str]:
        if self.task_book.booking:
            # A big batch is still being booked: this one waits for it, and the runtime
            # may have begun stopping meanwhile.
            await self.task_book.booked()
            self._require_running()
        return await self.task_book.submit(requests, self._submit_trace)

    def _submit_trace(self, count: int) -> Carrier | None:
        """The trace context of a batch of ``count`` new tasks, once it is accepted."""
        return self.trace_carrier("submit", count)

    async def wait_for_task(self, task_id: str, timeout_seconds: float | None = None) -> Task:
        """Wait until the task completed, failed or was cancelled; return it (with
        ``output_data`` or ``error_message``). Raises WaitTimeoutError after
        ``timeout_seconds``."""
        self._require_running()
        return await self.task_book.wait(task_id, timeout_seconds)

    async def wait_for_tasks(
        self, task_ids: Sequence[str], timeout_seconds: float | None = None
    ) -> list[Task]:
        """:meth:`wait_for_task` for many tasks (the counterpart of :meth:`submit_tasks`):
        returns them, in the order given, once all are finished and committed; raises
        WaitTimeoutError after ``timeout_seconds``. Much cheaper than many concurrent
        ``wait_for_task`` calls."""
        self._require_running()
        return await self.task_book.wait_many(task_ids, timeout_seconds)

    async def cancel_task(self, task_id: str) -> Task:
        """Cancel a pending, blocked or running task (and its waiting dependents)."""
        self._require_running()
        return await self.task_book.cancel(task_id)

    async def pause_queue(self) -> None:
        """Stop handing out tasks; running ones go on. Retry backoffs stop counting. The
        pause is stored: a runtime started later on the same database starts paused."""
        self._require_running()
        if self._queue_paused:
            await self.store.flush()  # returns once the pause is committed, as the first call
            return
        self._queue_paused = True
        self.executor.pause_clocks(None)
        self.events.emit(EventType.QUEUE_PAUSED)
        await self.store.put_meta(QUEUE_PAUSED_KEY, True)

    async def resume_queue(self) -> None:
        """Hand out tasks again after :meth:`pause_queue`."""
        self._require_running()
        if not self._queue_paused:
            await self.store.flush()  # returns once the state is committed, as the first call
            return
        self._queue_paused = False
        self.executor.resume_clocks(None)
        self.events.emit(EventType.QUEUE_RESUMED)
        self.executor.wake()
        await self.store.put_meta(QUEUE_PAUSED_KEY, False)

    def list_dead_letters(self, kind: str | None = None) -> list[DeadLetter]:
        """Work that could not be done, oldest first (F-28): tasks out of retries (kind
        ``task``) and messages that expired undelivered (kind ``message``)."""
        self._require_started()
        if kind not in (None, "task", "message"):
            raise ValidationError(f"kind must be 'task', 'message' or None, got {shown(kind)}")
        letters = self.task_book.dead_letters.values()
        return [
            # Its payload is the runtime's own; copied without recursion (deepcopy fails on
            # a message's data nested some hundreds of levels deep).
            letter.model_copy(update={"payload": copy_json(letter.payload)})
            for letter in letters
            if kind is None or letter.kind == kind
        ]

    async def requeue_dead_letter(
        self, dead_letter_id: str, ttl_seconds: float | None = None
    ) -> str:
        """Try again (F-28): a task runs again with fresh retries (returns its task id); a
        message is sent again to its recipient, with ``ttl_seconds`` (default: none) as
        its new TTL (returns the new message id)."""
        self._require_running()
        if not isinstance(dead_letter_id, str):
            raise ValidationError(
                "dead_letter_id must be the id of a dead letter (a string, see "
                f"list_dead_letters()), got {type(dead_letter_id).__name__}"
            )
        letter = self.task_book.dead_letters.get(dead_letter_id)
        if letter is not None and letter.kind == "message":
            return await self.messenger.requeue(letter, ttl_seconds)
        return await self.task_book.requeue_dead_letter(dead_letter_id)

    # ------------------------------------------------------------------ queries (memory)
    def _require_started(self) -> None:
        if self._task_book is None:
            raise RuntimeNotRunningError("the runtime has not been started; await rt.start() first")

    def get_agent_status(self, agent_id: str) -> AgentInstance:
        """The live status of one agent."""
        self._require_started()
        return self.agent_book.get(agent_id).instance.model_copy()

    def list_agents(
        self, status: AgentStatus | str | None = None, group: str | None = None
    ) -> list[AgentInstance]:
        """All agents, optionally only those with ``status`` and/or in ``group``."""
        self._require_started()
        wanted = parse_enum(AgentStatus, status, "status")
        if group is not None:
            check_name(group, "group")  # a wrong type is an error, not "no such agents"
        return [
            slot.instance.model_copy()
            for slot in self.agent_book.slots.values()
            if (wanted is None or slot.status is wanted)
            and (group is None or slot.spec.group == group)
        ]

    def get_task_status(self, task_id: str) -> Task:
        """One task with its effective priority, queue position and estimated wait."""
        self._require_started()
        return queries.task_status(self, task_id)

    def list_tasks(
        self, status: TaskStatus | str | None = None, limit: int | None = 100
    ) -> list[Task]:
        """Tasks, newest first, optionally only those with ``status``; at most ``limit``."""
        self._require_started()
        wanted = parse_enum(TaskStatus, status, "status")
        check_limit(limit)
        found: list[Task] = []
        for task in reversed(self.task_book.tasks.values()):
            if wanted is None or task.status is wanted:
                found.append(task_snapshot(task))
                if limit is not None and len(found) >= limit:
                    break
        return found

    def get_queue_status(self) -> QueueStatus:
        """Counts of the task queue by status and priority."""
        self._require_started()
        return queries.queue_status(self)

    def get_capacity(self) -> Capacity:
        """Usage, limits and free room for agents and tasks."""
        self._require_started()
        return queries.capacity(self)

    def get_metrics(self) -> Metrics:
        """Counters and timings since this runtime started."""
        self._require_started()
        return queries.metrics(self, time.monotonic() - self._started_mono)

    def export_prometheus_metrics(self) -> bytes:
        """The runtime's metrics in the Prometheus text format (0.0.4): what a scrape of
        the ``prometheus`` extra's endpoint returns (``pip install 'miminions[prometheus]'``).

        Raises MissingExtraError when prometheus_client is not installed, PluginError when
        the ``prometheus`` plugin is disabled or not loaded.
        """
        self._require_started()
        self.events.drain()  # what just happened is counted (a message just sent)
        pm = self.plugin_manager
        body = pm.hook.miminions_export_metrics(runtime=self, format="prometheus")
        refuse_coroutines(body, "miminions_export_metrics")
        if body is not None:
            return bytes(body)
        if pm.is_blocked("prometheus"):
            raise PluginError(
                "cannot export Prometheus metrics: the 'prometheus' plugin is disabled "
                "(disable=['prometheus']); keep it enabled to export them"
            )
        if not installed("prometheus_client"):
            raise MissingExtraError("prometheus_client", "prometheus")
        raise PluginError(
            "cannot export Prometheus metrics: no plugin answered miminions_export_metrics; "
            "the 'prometheus' extra is not loaded (MIMINIONS_DISABLE_PLUGIN_AUTOLOAD is set?): "
            "pass plugins=[miminions.extras.prometheus]"
        )

    def explain(self, task_id: str) -> TaskExplanation:
        """Why isn't it running? Names everything that holds a pending task (F-24)."""
        self._require_started()
        return queries.explain(self, task_id)

    # ------------------------------------------------------------------ event log
    async def query_events(
        self,
        event_type: EventType | str | Sequence[EventType | str] | None = None,
        agent_id: str | None = None,
        task_id: str | None = None,
        severity: Severity | str | None = None,
        since: datetime | None = None,
        limit: int | None = 100,
        until: datetime | None = None,
        newest: bool = False,
        after_id: int | None = None,
    ) -> list[Event]:
        """Events matching every given filter, oldest first; ``severity`` is a minimum.

        ``since`` and ``until`` are inclusive; a naive datetime is taken as UTC (pass an
        aware one). At most ``limit`` events: the oldest ones, or with ``newest=True`` the
        most recent ones (still returned oldest first). ``after_id``: only events recorded
        after the one with that ``event_id`` (ids grow in recording order), the way to read
        the log page by page or to tail it: pass the last ``event_id`` you got. (``since``
        cannot page: events recorded together share one timestamp.)"""
        self._require_running()
        query = build_event_query(
            event_type, agent_id, task_id, severity, since, until, limit, newest, after_id
        )
        self.events.drain()  # what just happened is in the log
        return await self.store.query_events(query)

    def _database_file(self) -> str | os.PathLike[str] | None:
        """The file the store keeps the database in, as it opened it (optional for a store:
        else the configured path), or None for a database in memory."""
        opened = getattr(self.store, "database_file", None)
        return opened() if callable(opened) else self.config.storage_path

    async def export_events(
        self, path: str | os.PathLike[str], format: str = "jsonl", **filters: Any
    ) -> int:
        """Write the event log (optionally filtered as in :meth:`query_events`) to ``path``
        as ``jsonl``, ``csv`` or ``json``; returns the number of events written."""
        self._require_running()
        if not isinstance(path, str | os.PathLike) or "\0" in os.fsdecode(path):
            raise ValidationError(f"path must be a file path (with no NUL), got {path!r}")
        if not isinstance(format, str) or format not in EXPORT_FORMATS:
            raise ValidationError(f"format must be one of {sorted(EXPORT_FORMATS)}, got {format!r}")
        unknown = set(filters) - _EVENT_FILTERS
        if unknown:
            raise ValidationError(
                f"unknown event filter(s) {sorted(unknown)}; use {sorted(_EVENT_FILTERS)}"
            )
        database = self._database_file()
        if database is not None and is_database_file(path, database):
            raise ValidationError(
                f"path {os.fspath(path)!r} is the runtime's database "
                f"{self.config.storage_path!r} or one of its files; writing the events there "
                "would destroy it"
            )
        filters.setdefault("limit", None)
        events = await self.query_events(**filters)
        try:
            await asyncio.to_thread(write_events, Path(path), events, format)
        except OSError as exc:  # a missing directory, no permission, a full disk, ...
            raise ValidationError(
                f"cannot write the events to {os.fspath(path)!r}: {exc.strerror or exc}"
            ) from exc
        return len(events)


def _group_error(
    call: str, failed: list[tuple[AgentSlot, BaseException]], members: int
) -> MiminionsError:
    """One error for the members of a group call that failed, naming each and its error.

    Its class is theirs when they all failed alike (an ``on_pause`` that raised gives an
    AgentHookError, as ``pause_agent`` would), so callers catch what they would catch for
    one agent; otherwise, or for a class that takes other arguments, a MiminionsError.
    """
    listed = "; ".join(
        f"agent {slot.agent_id!r} ({slot.spec.name}): {describe_error(error)}"
        for slot, error in failed
    )
    message = f"{call}: {len(failed)} of {members} members failed, the others are done: {listed}"
    kinds = {type(error) for _, error in failed}
    kind = kinds.pop() if len(kinds) == 1 else MiminionsError
    if issubclass(kind, MiminionsError):
        try:
            return kind(message)
        except TypeError:  # e.g. RemoteAgentError(remote_type, message)
            pass
    return MiminionsError(message)


class _Cleanup:
    """Runs the steps of a shutdown so that one that raises does not skip the others.

    Errors are collected; :meth:`raise_first` raises the first after every step ran and
    logs the others. A cancellation (or another BaseException that is not an Exception)
    goes first: it is what the caller must see, and :attr:`cut_short` tells the caller to
    skip the steps that would wait.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.errors: list[BaseException] = []

    @property
    def cut_short(self) -> bool:
        """True once a step was cancelled or interrupted."""
        return any(not isinstance(error, Exception) for error in self.errors)

    def call(self, step: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Run a synchronous step."""
        try:
            step(*args, **kwargs)
        except BaseException as exc:
            self.errors.append(exc)

    async def wait(
        self, step: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any
    ) -> _T | None:
        """Run an async step; None when it raised."""
        try:
            return await step(*args, **kwargs)
        except BaseException as exc:
            self.errors.append(exc)
            return None

    def hook_errors(self, errors: list[tuple[str, BaseException]]) -> None:
        """Take the errors of :meth:`PluginManager.call_each`, naming each plugin."""
        for plugin, error in errors:
            error.add_note(f"raised by plugin {plugin!r}")
            self.errors.append(error)

    def log_all(self) -> None:
        """Log every error (when another error is the one to report)."""
        for error in self.errors:
            _log.error("error while %s", self.what, exc_info=error)

    def raise_first(self) -> None:
        """Raise the first error (a cancellation first), logging the others."""
        if not self.errors:
            return
        first = next((e for e in self.errors if not isinstance(e, Exception)), self.errors[0])
        for error in self.errors:
            if error is not first:
                _log.error("another error while %s", self.what, exc_info=error)
        raise first


def _with_status(*statuses: AgentStatus) -> Callable[[AgentSlot], bool]:
    """For :meth:`AgentRuntime._group_call`: the members in one of ``statuses``."""
    wanted = frozenset(statuses)
    return lambda slot: slot.status in wanted


def _guarded_order_key(pm: PluginManager, config: RuntimeConfig) -> Callable[[int, float], float]:
    """The scheduler's order key from the ``miminions_order_key`` hook, never raising.

    A plugin that raises, or answers something that is not a number (NaN included: it
    would break the heap's order), gets the default aged key for that task, exactly as
    when every plugin passes; the scheduler must not be left half-way through an
    operation by a plugin. The failure is logged once per streak, not once per task.
    """
    hook = pm.hook.miminions_order_key
    aging = config.aging_seconds_per_level
    failing = False

    def order_key(priority: int, ready_at: float) -> float:
        nonlocal failing
        try:
            answer = hook(priority=priority, ready_at=ready_at, config=config)
            refuse_coroutines(answer, "miminions_order_key")
            if isinstance(answer, str | bytes | bytearray | bool):  # float() would take them
                raise TypeError(f"order key {answer!r} is not a number")
            key = None if answer is None else float(answer)
            if key is not None and math.isnan(key):
                raise ValueError(f"order key {answer!r} is not a number")
        except PLUGIN_ERRORS:
            if not failing:
                failing = True
                plugins = [impl.plugin_name for impl in hook.get_hookimpls()]
                _log.exception(
                    "a miminions_order_key implementation failed (plugins: %s); tasks get "
                    "the default aged order key until it answers again",
                    plugins,
                )
            key = None
        else:
            failing = False
        if key is None:  # every plugin passed (or one failed): the documented default
            return priority * aging + ready_at
        return key

    return order_key


def _revalidate(config: RuntimeConfig) -> None:
    """Check the configuration as the application and ``miminions_configure`` left it
    (model attributes are set without validation: ``max_concurrent_agents = 0`` made every
    start wait for good), in place: plugins may keep the object they were given, and what
    they hold in it (``plugin_options`` values are any objects). See :func:`_validated_form`
    for what is converted (``limits`` given as a dict becomes a ``ResourceLimits``)."""
    model = type(config)  # (a subclass may add fields of its own)
    dumped = config.model_dump(warnings=False)
    try:
        checked = model.model_validate(dumped)
    except pydantic.ValidationError as exc:
        raise ConfigurationError(
            "the runtime's configuration is not valid (as the application and any "
            f"miminions_configure plugin left it): {exc}"
        ) from None
    for name in model.model_fields:
        # plugin_options values are any objects: kept as they are; so is a field the dump
        # leaves out (a subclass's ``exclude=True`` field: its validated form is a default).
        if name != "plugin_options" and name in dumped:
            config.__dict__[name] = _validated_form(
                config.__dict__.get(name), getattr(checked, name)
            )


def _validated_form(value: Any, checked: Any) -> Any:
    """``value`` (set without validation) where it already has the shape of ``checked``,
    its validated form, and otherwise ``checked``: a model (or a subclass of its type)
    keeps its own object, converted inside; a dict keeps its object, its values converted;
    a value of another type is replaced."""
    if isinstance(checked, pydantic.BaseModel):
        if not isinstance(value, type(checked)):
            return checked
        for name in type(checked).model_fields:
            value.__dict__[name] = _validated_form(value.__dict__.get(name), getattr(checked, name))
        return value
    if isinstance(checked, dict):
        if not isinstance(value, dict) or value.keys() != checked.keys():
            return checked
        for key, item in checked.items():
            value[key] = _validated_form(value[key], item)
        return value
    return value if type(value) is type(checked) else checked


def _need(value: _T | None) -> _T:
    if value is None:
        raise RuntimeNotRunningError("the runtime has not been started; await rt.start() first")
    return value


__all__ = ["RUN_META_KEY", "AgentRuntime", "build_event_query", "live_owner"]
