"""What the miminions pytest plugin gives tests to work with: test configs, started
runtimes with leak checks, and :class:`AgentHarness` / :func:`run_agent` to run agents and
await their outcomes.

Import these from :mod:`miminions.testing` (the plugin, which forwards to this module): the
plugin itself stays light because pytest imports it in every run of an environment where
miminions is installed, and this module needs the whole runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, overload

import pytest

from miminions import (
    AgentInstance,
    AgentRuntime,
    AgentStatus,
    Event,
    EventType,
    MiminionsError,
    RuntimeConfig,
    Task,
    TaskRequest,
    TaskStatus,
    WaitTimeoutError,
    hookimpl,
)
from miminions.plugins.process_probe import WorkerRecord, is_same_process, process_start_time

_T = TypeVar("_T")

#: The bound (seconds) of every wait in this module unless a call says otherwise: long
#: enough for a worker process to start on a loaded machine, short enough that a stuck
#: test fails instead of hanging.
DEFAULT_TIMEOUT_SECONDS = 15.0

#: What :func:`runtime_config` changes from :class:`~miminions.RuntimeConfig`'s defaults.
TEST_CONFIG_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # Agents defined in a test module (or inside a test) run in the test's process: no
        # worker has to import them, and tests can watch them through plain Python objects.
        "default_isolation": "inline",
        # Retries happen at once instead of after half a second and more.
        "retry_backoff_base_seconds": 0.01,
        "retry_backoff_max_seconds": 0.05,
        # A task that ignores its cancellation cannot hold the teardown for long.
        "shutdown_timeout_seconds": 2.0,
    }
)

#: How many events a failure message shows, most recent last.
_EVENTS_SHOWN = 15


# --------------------------------------------------------------------------- configuration
def runtime_config(
    storage_path: str | os.PathLike[str] | None = None,
    *,
    base: RuntimeConfig | None = None,
    **overrides: Any,
) -> RuntimeConfig:
    """A validated :class:`~miminions.RuntimeConfig` for tests.

    Starts from ``base`` or, without one, from RuntimeConfig's defaults changed by
    :data:`TEST_CONFIG_DEFAULTS` (inline agents, near-instant retries, a short shutdown).
    ``storage_path`` (required without ``base``) is the database file; ``overrides`` are
    RuntimeConfig fields, plus ``isolation`` as a short name for ``default_isolation``.
    Raises TypeError for an unknown field and pydantic's ValidationError for a bad value.
    """
    if "isolation" in overrides:
        if "default_isolation" in overrides:
            raise TypeError("give isolation or default_isolation, not both")
        overrides["default_isolation"] = overrides.pop("isolation")
    unknown = sorted(set(overrides) - set(RuntimeConfig.model_fields))
    if unknown:
        raise TypeError(
            f"unknown RuntimeConfig field(s) {unknown}; known: "
            f"{sorted(RuntimeConfig.model_fields)} (and isolation)"
        )
    if base is not None:
        values: dict[str, Any] = dict(base)  # field -> value, nested models kept as they are
    elif storage_path is not None:
        values = dict(TEST_CONFIG_DEFAULTS)
    else:
        raise TypeError("runtime_config() needs a storage_path or a base config")
    if storage_path is not None:
        values["storage_path"] = os.fspath(storage_path)
    values.update(overrides)
    return RuntimeConfig.model_validate(values)


# --------------------------------------------------------------------------- the runtime
class _Watch:
    """Registered in each runtime the fixture starts: remembers every worker process an
    agent ran in, so the teardown can check that none outlived the runtime."""

    miminions_plugin_name = "miminions_testing_watch"

    def __init__(self) -> None:
        self.workers: dict[int, WorkerRecord] = {}

    @hookimpl
    def miminions_event(self, event: Event, runtime: AgentRuntime) -> None:
        """Note the worker of an agent that started or resumed in a process of its own."""
        if event.agent_id is None or event.event_type not in (
            EventType.AGENT_STARTED,
            EventType.AGENT_RESUMED,
        ):
            return
        pid = runtime.get_agent_status(event.agent_id).process_id
        if pid is None or pid in self.workers:
            return
        # pid and start time name one process for its whole life (pids are reused).
        self.workers[pid] = WorkerRecord(
            pid=pid,
            start_time=process_start_time(pid),
            agent_id=event.agent_id,
            runtime_pid=os.getpid(),
        )


@contextlib.asynccontextmanager
async def started_runtime(
    config: RuntimeConfig,
    plugins: Sequence[object] = (),
    *,
    disable: Sequence[str] = (),
    check_leaks: bool = True,
) -> AsyncIterator[AgentRuntime]:
    """Start an :class:`~miminions.AgentRuntime` on ``config`` with ``plugins`` and without
    the plugins named in ``disable`` (as ``AgentRuntime(disable=...)``: a built-in to
    replace, an installed extra to leave out); stop it when the block ends. ``disable``
    cannot name ``miminions_testing_watch``, the plugin the leak checks rely on (ValueError).

    When the block ends without an error and ``check_leaks`` is true, the test then fails
    if the runtime left anything running: an agent not stopped, a task still running, an
    asyncio task of the runtime, or a worker process an agent ran in. For tests that need
    more than the ``miminions_runtime`` fixture gives (a second runtime on the same
    database, a runtime started mid-test).
    """
    watch = _Watch()
    before = asyncio.all_tasks()
    if _Watch.miminions_plugin_name in disable:  # the leak checks rely on it
        raise ValueError(f"{_Watch.miminions_plugin_name!r} cannot be disabled")
    runtime = AgentRuntime(config=config, plugins=[*plugins, watch], disable=disable)
    await runtime.start()
    loop = asyncio.get_running_loop()
    _OPEN[runtime] = loop
    try:
        yield runtime
    finally:
        _OPEN.pop(runtime, None)
        await runtime.stop()
    if check_leaks:
        # An asyncio task cannot be told to be of this runtime or of another one still
        # open on this loop (two runtimes side by side, one within the other): then the
        # runtime that stops last checks the tasks (those since it started), and this
        # one what it alone owns (its agents, tasks and worker processes). (A runtime on
        # another loop, a session's in another thread, has none of this loop's tasks.)
        others = any(rt.is_running and at is loop for rt, at in list(_OPEN.items()))
        await _check_nothing_left(runtime, watch.workers.values(), None if others else before)


#: How long the teardown gives tasks and worker processes that are ending to end.
_LEAK_GRACE_SECONDS = 5.0
#: The runtimes :func:`started_runtime` started and has not stopped yet, and their loops.
_OPEN: weakref.WeakKeyDictionary[AgentRuntime, asyncio.AbstractEventLoop] = (
    weakref.WeakKeyDictionary()
)


async def _check_nothing_left(
    runtime: AgentRuntime,
    workers: Iterable[WorkerRecord],
    tasks_before: set[asyncio.Task[Any]] | None,
    within: float = _LEAK_GRACE_SECONDS,
) -> None:
    """Fail the test unless the stopped ``runtime`` left nothing running.

    Checked: no agent is queued, starting, running or stopping; no task is running; no
    asyncio task that runs a miminions coroutine, and was not in ``tasks_before``, is
    pending (not checked when ``tasks_before`` is None); none of ``workers`` is alive.
    Tasks and processes that are ending get ``within`` seconds to do so.
    """
    __tracebackhide__ = True
    problems: list[str] = []
    active = {AgentStatus.QUEUED, AgentStatus.STARTING, AgentStatus.RUNNING, AgentStatus.STOPPING}
    problems += [
        f"agent {agent.name!r} ({agent.agent_id}) is still {agent.status.value}"
        for agent in runtime.list_agents()
        if agent.status in active
    ]
    problems += [
        f"task {task.name!r} ({task.task_id}) is still running"
        for task in runtime.list_tasks(TaskStatus.RUNNING, limit=None)
    ]
    leftovers = {
        task
        for task in (asyncio.all_tasks() if tasks_before is not None else ())
        if task is not asyncio.current_task()
        and task not in tasks_before  # type: ignore[operator]
        and _runs_miminions_code(task)
    }
    # With agents left running the runtime did not stop: its tasks and workers go on, so
    # waiting for them to end would only delay the report.
    stopped = not problems
    if leftovers and stopped:
        _, leftovers = await asyncio.wait(leftovers, timeout=within)
    problems += [f"asyncio task {_describe_coroutine(task)} is pending" for task in leftovers]
    alive = list(workers)
    deadline = time.monotonic() + within if stopped else 0.0
    while alive:
        # A killed worker is gone once the kernel reaped it: /proc has nothing to wait on.
        alive = [record for record in alive if is_same_process(record)]
        if not alive or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.01)
    problems += [
        f"worker process {record.pid} of agent {record.agent_id} is alive" for record in alive
    ]
    if problems:
        pytest.fail(
            "the runtime left things running after it stopped:\n  - " + "\n  - ".join(problems),
            pytrace=False,
        )


_PACKAGE_DIR = Path(__file__).resolve().parent


def _runs_miminions_code(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` runs a coroutine defined in miminions (other than this module):
    tasks a test creates for its own coroutines are the test's business."""
    code = getattr(task.get_coro(), "cr_code", None) or getattr(task.get_coro(), "gi_code", None)
    if code is None:
        return False
    path = Path(code.co_filename).resolve()
    return path.is_relative_to(_PACKAGE_DIR) and path != Path(__file__).resolve()


def _describe_coroutine(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()} ({name})"


# --------------------------------------------------------------------------- waiting
# The value returned is truthy, so never None: ``check`` may return ``X | None`` and the wait
# gives back an ``X``. An async ``check`` is matched first (a sync one returns no awaitable).
@overload
async def wait_until(
    check: Callable[[], Awaitable[_T | None]],
    what: str = "",
    within: float = DEFAULT_TIMEOUT_SECONDS,
) -> _T: ...


@overload
async def wait_until(
    check: Callable[[], _T | None],
    what: str = "",
    within: float = DEFAULT_TIMEOUT_SECONDS,
) -> _T: ...


async def wait_until(
    check: Callable[[], Any],
    what: str = "",
    within: float = DEFAULT_TIMEOUT_SECONDS,
) -> Any:
    """Re-check ``check`` (sync or async) every 10 ms until it returns something truthy and
    return that. Fails the test after ``within`` seconds, naming ``what`` and the last value.

    For state that changes in another process (a worker, a file) or that has no event to
    wait for; where there is one (a task's end, an event), await that instead.
    """
    __tracebackhide__ = True
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            # An async check that does not return is bounded by ``within`` too.
            value = await _answer_by(value, deadline)
            if value is _NO_ANSWER:
                name = what or getattr(check, "__name__", repr(check))
                pytest.fail(
                    f"timed out after {within:g} s waiting for {name} (the check itself "
                    "did not return)",
                    pytrace=False,
                )
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(check, "__name__", repr(check))
            pytest.fail(f"timed out after {within:g} s waiting for {name} (last: {value!r})")
        await asyncio.sleep(0.01)


_NO_ANSWER: Any = object()


async def _answer_by(check: Awaitable[_T], deadline: float) -> _T:
    """What the async ``check`` returns, or :data:`_NO_ANSWER` if it has not by
    ``deadline`` (a :func:`time.monotonic` time; it is cancelled then). A check that
    answers without waiting always answers, even past the deadline (its first step runs
    before the wait's timeout: ``wait_for(check, 0)`` cancelled it before it ran)."""
    answer = asyncio.ensure_future(check)
    await asyncio.wait([answer], timeout=max(deadline - time.monotonic(), 0.0))
    if answer.done():
        return answer.result()
    answer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await answer
    return _NO_ANSWER  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- running agents
class AgentHarness:
    """One agent registered and started on a running runtime, and its tasks.

    Make one with :meth:`start`. Tasks given with :meth:`submit`, :meth:`run` and
    :meth:`run_many` go to this agent; :meth:`wait`, :meth:`run` and :meth:`run_many` await
    their outcomes within ``timeout_seconds`` and fail the test — with each task's error,
    what holds an unfinished one, the agent's status and the recent events — when a task
    does not end as expected.
    """

    def __init__(
        self,
        runtime: AgentRuntime,
        agent_id: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.runtime = runtime
        self.agent_id = agent_id
        self.timeout_seconds = timeout_seconds
        self._submitted = 0

    @classmethod
    async def start(
        cls,
        runtime: AgentRuntime,
        agent: object,
        *,
        name: str | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        **register_options: Any,
    ) -> AgentHarness:
        """Register ``agent`` (a class, object or function) and start it.

        ``name`` defaults to the agent's ``__name__`` (with ``-2``, ``-3``, ... when taken);
        ``register_options`` go to :meth:`~miminions.AgentRuntime.register_agent`
        (``config``, ``group``, ``isolation``, ``limits``, ``topics``). Fails the test when
        the agent fails to start (``on_start`` raised, its worker could not import it).
        """
        __tracebackhide__ = True
        if name is None:
            name = _free_name(runtime, agent)
        agent_id = await runtime.register_agent(name, agent, **register_options)
        harness = cls(runtime, agent_id, timeout_seconds=timeout_seconds)
        status = await runtime.start_agent(agent_id)
        if status.status is AgentStatus.FAILED:
            pytest.fail(
                f"agent {name!r} failed to start: {status.error_message}\n"
                + await _recent_events(runtime, agent_id=agent_id),
                pytrace=False,
            )
        return harness

    @property
    def name(self) -> str:
        """The name the agent is registered under."""
        return self.status.name

    @property
    def status(self) -> AgentInstance:
        """The agent's live status (:meth:`~miminions.AgentRuntime.get_agent_status`)."""
        return self.runtime.get_agent_status(self.agent_id)

    async def submit(
        self,
        input_data: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        **options: Any,
    ) -> str:
        """Queue a task for this agent; return its id. ``name`` defaults to
        ``"<agent name>-<n>"``; ``options`` go to :meth:`~miminions.AgentRuntime.submit_task`
        (``priority``, ``dependencies``, ``timeout_seconds``, ``max_retries``, ...)."""
        if "agent_id" not in options and "group" not in options:
            options["agent_id"] = self.agent_id
        # Not a mapping: as given, and the runtime says what is wrong with it (dict() of
        # a string failed with "dictionary update sequence element #0 has length 1").
        data: Any = dict(input_data) if isinstance(input_data, Mapping) else input_data
        return await self.runtime.submit_task(
            name or self._task_name(), {} if data is None else data, **options
        )

    async def wait(
        self,
        task_id: str,
        *,
        expect: str | None = "completed",
        timeout_seconds: float | None = None,
    ) -> Task:
        """Await the end of ``task_id`` and return the task.

        Fails the test when it does not end within ``timeout_seconds`` (default: the
        harness's) or ends with a status other than ``expect`` (a TaskStatus or its value;
        None accepts any end).
        """
        __tracebackhide__ = True
        return (await self._wait([task_id], _expected_status(expect), timeout_seconds))[0]

    async def run(
        self,
        input_data: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        expect: str | None = "completed",
        timeout_seconds: float | None = None,
        **options: Any,
    ) -> Task:
        """:meth:`submit` one task and :meth:`wait` for it."""
        __tracebackhide__ = True
        wanted = _expected_status(expect)  # a typo fails before anything is submitted
        task_id = await self.submit(input_data, name=name, **options)
        return (await self._wait([task_id], wanted, timeout_seconds))[0]

    async def run_many(
        self,
        tasks: Iterable[Mapping[str, Any] | TaskRequest],
        *,
        expect: str | None = "completed",
        timeout_seconds: float | None = None,
        **options: Any,
    ) -> list[Task]:
        """Queue several tasks at once and await them all; return them in order.

        Each item is the ``input_data`` of a task (named ``"<agent name>-<n>"``, with
        ``options`` as in :meth:`submit`), or a :class:`~miminions.TaskRequest` used as
        given — routed to this agent unless it names an agent or a group. Fails the test as
        :meth:`wait` does, describing every task that did not end as expected.
        """
        __tracebackhide__ = True
        wanted = _expected_status(expect)
        _check_task_list(tasks)
        requests: list[TaskRequest] = []
        for item in tasks:
            if isinstance(item, TaskRequest):
                if item.agent_id is None and item.group is None:
                    item = item.model_copy(update={"agent_id": self.agent_id})
                requests.append(item)
            else:
                fields = dict(options)
                if "agent_id" not in fields and "group" not in fields:
                    fields["agent_id"] = self.agent_id
                requests.append(TaskRequest(name=self._task_name(), input_data=item, **fields))
        task_ids = await self.runtime.submit_tasks(requests)
        return await self._wait(task_ids, wanted, timeout_seconds)

    async def stop(self, *, graceful: bool = True) -> AgentInstance:
        """Stop the agent (``on_stop`` runs when graceful); return its status."""
        return await self.runtime.stop_agent(
            self.agent_id, graceful=graceful, timeout_seconds=self.timeout_seconds
        )

    # ------------------------------------------------------------------ internals
    def _task_name(self) -> str:
        self._submitted += 1
        return f"{self.name}-{self._submitted}"

    async def _wait(
        self,
        task_ids: Sequence[str],
        wanted: TaskStatus | None,
        timeout_seconds: float | None,
    ) -> list[Task]:
        __tracebackhide__ = True
        within = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        try:
            finished = await self.runtime.wait_for_tasks(task_ids, within)
        except WaitTimeoutError:
            finished = None  # fail outside the handler: its error adds nothing to the report
        if finished is None:
            tasks = [self.runtime.get_task_status(task_id) for task_id in task_ids]
            late = [task for task in tasks if not task.status.is_terminal]
            header = f"{len(late)} of {len(tasks)} task(s) did not finish within {within:g} s"
            # The tasks that ended otherwise than expected first: often why the others wait.
            wrong = [
                task
                for task in tasks
                if task.status.is_terminal and wanted is not None and task.status is not wanted
            ]
            if wrong:
                header += f", and {len(wrong)} ended otherwise than {wanted}"
            pytest.fail(await self._report(header, [*wrong, *late]), pytrace=False)
        wrong = [task for task in finished if wanted is not None and task.status is not wanted]
        if wrong:
            header = (
                f"expected {len(finished)} task(s) to end {wanted}, "
                f"but {len(wrong)} ended otherwise"
            )
            pytest.fail(await self._report(header, wrong), pytrace=False)
        return finished

    async def _report(self, header: str, tasks: Sequence[Task]) -> str:
        """The failure message: each task's state and error, the agent, recent events."""
        lines = [header + ":"]
        for task in tasks[:5]:
            lines.append(f"  task {task.name!r} ({task.task_id}) is {task.status.value}")
            if task.error_message:
                lines.append(f"    error: {task.error_message}")
            if not task.status.is_terminal:
                lines.append(f"    why: {self.runtime.explain(task.task_id).summary}")
        if len(tasks) > 5:
            lines.append(f"  ... and {len(tasks) - 5} more")
        agent = self.status
        lines.append(
            f"  agent {agent.name!r} is {agent.status.value}"
            + (f": {agent.status_reason}" if agent.status_reason else "")
            + (f" (error: {agent.error_message})" if agent.error_message else "")
        )
        lines.append(
            await _recent_events(
                self.runtime, agent_id=self.agent_id, task_ids=[t.task_id for t in tasks[:5]]
            )
        )
        return "\n".join(lines)


async def run_agent(
    runtime: AgentRuntime,
    agent: object,
    tasks: Iterable[Mapping[str, Any] | TaskRequest],
    *,
    name: str | None = None,
    expect: str | None = "completed",
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    **register_options: Any,
) -> list[Task]:
    """Run ``agent`` on ``tasks`` and return the finished tasks, in order.

    Registers and starts the agent (:meth:`AgentHarness.start`), runs the tasks
    (:meth:`AgentHarness.run_many`: each item is an ``input_data`` dict or a
    :class:`~miminions.TaskRequest`), then stops the agent. Fails the test when a task does
    not end ``expect`` (default ``"completed"``; None accepts any end) within
    ``timeout_seconds``.
    """
    __tracebackhide__ = True
    _check_task_list(tasks)  # before the agent starts
    harness = await AgentHarness.start(
        runtime, agent, name=name, timeout_seconds=timeout_seconds, **register_options
    )
    finished = await harness.run_many(tasks, expect=expect)
    await harness.stop()
    return finished


def _check_task_list(tasks: object) -> None:
    """TypeError unless ``tasks`` is a list (an iterable) of tasks: one task's input given
    instead (a dict) is iterated as its keys, a string as its letters."""
    if isinstance(tasks, (Mapping, str, bytes)) or not isinstance(tasks, Iterable):
        raise TypeError(
            "tasks must be a list of input_data dicts or TaskRequests, e.g. "
            f"[{{'text': 'a'}}], got {type(tasks).__name__}"
        )


def _expected_status(expect: str | None) -> TaskStatus | None:
    """``expect`` as a TaskStatus (None: any end); ValueError names the valid ones."""
    if expect is None:
        return None
    terminal = [status for status in TaskStatus if status.is_terminal]  # where a wait ends
    if expect not in terminal:
        valid = [status.value for status in terminal]
        raise ValueError(f"expect must be one of {valid} or None, got {expect!r}")
    return TaskStatus(expect)


def _free_name(runtime: AgentRuntime, agent: object) -> str:
    """The agent's ``__name__`` (its class name for an object), suffixed when taken."""
    base = getattr(agent, "__name__", None) or type(agent).__name__
    taken = {instance.name for instance in runtime.list_agents()}
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


async def _recent_events(
    runtime: AgentRuntime, *, agent_id: str | None = None, task_ids: Sequence[str] = ()
) -> str:
    """The latest events of the agent and the tasks, oldest first, one line each."""
    if not runtime.is_running:
        return "  (the runtime is not running: no events to show)"
    found: dict[int | None, Event] = {}
    try:
        await runtime.store.flush()  # events emitted a moment ago are committed too
        batches = [
            await runtime.query_events(task_id=task_id, newest=True, limit=_EVENTS_SHOWN)
            for task_id in task_ids
        ]
        if agent_id is not None:
            batches.append(
                await runtime.query_events(agent_id=agent_id, newest=True, limit=_EVENTS_SHOWN)
            )
        # Runtime-wide events (queue paused, runtime recovered) hold every task.
        latest = await runtime.query_events(newest=True, limit=4 * _EVENTS_SHOWN)
        batches.append([e for e in latest if e.agent_id is None and e.task_id is None])
        for batch in batches:
            for event in batch:
                found[event.event_id] = event
    except MiminionsError as exc:
        return f"  (recent events unavailable: {exc})"
    events = sorted(found.values(), key=lambda e: (e.timestamp, e.event_id or 0))[-_EVENTS_SHOWN:]
    if not events:
        return "  no events recorded"
    return "  recent events:\n" + "\n".join(f"    {_format_event(event)}" for event in events)


def _format_event(event: Event) -> str:
    parts = [f"{event.timestamp:%H:%M:%S.%f}"[:-3], event.event_type.value]
    if event.severity.value != "info":
        parts.append(f"[{event.severity.value}]")
    if event.task_id:
        parts.append(f"task={event.task_id}")
    if event.details:
        details = json.dumps(event.details, default=str, sort_keys=True)
        parts.append(details if len(details) <= 200 else details[:197] + "...")
    return " ".join(parts)
