"""Built-in executor: dispatches ready tasks to idle agents on the asyncio loop.

No polling anywhere: a change (task ready, agent idle, queue resumed) schedules one dispatch
pass with ``loop.call_soon``, so everything that changed in one loop iteration is matched in
one pass, in priority order. An agent that finishes a task takes its next one directly,
without going through the loop. Task timeouts live in one deadline heap served by a single
loop timer, retry backoffs are loop timers; both freeze while the queue or the task's agent
is paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from functools import partial
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import pydantic

from miminions.extras import requested_options
from miminions.kernel.clock import Deadline, Deadlines, FreezableTimer
from miminions.kernel.errors import (
    PLUGIN_ERRORS,
    ConfigurationError,
    PluginError,
    TaskCancelledError,
    TaskNotStartedError,
    TaskTimeoutError,
)
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.interfaces import RUN_GIVEN_UP, RUN_STOPPED_AT_ONCE
from miminions.kernel.loop_end import LoopEndWatch
from miminions.kernel.models import RuntimeConfig, Task, TaskStatus, fast_copy, task_snapshot
from miminions.kernel.plugins import refuse_coroutines
from miminions.kernel.scheduler import ANY_ROUTE, agent_route, group_route
from miminions.plugins.interpreter_settings import (
    DISPATCH_GC_THRESHOLD,
    DISPATCH_TIMER_SLACK_NS,
    MAX_GC_THRESHOLD,
    MAX_TIMER_SLACK_NS,
    hold_gc_threshold,
    hold_timer_slack,
)

if TYPE_CHECKING:
    from miminions.kernel.lifecycle import AgentSlot
    from miminions.kernel.runtime import AgentRuntime

#: Where plugin failures are logged (as the runtime logs a failing order key).
logger = logging.getLogger("miminions.runtime")

QUEUE_REASON = "\0queue"  # a freeze reason no agent id can collide with
HALT_REASON = "\0halted"  # a run halted at a safe point while its agent pauses
_YIELD_EVERY = 8  # consecutive tasks an agent may run before yielding to the loop
#: How much of an agent's recent task time its prefetch window may hold: a task taken ahead
#: of time waits about this long behind the agent's window at most, so short tasks travel
#: in batches while a task more urgent than the window's only waits for long ones' ends.
PREFETCH_BUDGET_SECONDS = 0.005
#: A task whose runtime worker is cancelled from outside this many times in a row fails
#: (an attempt used) instead of going straight back to the queue: an inline agent's code
#: that cancels the task it runs in looks just like that, and would run again and again.
OUTSIDE_CANCELS_BEFORE_FAILURE = 3
_DURATION_WEIGHT = 0.2  # of the latest run in an agent's average run time


def _group_reason(group: str) -> str:
    """The freeze reason of a paused group (no agent id starts with a NUL)."""
    return "\0group:" + group


class _Run(Deadline):
    """One task being run by one agent; it is also the task's timeout deadline.

    A run is registered the moment the task is taken, before its worker first runs, so a
    cancel, pause or stop in between sees it; the worker checks the run's reasons before it
    calls the agent.
    """

    __slots__ = (
        "abandoned",
        "began",
        "cancel_reason",
        "cancels_sent",
        "finished",
        "giving_back",
        "interrupt_reason",
        "running",
        "slot",
        "task",
        "task_id",
        "timed_out",
        "timeout",
        "waiters",
        "worker",
    )

    def __init__(self, slot: AgentSlot, task: Task, worker: asyncio.Task[None]) -> None:
        super().__init__()
        self.slot = slot
        self.task = task
        self.task_id = task.task_id
        self.worker = worker
        self.timeout: float | None = None
        self.cancel_reason: str | None = None
        self.interrupt_reason: str | None = None
        self.timed_out = False
        self.running = False  # inside host.run(): interrupting it needs a cancel
        self.cancels_sent = 0  # see stop_worker() and give_up()
        self.finished = False
        self.abandoned = False  # its agent did not stop when told; its outcome is ignored
        self.waiters: list[asyncio.Future[None]] | None = None
        self.began: float | None = None  # loop time its agent began it (as the head)
        self.giving_back = False  # its host was asked to give it back (see _give_back)

    def on_expiry(self) -> None:
        """The task's timeout passed: interrupt it (it then fails with TaskTimeoutError)."""
        if not self.finished and self.cancel_reason is None and self.interrupt_reason is None:
            self.timed_out = True
            self.stop_worker()

    def stop_worker(self, message: str | None = None) -> None:
        """Cancel the worker inside ``host.run()``, once: a timeout, a cancel and an
        interrupt may all ask, and a second cancel would cut short the host's own handling
        of the first (a process host waiting for its worker to confirm, an agent cleaning
        up), and leave the worker with a cancellation nobody takes back."""
        if self.running and not self.cancels_sent:
            self.cancels_sent = 1
            self.worker.cancel(message)

    def give_up(self, message: str = RUN_GIVEN_UP) -> bool:
        """Cancel the worker inside ``host.run()`` a second time, with
        :data:`~miminions.kernel.interfaces.RUN_GIVEN_UP`: the runtime gives up waiting for
        the task to wind down, and the host is to end it now (a process host kills its
        worker). False if there is nothing to cancel again."""
        if self.running and self.cancels_sent == 1 and not self.worker.done():
            self.cancels_sent = 2
            self.worker.cancel(message)
            return True
        return False

    async def wait(self) -> None:
        """Wait until the run has ended (futures are made only when someone waits)."""
        if self.finished:
            return
        future = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = []
        self.waiters.append(future)
        await asyncio.shield(future)

    async def ended_or_gone(self) -> None:
        """Wait until the run has ended, or its worker has without ending it (cancelled
        from outside while the loop ends: it books nothing, and nothing else ends it)."""
        if self.finished or self.worker.done():
            return
        ended = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait({ended, self.worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()

    def finish(self) -> None:
        self.finished = True
        for future in self.waiters or ():
            if not future.done():
                future.set_result(None)


class AsyncioExecutor:
    """The built-in :class:`~miminions.kernel.interfaces.Executor`."""

    def __init__(
        self,
        runtime: AgentRuntime,
        gc_threshold: int | EllipsisType | None = ...,
        timer_slack_ns: int | EllipsisType | None = ...,
    ) -> None:
        """``gc_threshold``, ``timer_slack_ns``: see :class:`ExecutorOptions`; ``...`` (the
        default) takes them from ``runtime.config.plugin_options["asyncio_executor"]``, so a
        subclass made with ``(runtime)`` honours the options too."""
        self._rt = runtime
        options = executor_options(runtime.config)
        #: The least first collector threshold while dispatching (see
        #: :mod:`miminions.plugins.interpreter_settings`); None leaves the collector alone.
        self.gc_threshold = options.gc_threshold if gc_threshold is ... else gc_threshold
        #: The most timer slack of the loop's thread while dispatching, in nanoseconds (see
        #: :mod:`miminions.plugins.interpreter_settings`); None leaves the slack alone.
        self.timer_slack_ns = options.timer_slack_ns if timer_slack_ns is ... else timer_slack_ns
        for name, most in (
            ("gc_threshold", MAX_GC_THRESHOLD),
            ("timer_slack_ns", MAX_TIMER_SLACK_NS),
        ):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most
            ):
                raise ConfigurationError(
                    f"{name} must be a positive int up to {most} or None, not {value!r}"
                )
        self._releases: list[Callable[[], None]] = []
        self._held_at_drain: list[str] = []  # prefetched tasks a drain gave back
        self._loop = asyncio.get_running_loop()
        self._sched = runtime.scheduler
        self._book = runtime.task_book
        self._agents = runtime.agent_book
        self._idle: dict[str, AgentSlot] = {}
        self._idle_by_group: dict[str, dict[str, AgentSlot]] = {}
        self._available: set[str] = set()
        self._runs: dict[str, _Run] = {}
        # Runs of each agent in dispatch order; the first (the head) is the one its host is
        # executing, the others wait in its prefetch window (see ``_window``).
        self._agent_runs: dict[str, list[_Run]] = {}
        # Each prefetching agent's average run time (seconds), which sizes its window.
        self._run_seconds: dict[str, float] = {}
        # Outside cancels in a row of each task's runs (see _after_outside_cancel).
        self._outside_cancels: dict[str, int] = {}
        self._interrupting: set[asyncio.Task[None]] = set()
        self._workers: set[asyncio.Task[None]] = set()
        #: The worker of each agent without a prefetch window, from its launch until it
        #: ends (after on_error): while it lives the agent is never made idle, so it never
        #: gets a second worker (two tasks at once, one task run twice).
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._retry_timers: dict[str, FreezableTimer] = {}
        self._paused_agents: set[str] = set()
        #: Agents running ``on_error`` for a task that ended (how many calls): they take no
        #: task until it returns.
        self.in_on_error: dict[str, int] = {}
        #: The run of each agent whose pause is in progress and whose task halted at a
        #: safe point (see halt_clocks).
        self._halted_runs: dict[str, _Run] = {}
        #: The route of each paused agent and group, with its freeze reason: the retry
        #: backoffs of tasks on that route are frozen.
        self._frozen_routes: dict[str, str] = {}
        self._queue_frozen = False
        self._accepting = False
        self._dispatch_scheduled = False
        pick = runtime.plugin_manager.hook.miminions_pick_agent
        self._pick_hook = pick if runtime.custom_hook("miminions_pick_agent") else None
        self._pick_failing = False  # the hook's failures are logged once per streak
        self._notify_timeout = runtime.config.shutdown_timeout_seconds
        self._deadlines = Deadlines(self._loop)
        #: From start() to close(): tells a program cancelling every task of the loop
        #: (asyncio.run ending, a shutdown handler) apart from one worker cancelled from
        #: outside while the runtime goes on (see _after_outside_cancel).
        self._loop_end = LoopEndWatch("miminions-executor-canary")
        self._closing = False  # close() began: its own cancels are not from outside

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Begin dispatching."""
        if not self._releases:
            if self.gc_threshold is not None:
                self._releases.append(hold_gc_threshold(self.gc_threshold))
            if self.timer_slack_ns is not None:
                self._releases.append(hold_timer_slack(self.timer_slack_ns))
        self._loop_end.start()
        self._accepting = True
        self.wake()

    async def drain(self, timeout_seconds: float, *, at_once: bool = False) -> list[str]:
        """Stop dispatching; let running tasks finish for ``timeout_seconds``; interrupt
        (and re-queue) the rest, ``at_once`` as :meth:`interrupt_agent`. Returns the ids of
        the interrupted tasks."""
        self._accepting = False
        # Tasks taken ahead of time and not begun go back to the queue: none begins now.
        self._held_at_drain = [
            run.task_id for runs in self._agent_runs.values() for run in runs[1:]
        ]
        self._give_back_windows("the runtime is shutting down; given back to the queue")
        # A run whose worker is gone (cancelled from outside) will not finish: not waited for.
        runs = [run for run in self._runs.values() if not run.worker.done()]
        if runs:
            waits = [asyncio.ensure_future(run.ended_or_gone()) for run in runs]
            _, pending = await asyncio.wait(waits, timeout=timeout_seconds)
            for waiting in pending:
                waiting.cancel()
        leftover = [run.task_id for run in self._runs.values()]
        await asyncio.gather(
            *(
                self._interrupt(run, "runtime shutting down", at_once=at_once)
                for run in list(self._runs.values())
            )
        )
        return leftover  # (close() adds those the windows gave back)

    def _given_back_at_drain(self, counted: list[str]) -> list[str]:
        """The tasks the drain gave back from prefetch windows that are re-queued (one its
        worker had begun ran on: not), but for those in ``counted``."""
        tasks = self._book.tasks
        return [
            task_id
            for task_id in self._held_at_drain
            if task_id not in counted and tasks[task_id].status is TaskStatus.PENDING
        ]

    async def close(self) -> list[str]:
        """Cancel timers and workers; nothing of the executor outlives this call. Returns
        the ids of the tasks still running, interrupted here (after a drain: none)."""
        self._accepting = False
        self._closing = True
        leftover = [run.task_id for run in self._runs.values()]
        # And what a drain gave back from prefetch windows (also one cut short: its stop
        # never got what it returned).
        leftover += self._given_back_at_drain(leftover)
        try:
            for timer in self._retry_timers.values():
                timer.cancel()
            self._retry_timers.clear()
            self._deadlines.close()
            await asyncio.gather(
                *(self._interrupt(run, "runtime closed") for run in list(self._runs.values()))
            )
            for worker in list(self._workers):
                worker.cancel()
            if self._workers:
                # Bounded: the worker of an abandoned run is stuck in agent code that
                # ignores cancellation; the stop must not wait for it for ever.
                done, stuck = await asyncio.wait(list(self._workers), timeout=self._notify_timeout)
                for worker in done:
                    if not worker.cancelled():
                        worker.exception()  # retrieved: it was reported when it happened
                if stuck:
                    logger.warning(
                        "%d task run(s) ignored cancellation and are left running "
                        "(abandoned: their outcome is ignored)",
                        len(stuck),
                    )
        finally:
            self._release_holds()
            await self._loop_end.close()
        return leftover

    def abandon(self) -> None:
        """The loop ended without :meth:`close` (nothing of the executor runs any more):
        give back what it holds process-wide (the collector's threshold, timer slack), which
        would otherwise stay held for the rest of the process."""
        self._accepting = False
        self._closing = True
        self._release_holds()

    def _release_holds(self) -> None:
        releases, self._releases = self._releases, []
        for release in releases:
            release()

    # ------------------------------------------------------------------ agents
    def agent_available(self, slot: AgentSlot) -> None:
        """``slot`` may take tasks (it started or resumed)."""
        self._available.add(slot.agent_id)
        if not self._agent_runs.get(slot.agent_id):
            self._make_idle(slot)
            self.wake()

    def agent_unavailable(self, slot: AgentSlot) -> None:
        """``slot`` takes no new task (pausing or stopping); a running task goes on. Tasks
        waiting in its prefetch window go back to the queue."""
        self._available.discard(slot.agent_id)
        self._leave_idle(slot)
        self._give_back_window(
            slot.agent_id, "its agent is pausing or stopping; given back to the queue"
        )

    def _give_back_windows(self, reason: str) -> None:
        """:meth:`_give_back_window` of every agent."""
        for agent_id in list(self._agent_runs):
            self._give_back_window(agent_id, reason)

    def _give_back_window(self, agent_id: str, reason: str) -> None:
        """Re-queue the tasks waiting in the agent's prefetch window (taken ahead of time,
        not begun), without using up an attempt; the task it is running goes on.

        A host with ``give_back`` (the ``process`` host) is asked first (see
        :meth:`_give_back`): its worker may have begun such a task already, as the task
        ahead ended, before the runtime heard of it.
        """
        for run in self._agent_runs.get(agent_id, [])[1:]:
            if run.giving_back:
                continue  # its host is asked already: that answer decides for every pause
            ask = (
                getattr(run.slot.host, "give_back", None) is not None
                and run.running
                and run.cancel_reason is None
                and run.interrupt_reason is None
                and not run.timed_out
            )
            if run.cancel_reason is None and run.interrupt_reason is None:
                # Set now, not when the interrupt first runs: a run that becomes its
                # agent's head in between must not begin (see _become_head).
                run.interrupt_reason = reason
            if ask:
                # Also set now: an outcome read before the host is asked is the task's own.
                run.giving_back = True
                interrupting = self._loop.create_task(self._give_back(run, reason))
            else:
                interrupting = self._loop.create_task(self._interrupt(run, reason, give_up=False))
            self._interrupting.add(interrupting)
            interrupting.add_done_callback(self._interrupting.discard)

    async def _give_back(self, run: _Run, reason: str) -> None:
        """Ask ``run``'s host to give it back for ``reason``.

        A task its worker had begun is not interrupted: it runs on as its agent's task,
        and its outcome counts (a failure too; see _run_one); cancelling it would run it a
        second time from its start. A task the host gives back is interrupted (its run
        ends with TaskNotStartedError: re-queued).
        """
        give_back = run.slot.host.give_back  # type: ignore[attr-defined]
        try:
            given = await give_back(run.task_id)
        except Exception:
            # Its worker is gone and cannot say: the run ends as the loss decides (a task
            # it never began comes back TaskNotStartedError: re-queued; the one it died
            # running fails as crashed, an attempt used). Cancelling the run now would
            # take that crash for a give-back. Interrupted only if it does not end.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.ended_or_gone(), self._notify_timeout)
            if run.finished:
                return
            given = True
        if given is True:
            await self._interrupt(run, reason, give_up=False)
            return
        # Its agent began it: it is the task its agent runs now, as if never given back.
        if not run.finished and run.interrupt_reason == reason:
            run.interrupt_reason = None
            runs = self._agent_runs.get(run.slot.agent_id)
            if runs and runs[0] is run and run.began is None:
                self._become_head(run)

    async def wait_agent_idle(self, agent_id: str, timeout_seconds: float) -> bool:
        """Wait up to ``timeout_seconds`` for the agent's running tasks to end."""
        runs = self._agent_runs.get(agent_id)
        if not runs:
            return True
        # (A run whose worker is gone ends only when settled: not waited for.)
        waits = [asyncio.ensure_future(run.ended_or_gone()) for run in runs]
        _, pending = await asyncio.wait(waits, timeout=timeout_seconds)
        for waiting in pending:
            waiting.cancel()
        return not pending

    async def interrupt_agent(self, agent_id: str, reason: str, *, at_once: bool = False) -> bool:
        """Interrupt the agent's running tasks (they are re-queued); False if it had none.
        ``at_once`` (a forced stop): a process agent's worker is killed at once if its task
        has not ended, instead of after the shutdown timeout."""
        runs = list(self._agent_runs.get(agent_id, ()))
        if not runs:
            return False
        await asyncio.gather(
            *(self._interrupt(run, reason, at_once=at_once) for run in reversed(runs))
        )
        return True

    # ------------------------------------------------------------------ tasks
    def wake(self) -> None:
        """Schedule one dispatch pass (coalesced)."""
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)

    def cancel_task(self, task_id: str, reason: str = "cancelled by user") -> bool:
        """Interrupt a running task; it ends cancelled. False if it is not running."""
        run = self._runs.get(task_id)
        if run is None:
            return False
        run.cancel_reason = reason  # wins over a timeout not yet reported (see _run_one)
        if run.worker.done():  # cancelled from outside as the loop ends: nobody else ends it
            if not run.finished:
                self._settle_unended(run, reason)
            return True
        run.stop_worker()
        return True

    def schedule_retry(self, task_id: str, delay: float) -> None:
        """Make ``task_id`` ready again after ``delay`` seconds of unfrozen time."""
        frozen = set()
        if self._queue_frozen:
            frozen.add(QUEUE_REASON)
        reason = self._frozen_routes.get(self._sched.route(task_id))
        if reason is not None:
            frozen.add(reason)
        self._retry_timers[task_id] = FreezableTimer(
            self._loop, delay, lambda: self._retry_due(task_id), frozen
        )

    def cancel_retry(self, task_id: str) -> None:
        """Forget the pending retry of ``task_id``."""
        timer = self._retry_timers.pop(task_id, None)
        if timer is not None:
            timer.cancel()

    def retry_remaining(self, task_id: str) -> float | None:
        """Seconds of backoff left for ``task_id``, or None when it is not waiting to retry."""
        timer = self._retry_timers.get(task_id)
        return None if timer is None else timer.remaining

    def pause_clocks(self, agent_id: str | None) -> None:
        """Freeze timeouts and backoffs affected by a paused agent (or, for None, the queue).

        For the queue this is also where the executor learns of ``pause_queue()``: the tasks
        in every prefetch window go back to the queue then, as no task is handed out, and
        so none begins, while the queue is paused (an agent's pause does the same to its
        own window, see :meth:`agent_unavailable`)."""
        self._set_frozen(agent_id, freeze=True)
        if agent_id is None:
            self._give_back_windows("the queue was paused; given back to the queue")

    def resume_clocks(self, agent_id: str | None) -> None:
        """Undo :meth:`pause_clocks`."""
        self._set_frozen(agent_id, freeze=False)

    def halt_clocks(self, agent_id: str, task_id: str) -> None:
        """The agent's running task ``task_id`` halted at a safe point for a pause still in
        progress: its timeout stops counting now rather than once ``on_pause`` has returned
        (F-25), until :meth:`unhalt_clocks` (the pause ended, done or abandoned)."""
        run = self._runs.get(task_id)
        if run is not None and run.slot.agent_id == agent_id and agent_id not in self._halted_runs:
            # (A process agent's next task may halt before the runtime has seen the one
            # ahead of it end: its clock, which starts then, starts frozen; see _begin.)
            self._halted_runs[agent_id] = run
            self._deadlines.freeze(run, HALT_REASON)

    def unhalt_clocks(self, agent_id: str) -> None:
        """Undo :meth:`halt_clocks` (a pause that completed has frozen the clock with
        :meth:`pause_clocks` by then)."""
        run = self._halted_runs.pop(agent_id, None)
        if run is not None:
            self._deadlines.thaw(run, HALT_REASON)

    def pause_group_clocks(self, group: str) -> None:
        """Freeze the retry backoffs of the tasks targeted at ``group``."""
        self._freeze_route(group_route(group), _group_reason(group), freeze=True)

    def resume_group_clocks(self, group: str) -> None:
        """Undo :meth:`pause_group_clocks`."""
        self._freeze_route(group_route(group), _group_reason(group), freeze=False)
        self.wake()

    # ------------------------------------------------------------------ internals
    def _set_frozen(self, agent_id: str | None, *, freeze: bool) -> None:
        if agent_id is None:
            self._queue_frozen = freeze
            for timer in self._retry_timers.values():
                (timer.freeze if freeze else timer.thaw)(QUEUE_REASON)
        else:
            if freeze:
                self._paused_agents.add(agent_id)
            else:
                self._paused_agents.discard(agent_id)
            self._freeze_route(agent_route(agent_id), agent_id, freeze=freeze)
            runs = self._agent_runs.get(agent_id)
            run = runs[0] if runs else None  # only the head's timeout is counting
            if run is not None:
                if freeze:
                    self._deadlines.freeze(run, agent_id)
                else:
                    self._deadlines.thaw(run, agent_id)
        if not freeze:
            self.wake()

    def _freeze_route(self, route: str, reason: str, *, freeze: bool) -> None:
        """Freeze (or thaw) for ``reason`` the retry backoffs of the tasks on ``route``."""
        if freeze:
            self._frozen_routes[route] = reason
        else:
            self._frozen_routes.pop(route, None)
        route_of = self._sched.route
        for task_id, timer in self._retry_timers.items():
            if route_of(task_id) == route:
                (timer.freeze if freeze else timer.thaw)(reason)

    def _retry_due(self, task_id: str) -> None:
        self._retry_timers.pop(task_id, None)
        self._book.retry_due(task_id)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if not self._accepting or self._rt.queue_paused or self.loop_ending():
            return
        if not self._idle:
            return
        sched = self._sched
        # The fronts of the routes an idle agent can serve, in one heap: each task handed
        # out costs a heap step, not a scan of every route (with a thousand agents, each
        # with tasks targeted at it, a scan per task made a pass quadratic).
        fronts = [
            front
            for front in sched.best_per_route(self._idle_routes())
            if self._has_candidate(front[2])
        ]
        heapq.heapify(fronts)
        while self._idle and fronts:
            key, seq, route = heapq.heappop(fronts)
            if not self._has_candidate(route):
                continue  # its agents were given tasks this pass
            front = sched.front(route)
            if front is None:
                continue
            if front[0] != key or front[1] != seq:  # changed meanwhile (a hook, an event)
                heapq.heappush(fronts, (front[0], front[1], route))
                continue
            task_id = front[2]
            slot = self._choose(task_id, route)
            sched.take_id(task_id)
            self._leave_idle(slot)
            self._launch(slot, task_id)
            front = sched.front(route)
            if front is not None:
                heapq.heappush(fronts, (front[0], front[1], route))

    def _idle_routes(self) -> list[str] | None:
        """The routes an idle agent serves (None: every route, when that is fewer)."""
        idle, groups = self._idle, self._idle_by_group
        if len(idle) + len(groups) >= self._sched.route_count:
            return None
        routes = [ANY_ROUTE]
        routes.extend(agent_route(agent_id) for agent_id in idle)
        routes.extend(group_route(group) for group, members in groups.items() if members)
        return routes

    def _has_candidate(self, route: str) -> bool:
        if not route:
            return True
        if route.startswith("g:"):
            return bool(self._idle_by_group.get(route[2:]))
        return route[2:] in self._idle

    def _candidates(self, route: str) -> list[AgentSlot]:
        """The idle agents that may run a task on ``route``, preferred first: in the order
        they became idle, except that for a task any agent may run, agents that a waiting
        task targeted at them (or their group) needs come last."""
        if not route:
            idle = list(self._idle.values())
            if len(idle) > 1 and self._sched.route_count > 1:
                needed = [self._needed_elsewhere(slot) for slot in idle]
                if any(needed):
                    free = [slot for slot, busy in zip(idle, needed, strict=True) if not busy]
                    return free + [slot for slot, busy in zip(idle, needed, strict=True) if busy]
            return idle
        if route.startswith("g:"):
            return list(self._idle_by_group[route[2:]].values())
        return [self._idle[route[2:]]]

    def _needed_elsewhere(self, slot: AgentSlot) -> bool:
        """True when a ready task only ``slot`` (or its group) may run is waiting: given
        untargeted work, it would leave that task waiting beside another idle agent."""
        front = self._sched.front
        return any(front(route) is not None for route in slot.routes if route != ANY_ROUTE)

    def _first_free_idle(self) -> AgentSlot:
        """The first of :meth:`_candidates` for a task any agent may run, without listing
        them all: the agent idle longest that no waiting targeted task needs (usually the
        first one looked at), else the one idle longest."""
        idle = self._idle
        first = next(iter(idle.values()))
        if len(idle) > 1 and self._sched.route_count > 1:  # else nothing can need it
            for slot in idle.values():
                if not self._needed_elsewhere(slot):
                    return slot
        return first

    def _choose(self, task_id: str, route: str) -> AgentSlot:
        if self._pick_hook is None:
            return self._first_free_idle() if not route else self._candidates(route)[0]
        candidates = self._candidates(route)
        try:
            chosen = self._pick_hook(
                # a copy sharing nothing with the live task (a plugin changing it in place
                # would change the task behind the store's back)
                task=task_snapshot(self._book.tasks[task_id]),
                candidates=[c.instance.model_copy() for c in candidates],
            )
            refuse_coroutines(chosen, "miminions_pick_agent")
            if chosen is not None:
                for slot in candidates:
                    if slot.agent_id == chosen:
                        self._pick_failing = False
                        return slot
                raise PluginError(
                    f"miminions_pick_agent returned {chosen!r} for task {task_id!r}, which "
                    "is not one of the idle candidates' ids"
                )
        except PLUGIN_ERRORS:
            # A broken plugin must not stall the queue: every later dispatch pass would
            # meet the same task first and fail the same way.
            if not self._pick_failing:
                self._pick_failing = True
                plugins = [impl.plugin_name for impl in self._pick_hook.get_hookimpls()]
                logger.exception(
                    "a miminions_pick_agent implementation failed (plugins: %s); tasks go to "
                    "the first candidate until it answers again",
                    plugins,
                )
            return candidates[0]
        self._pick_failing = False
        return candidates[0]  # every plugin passed: the documented default

    def _make_idle(self, slot: AgentSlot) -> None:
        if slot.agent_id not in self._available or slot.agent_id in self._serving:
            return
        self._idle[slot.agent_id] = slot
        if slot.spec.group:
            self._idle_by_group.setdefault(slot.spec.group, {})[slot.agent_id] = slot

    def _leave_idle(self, slot: AgentSlot) -> None:
        self._idle.pop(slot.agent_id, None)
        if slot.spec.group:
            group = self._idle_by_group.get(slot.spec.group)
            if group is not None:
                group.pop(slot.agent_id, None)

    def _launch(self, slot: AgentSlot, task_id: str) -> None:
        if _prefetch_limit(slot) == 1:
            worker = self._loop.create_task(self._work(slot, task_id))
            self._serving[slot.agent_id] = worker
        else:
            worker = self._loop.create_task(self._work_prefetched(slot, task_id))
        self._workers.add(worker)
        # (One callback, not two: each is a turn of the loop for every task a prefetching
        # agent runs.) Also when it is cancelled before its first step (its code never runs).
        worker.add_done_callback(partial(self._worker_ended, slot))
        self._begin(slot, task_id, worker)
        # A busy agent with room left in its window is not made idle: a free agent must
        # get the next task first. It refills its window itself as its tasks finish.

    def _begin(self, slot: AgentSlot, task_id: str, worker: asyncio.Task[None]) -> _Run:
        """Record that ``slot`` runs ``task_id`` now (synchronously, no await)."""
        book = self._book
        run = _Run(slot, book.tasks[task_id], worker)
        # Registered before the start is reported, so anyone reacting to TASK_STARTED
        # (a monitor, a cancel) already finds the run.
        self._runs[task_id] = run
        runs = self._agent_runs.setdefault(slot.agent_id, [])
        runs.append(run)
        head = len(runs) == 1
        task = book.started(task_id, slot.agent_id, begun=head)
        run.timeout = book.effective_timeout(task, slot.spec.limits)
        if head:
            self._become_head(run, begun=True)
        return run

    def _become_head(self, run: _Run, *, begun: bool = False) -> None:
        """``run`` is the task its agent executes now: its timeout starts counting (and,
        for one handed over ahead of time, its start is recorded now)."""
        slot = run.slot
        if not begun and (run.interrupt_reason is not None or run.cancel_reason is not None):
            # Taken ahead of time and being given back or cancelled: it never begins (no
            # start recorded, no timeout), whatever the order its worker ends in.
            return
        run.began = self._loop.time()
        if not begun:
            self._book.began(run.task_id)
        self._agents.task_started(slot, run.task_id)
        if run.timeout is not None:
            self._deadlines.start(run, run.timeout)
            if slot.agent_id in self._paused_agents:
                self._deadlines.freeze(run, slot.agent_id)
            if self._halted_runs and self._halted_runs.get(slot.agent_id) is run:
                self._deadlines.freeze(run, HALT_REASON)

    async def _work(self, slot: AgentSlot, task_id: str) -> None:
        agent_id = slot.agent_id
        worker = asyncio.current_task()
        try:
            await self._serve(slot, self._runs.get(task_id), worker)
        finally:
            if self._serving.get(agent_id) is worker:
                del self._serving[agent_id]
        self._make_idle(slot)
        if self._idle and self._accepting:
            self.wake()

    async def _serve(
        self, slot: AgentSlot, run: _Run | None, worker: asyncio.Task[Any] | None
    ) -> None:
        """Run ``run``, then the agent's next tasks one after another while it may take
        them (the worker of an agent without a prefetch window)."""
        agent_id = slot.agent_id
        # An agent whose tasks never suspend must not starve commits, other agents or the
        # application: after _YIELD_EVERY tasks in a row without the loop turning, it lets
        # the loop breathe. One whose tasks suspend anyway (I/O) is not held back by that.
        turned = _LoopTurn(self._loop)
        streak = 0
        while run is not None and worker is not None:
            await self._run_one(run)
            if turned.since_last_check():
                streak = 0
            else:
                streak += 1
                if streak >= _YIELD_EVERY:
                    await asyncio.sleep(0)
            if (
                not self._accepting
                or self._rt.queue_paused
                or agent_id not in self._available
                or self._serving.get(agent_id) is not worker  # given up on (see _interrupt)
                or self._loop_end.ending()
            ):
                break
            task_id = self._sched.take(slot.routes)
            run = None if task_id is None else self._begin(slot, task_id, worker)

    async def _work_prefetched(self, slot: AgentSlot, task_id: str) -> None:
        """Run one task of an agent with a prefetch window, then refill the window."""
        run = self._runs.get(task_id)
        if run is None or run.slot is not slot:
            return
        await self._run_one(run)
        agent_id = slot.agent_id
        if (
            self._accepting
            and not self._rt.queue_paused
            and agent_id in self._available
            and not self.loop_ending()
        ):
            window = self._window(slot)
            runs = self._agent_runs.setdefault(agent_id, [])
            # Tasks still ready now are those no free agent took (dispatch serves free
            # agents as soon as tasks become ready): prefetch them into the window.
            while len(runs) < window:
                if runs and not self._backlog_beyond_agents():
                    break  # other agents will want the waiting tasks when they finish
                next_id = self._sched.take(slot.routes)
                if next_id is None:
                    break
                self._leave_idle(slot)
                self._launch(slot, next_id)
        # An agent holding no task is idle whatever the queue's state, so dispatch finds it
        # when the queue resumes (_make_idle skips a paused or stopping agent).
        if not self._agent_runs.get(agent_id):
            self._make_idle(slot)
        if self._idle and self._accepting:
            self.wake()

    def _window(self, slot: AgentSlot) -> int:
        """How many tasks ``slot`` may hold now: the one it runs and the next, and more while
        they fit in :data:`PREFETCH_BUDGET_SECONDS` of its average run time, up to its
        host's ``prefetch``."""
        limit = _prefetch_limit(slot)
        average = self._run_seconds.get(slot.agent_id)
        if limit <= 2 or average is None:
            return min(limit, 2)
        return max(2, min(limit, 1 + int(PREFETCH_BUDGET_SECONDS / max(average, 1e-6))))

    def _note_run_time(self, agent_id: str, seconds: float) -> None:
        average = self._run_seconds.get(agent_id)
        self._run_seconds[agent_id] = (
            seconds if average is None else average + _DURATION_WEIGHT * (seconds - average)
        )

    def _backlog_beyond_agents(self) -> bool:
        """Whether more tasks wait than the other agents will take when they finish: only
        then is taking one ahead of time a gain rather than keeping it from a free agent."""
        waiting = self._book.status_counts[TaskStatus.PENDING]
        return waiting > len(self._available) - 1

    async def _run_one(self, run: _Run) -> None:
        slot, task, task_id = run.slot, run.task, run.task_id
        book = self._book
        ok: bool | None = False  # None: given back to the queue, counted neither way
        error: BaseException | None = None
        taken_back = False  # the cancel this run sent has been taken back
        returned = False  # the host returned the task's result
        # Cancels already counted on the worker (a TaskGroup of an earlier task can leave
        # one behind on Python 3.11) are not a cancel of this run.
        cancels_before = run.worker.cancelling()
        try:
            if run.cancel_reason is None and run.interrupt_reason is None and not run.timed_out:
                run.running = True
                result = await slot.host.run(fast_copy(task), task.checkpoint)
                returned = True
            else:
                result = None  # stopped before the agent was called
        except (asyncio.CancelledError, TaskCancelledError) as exc:
            if not (run.timed_out or run.cancel_reason or run.interrupt_reason):
                if run.worker.cancelling() > cancels_before:
                    # The worker itself is cancelled, from outside. Nothing is booked now,
                    # while the loop may be going down (a program cancelling every task as
                    # it ends); once the worker has ended, _after_outside_cancel decides.
                    raise
                # The agent's own code raised CancelledError: that is its failure.
                error = TaskCancelledError(f"the agent's code raised {type(exc).__name__}")
            elif isinstance(exc, asyncio.CancelledError):
                for _ in range(max(1, run.cancels_sent)):
                    run.worker.uncancel()
                taken_back = True
                if run.worker.cancelling() > cancels_before or self.loop_ending():
                    # Cancelled from outside too (a program cancelling every task as it
                    # ends): nothing is booked now; a stop settles the run (_interrupt).
                    raise
        except Exception as exc:
            if (
                not (run.timed_out or run.cancel_reason or run.interrupt_reason)
                and self.loop_ending()
            ):
                # The program is cancelling every task, and the agent's code turned its
                # CancelledError into another error (a cleanup that failed): still that
                # cancel, not the agent's failure; nothing is booked now (see above).
                raise asyncio.CancelledError() from exc
            error = exc
        finally:
            run.running = False
            self._deadlines.clear(run)
            if not taken_back:
                # The agent's code swallowed the cancel (it returned, or raised something
                # else): take it back, or this worker's next task would take its own
                # CancelledError for the executor being cancelled, and never end.
                for _ in range(run.cancels_sent):
                    if run.worker.cancelling():
                        run.worker.uncancel()
        try:
            if run.abandoned:
                return  # already reported when it was abandoned
            if (
                returned
                and getattr(slot.host, "results_beat_late_cancels", False)
                and (run.began is None or (run.cancel_reason is None and not run.timed_out))
            ):
                # The task ran to its end in the worker although it was taken back: handed over
                # ahead of time, before the runtime saw it begin (it began as the task ahead
                # ended, before the cancel reached it), or interrupted by a stop or a pause as
                # it ended. Its result stands; given back to the queue, it would run a second
                # time. (A cancel or a timeout of a task the runtime saw begin keeps its outcome:
                # a timeout is a timeout even if the agent's code then returned.)
                if run.began is None:
                    book.began(task_id)
                error = book.completed(task_id, result)
                ok = error is None
            elif run.cancel_reason is not None:
                # An explicit cancel wins over a timeout that fired while the agent was still
                # winding down (not reported yet): cancel_task() promises a cancelled task,
                # and the timeout would retry it.
                book.cancelled(task_id, run.cancel_reason)
                error = None  # whatever its cleanup raised: on_error is not for cancellations
            elif run.timed_out:  # whatever the agent's code made of the cancel
                error = self._timeout_error(run)
                book.failed(task_id, error, timed_out_after=run.timeout)
            elif (
                run.giving_back
                and error is not None
                and not isinstance(error, TaskNotStartedError)
                and not taken_back
            ):
                # Its host was asked to give it back, but its agent had begun it (a host that
                # gives back a task it did not begin says so with TaskNotStartedError): the
                # failure is the task's own, as if it had never been asked.
                if run.began is None:
                    book.began(task_id)
                book.failed(task_id, error)
            elif run.interrupt_reason is not None:
                book.interrupted(task_id, run.interrupt_reason)
                error, ok = None, None  # not the agent's failure: no on_error
            elif isinstance(error, TaskNotStartedError):
                book.interrupted(task_id, str(error))
                error, ok = None, None  # not the agent's doing: no on_error
            elif error is not None:
                book.failed(task_id, error)
            else:
                error = book.completed(task_id, result)
                ok = error is None
            self._end_run(run, ok)
            if error is not None:
                await self._notify_error(slot, error, task)
        finally:
            # The error's traceback holds this frame: a reference cycle that would keep it,
            # and all the task's code held (an open watch), until the cyclic collector runs.
            error = None

    @staticmethod
    def _timeout_error(run: _Run) -> TaskTimeoutError:
        return TaskTimeoutError(f"task {run.task_id} timed out after {run.timeout} s")

    def _end_run(self, run: _Run, ok: bool | None) -> None:
        if self._runs.get(run.task_id) is run:  # never another (later) run of the task
            del self._runs[run.task_id]
        if self._outside_cancels:
            self._outside_cancels.pop(run.task_id, None)
        agent_id = run.slot.agent_id
        runs = self._agent_runs.get(agent_id)
        was_head = bool(runs) and runs[0] is run  # type: ignore[index]
        if runs is not None and run in runs:
            runs.remove(run)
            if not runs:
                del self._agent_runs[agent_id]
        self._agents.task_ended(run.slot, ok, current=was_head)
        if was_head and run.began is not None:
            self._note_run_time(agent_id, self._loop.time() - run.began)
        if was_head and runs:
            self._become_head(runs[0])
        run.finish()

    async def _notify_error(self, slot: AgentSlot, error: BaseException, task: Task) -> None:
        # The agent takes its next task once on_error is done (explain() says so meanwhile).
        in_on_error = self.in_on_error
        in_on_error[slot.agent_id] = in_on_error.get(slot.agent_id, 0) + 1
        try:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(
                    slot.host.notify_error(error, fast_copy(task)), self._notify_timeout
                )
        finally:
            if in_on_error[slot.agent_id] == 1:
                del in_on_error[slot.agent_id]
            else:
                in_on_error[slot.agent_id] -= 1

    async def _interrupt(
        self, run: _Run, reason: str, *, give_up: bool = True, at_once: bool = False
    ) -> None:
        """Stop ``run`` for ``reason`` (it goes back to the queue, unless it was being
        cancelled or timed out). ``give_up``: a stop's, which gives up waiting for a task
        that ignores its cancel after the shutdown timeout (``at_once``, a forced stop: a
        process agent's run at once); otherwise (a prefetch window given back on a pause)
        a process agent's run is waited for until its host ends it (its cancel grace, then
        a kill), and only an agent sharing the runtime's process is given up on."""
        if run.cancel_reason is None:
            run.interrupt_reason = reason
        if run.worker.done():
            # Its worker was cancelled from outside (a loop cancelling every task) and
            # will not end it: settle it now instead of waiting for it.
            if not run.finished:
                self._settle_unended(run, f"{reason}; the runtime's worker running it was gone")
            return
        if at_once and run.running and run.slot.host.process_id is not None:
            # A forced stop: the worker is killed now if the task has not ended yet.
            if run.cancels_sent:
                run.give_up(RUN_STOPPED_AT_ONCE)
            else:
                run.stop_worker(RUN_STOPPED_AT_ONCE)
        else:
            run.stop_worker()
        try:
            # (Also when its worker ends without ending it: cancelled from outside too, with
            # the loop ending, it books nothing; it is settled just below.)
            await asyncio.wait_for(run.ended_or_gone(), self._notify_timeout)
        except TimeoutError:
            # The agent's code ignores cancellation (it caught CancelledError or blocks in
            # a thread): give up on it, re-queue the task and free the runtime. A host whose
            # agent runs in a process of its own ends the task first when cancelled again
            # (it kills the worker): the task must not go back to the queue, and be run by
            # another agent, while that worker may still be running it.
            if not run.finished and run.running and run.slot.host.process_id is not None:
                if not give_up:
                    await run.ended_or_gone()
                elif run.give_up():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.ended_or_gone(), self._notify_timeout)
            if not run.finished:
                run.abandoned = True
                self._settle_unended(
                    run, f"{reason}; the agent did not stop, its run was abandoned", ok=False
                )
                agent_id = run.slot.agent_id
                if self._serving.get(agent_id) is run.worker:
                    # Its worker is stuck in the agent's code: it no longer counts as the
                    # agent's worker (a restarted agent gets a new one), and takes no task
                    # if it ever returns (see _serve).
                    del self._serving[agent_id]
        else:
            if not run.finished:  # its worker ended without ending it (see above)
                self._settle_unended(run, f"{reason}; the runtime's worker running it was gone")

    def _worker_ended(self, slot: AgentSlot, worker: asyncio.Task[Any]) -> None:
        """A worker of ``slot`` is done. One that ended cancelled was cancelled from outside
        (the executor takes its own cancels of a run back in _run_one), or by close()."""
        self._workers.discard(worker)
        if not worker.cancelled():
            return
        if self._serving.get(slot.agent_id) is worker:  # (cancelled before its first step)
            del self._serving[slot.agent_id]
        for run in self._agent_runs.get(slot.agent_id, ()):
            if run.worker is worker and not run.finished:
                # Nothing runs it any more: its timeout no longer counts (a stop, or the
                # code below, settles it).
                self._deadlines.clear(run)
        self._after_outside_cancel(slot, worker)

    def loop_ending(self) -> bool:
        """Whether the program is cancelling every task of the loop (``asyncio.run``
        ending, a shutdown handler), as far as the executor has been running to see it
        (see :class:`~miminions.kernel.loop_end.LoopEndWatch`)."""
        return self._loop_end.ending()

    def _after_outside_cancel(self, slot: AgentSlot, worker: asyncio.Task[Any]) -> None:
        """A worker of ``slot`` ended, cancelled from outside (wherever it was: in the
        agent's code, its on_error, between two tasks).

        When the program is cancelling every task of the loop (the canary was cancelled
        too), nothing is touched: the loop may be ending, and a stop gives the tasks back
        (see _interrupt). Otherwise the runtime goes on: the task the worker was running
        goes back to the queue now (no attempt used up; also during a stop, whose drain
        would wait for it in vain), and, unless a stop is under way, the agent may take
        tasks again.
        """
        if self._closing or not self._loop_end.started or self.loop_ending():
            return
        agent_id = slot.agent_id
        for run in [r for r in self._agent_runs.get(agent_id, ()) if r.worker is worker]:
            if run.finished:
                continue
            task_id = run.task_id
            count = self._outside_cancels.get(task_id, 0) + 1
            if (
                count >= OUTSIDE_CANCELS_BEFORE_FAILURE
                and run.cancel_reason is None
                and not run.timed_out
            ):
                logger.warning(
                    "the worker running task %s for agent %s was cancelled from outside the "
                    "runtime %d times in a row; the task fails (does its code cancel the "
                    "task it runs in?)",
                    task_id,
                    agent_id,
                    count,
                )
                self._deadlines.clear(run)
                self._book.failed(
                    task_id,
                    TaskCancelledError(
                        f"the runtime's worker running it was cancelled from outside {count} "
                        "times in a row (its code may cancel the task it runs in)"
                    ),
                )
                self._end_run(run, ok=False)
                continue
            logger.warning(
                "the worker running task %s for agent %s was cancelled from outside the "
                "runtime; the task goes back to the queue (unless it was being cancelled or "
                "had timed out)",
                task_id,
                agent_id,
            )
            self._settle_unended(run, "the runtime's worker running it was cancelled from outside")
            if run.cancel_reason is None and not run.timed_out:  # back in the queue
                self._outside_cancels[task_id] = count  # after _end_run, which forgets it
        if self._accepting and not self._agent_runs.get(agent_id):
            self._make_idle(slot)
            self.wake()

    def _settle_unended(self, run: _Run, reason: str, ok: bool | None = None) -> None:
        """Book the outcome of a run that nobody will end, and end it. What the run was
        stopped for first decides, as when it ends (_run_one): a cancelled or timed-out
        task must not go back to the queue and run again."""
        self._deadlines.clear(run)
        if run.cancel_reason is not None:
            self._book.cancelled(run.task_id, run.cancel_reason)
        elif run.timed_out:
            self._book.failed(run.task_id, self._timeout_error(run), timed_out_after=run.timeout)
        else:
            self._book.interrupted(run.task_id, reason)
        self._end_run(run, ok=ok)


class _LoopTurn:
    """Tells whether the event loop ran other callbacks since the last check (the code
    checking suspended in between), at the cost of one ``call_soon`` per turn seen."""

    __slots__ = ("_loop", "_turned")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._turned = False
        loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._turned = True

    def since_last_check(self) -> bool:
        """True if the loop turned since the previous call (or since creation)."""
        if not self._turned:
            return False
        self._turned = False
        self._loop.call_soon(self._turn)
        return True


def _prefetch_limit(slot: AgentSlot) -> int:
    """The most tasks the agent's host takes at once (``prefetch``; 1 unless it says so)."""
    prefetch = getattr(slot.host, "prefetch", 1)
    return prefetch if isinstance(prefetch, int) and prefetch > 1 else 1


@hookimpl
def miminions_configure(config: RuntimeConfig) -> None:
    """Fail the runtime's start on a bad ``asyncio_executor`` section before anything is
    built or stored (also when another executor plugin replaces this one)."""
    executor_options(config)


@hookimpl(trylast=True)  # built-in: any other executor plugin wins
def miminions_make_executor(runtime: AgentRuntime) -> AsyncioExecutor:
    """Provide the built-in asyncio executor, with the options of
    ``runtime.config.plugin_options["asyncio_executor"]`` (:class:`ExecutorOptions`)."""
    return AsyncioExecutor(runtime)


def executor_options(config: RuntimeConfig) -> ExecutorOptions:
    """The validated ``plugin_options["asyncio_executor"]`` section (defaults without one).

    :raises ConfigurationError: the section holds an unknown option or a bad value.
    """
    return requested_options(config, "asyncio_executor", ExecutorOptions) or ExecutorOptions()


class ExecutorOptions(pydantic.BaseModel):
    """``plugin_options["asyncio_executor"]``, while the executor dispatches (see
    :mod:`miminions.plugins.interpreter_settings`): ``gc_threshold`` is the least first
    threshold of the cyclic garbage collector; ``timer_slack_ns`` the most timer slack of
    the loop's thread, in nanoseconds (Linux; how late the kernel may end the loop's waits
    for its timers). None leaves the setting alone."""

    model_config = pydantic.ConfigDict(extra="forbid")

    # Strict: True is not 1, nor "1000" a number.
    gc_threshold: pydantic.StrictInt | None = pydantic.Field(
        DISPATCH_GC_THRESHOLD, gt=0, le=MAX_GC_THRESHOLD
    )
    timer_slack_ns: pydantic.StrictInt | None = pydantic.Field(
        DISPATCH_TIMER_SLACK_NS, gt=0, le=MAX_TIMER_SLACK_NS
    )
