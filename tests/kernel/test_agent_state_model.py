"""Model-based test of the agent state machine on a real runtime (R-05, F-04, F-05, F-08, F-09).

A hypothesis ``RuleBasedStateMachine`` drives an :class:`AgentRuntime` (inline agents, a
temporary database per example, ``max_concurrent_agents`` 1 to 3) with random lifecycle
calls — start, pause, resume, stop (graceful or forced), the same by group, two calls on one
agent at once, hooks switched to fail, runtime restarts — while tasks are submitted to an
agent, a group or anyone, released, cancelled, and the queue is paused and resumed. A plain
reference model keeps each agent's expected status from ``ALLOWED_FROM``: a call allowed in
the current state must succeed and lead to the expected state; a call that is not allowed
must raise ``InvalidStateError`` and change nothing. After every step the runtime must agree
with the model (statuses, slots in use, queued starts, what ``on_resume`` received) and no
task may be lost, run by an agent that is not running, or left waiting for a prerequisite
that ended. At the end the gates open, the runtime stops, a new runtime on the same database
must see every task, and taking turns the agents must complete all that were not cancelled.

The stateful test is synchronous; the machine owns one event loop (``asyncio.Runner``) and
bounds every call with a timeout, so a hang fails the example instead of the whole run.
The plain tests at the end are minimal reproductions of what the machine found."""

from __future__ import annotations

import asyncio
import functools
import itertools
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from miminions import (
    AgentHookError,
    AgentInstance,
    AgentRuntime,
    AgentStatus,
    BaseAgent,
    InvalidStateError,
    ResourceLimits,
    RuntimeConfig,
    Task,
    TaskStatus,
)
from miminions.kernel.supervisor import ALLOWED_FROM

S = AgentStatus
T = TypeVar("T")

GATED_A, GATED_B, QUICK = "gated-a", "gated-b", "quick"
NAMES = (GATED_A, GATED_B, QUICK)  # also the registration order
TEAM = "team"
GROUP_OF: dict[str, str | None] = {GATED_A: TEAM, GATED_B: None, QUICK: TEAM}
TEAM_MEMBERS = [name for name in NAMES if GROUP_OF[name] == TEAM]

CALL_TIMEOUT = 5.0  # any single call taking longer than this is a hang
PAUSE_TIMEOUT = 2.0  # our agents reach a safe point every few milliseconds
STOP_TIMEOUT = 0.05  # graceful stops: a gated task that is not released is interrupted
SETTLE_TIMEOUT = 2.0  # background starts (a queued agent taking a freed slot)

# Shrinking a failure runs the machine hundreds of times; give it room to report the
# minimal example instead of being cut off by the suite-wide 120 s timeout.
pytestmark = pytest.mark.timeout(600)
TASK_STATUSES = frozenset(TaskStatus)
FINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# What the agents read and record. Reset for every example (see AgentMachine.__init__).
RELEASED: set[str] = set()  # names of tasks whose gate is open
BREAK_START: set[str] = set()  # agents whose next on_start raises
BREAK_PAUSE: set[str] = set()  # agents whose next on_pause raises
BREAK_RESUME: set[str] = set()  # agents whose next on_resume raises
PAUSE_STATES: dict[str, list[Any]] = {}  # every state each agent's on_pause returned
RESUMED_WITH: dict[str, list[Any]] = {}  # every state each agent's on_resume received
_SEQ = itertools.count()


def reset_records() -> None:
    for record in (RELEASED, BREAK_START, BREAK_PAUSE, BREAK_RESUME, PAUSE_STATES, RESUMED_WITH):
        record.clear()


class HookFailure(RuntimeError):
    """Raised by a hook that a rule switched to fail."""


class ModelAgent(BaseAgent):
    """Lifecycle hooks that can be switched to fail, and a pause state worth checking."""

    async def on_start(self) -> None:
        if self.context.name in BREAK_START:
            BREAK_START.discard(self.context.name)
            raise HookFailure(f"{self.context.name}: on_start switched to fail")

    async def on_pause(self) -> dict[str, Any]:
        name = self.context.name
        if name in BREAK_PAUSE:
            BREAK_PAUSE.discard(name)
            raise HookFailure(f"{name}: on_pause switched to fail")
        state = {"agent": name, "seq": next(_SEQ), "nested": {"items": [1, "two", None, 3.5]}}
        PAUSE_STATES.setdefault(name, []).append(state)
        return state

    async def on_resume(self, state: dict[str, Any]) -> None:
        if self.context.name in BREAK_RESUME:
            BREAK_RESUME.discard(self.context.name)
            raise HookFailure(f"{self.context.name}: on_resume switched to fail")
        RESUMED_WITH.setdefault(self.context.name, []).append(state)


class GatedAgent(ModelAgent):
    """Works on a task at a checkpoint loop until its name is in ``RELEASED``."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        steps = 0
        while task.name not in RELEASED:
            await self.context.checkpoint()
            steps += 1
            await asyncio.sleep(0.002)
        return {"by": self.context.name, "steps": steps}


class QuickAgent(ModelAgent):
    """Finishes every task at once."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {"by": self.context.name}


AGENT_CLASSES: dict[str, type[BaseAgent]] = {
    GATED_A: GatedAgent,
    GATED_B: GatedAgent,
    QUICK: QuickAgent,
}

agent_names = st.sampled_from(NAMES)
sometimes = st.sampled_from([False, False, False, True])  # a hook switched to fail
lifecycle_ops = st.sampled_from(["start", "pause", "resume", "stop"])


def guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Remember that a step failed, so teardown only cleans up instead of checking more."""

    @functools.wraps(method)
    def wrapper(self: AgentMachine, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.broken = True
            raise

    return wrapper


class AgentMachine(RuleBasedStateMachine):
    """R-05: the runtime's agents follow the reference model through random lifecycle calls."""

    def __init__(self) -> None:
        super().__init__()
        for record in (
            RELEASED,
            BREAK_START,
            BREAK_PAUSE,
            BREAK_RESUME,
            PAUSE_STATES,
            RESUMED_WITH,
        ):
            record.clear()
        self.runner = asyncio.Runner()
        self.tmp = Path(tempfile.mkdtemp(prefix="miminions-agent-model-"))
        self.rt: AgentRuntime | None = None
        self.broken = False
        self.limit = 3
        self.ids: dict[str, str] = {}
        # The reference model.
        self.status: dict[str, AgentStatus] = {}
        self.live: dict[str, bool] = {}  # holds an agent slot (its host is started)
        self.queue: list[str] = []  # queued starts, in order
        self.queued_resume: dict[str, bool] = {}  # the queued start resumes a restored pause
        self.break_start: set[str] = set()
        self.expected_resumes: dict[str, list[Any]] = {name: [] for name in NAMES}
        self.pauses: dict[str, int] = dict.fromkeys(NAMES, 0)  # successful pauses so far
        self.tasks: dict[str, str] = {}  # task id -> task name, in submit order
        self.route: dict[str, str | None] = {}  # task id -> agent name, TEAM or None
        self.final_seen: dict[str, TaskStatus] = {}
        self.deps: dict[str, list[str]] = {}  # task id -> its prerequisites
        self.cancelled: set[str] = set()  # tasks a cancel_task call cancelled
        self.queue_paused = False
        self.launches = 0  # queued starts the model has let into a freed slot
        self.log: list[str] = []  # what happened, for failure messages

    # ------------------------------------------------------------------ plumbing
    def call(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        """Run one async call on the machine's loop; a call that hangs fails the example."""

        async def bounded() -> T:
            async with asyncio.timeout(CALL_TIMEOUT) as scope:
                try:
                    return await make()
                except TimeoutError:
                    if scope.expired():
                        raise AssertionError(
                            f"{what} did not return within {CALL_TIMEOUT} s (hang); "
                            f"steps so far: {self.log}"
                        ) from None
                    raise

        self.log.append(what)
        return self.runner.run(bounded())

    @property
    def runtime(self) -> AgentRuntime:
        assert self.rt is not None
        return self.rt

    def config(self) -> RuntimeConfig:
        return RuntimeConfig(
            storage_path=str(self.tmp / "runtime.db"),
            default_isolation="inline",
            limits=ResourceLimits(max_concurrent_agents=self.limit),
            retry_backoff_base_seconds=0.01,
            retry_backoff_max_seconds=0.05,
            shutdown_timeout_seconds=STOP_TIMEOUT,
            agent_start_timeout_seconds=CALL_TIMEOUT / 2,
        )

    async def open_runtime(self) -> AgentRuntime:
        rt = AgentRuntime(config=self.config(), disable=["logging_monitor"])
        await rt.start()
        for name in NAMES:
            agent_id = await rt.register_agent(name, AGENT_CLASSES[name], group=GROUP_OF[name])
            if name in self.ids:
                assert agent_id == self.ids[name], f"{name} got a new id after a restart"
            self.ids[name] = agent_id
        return rt

    def actual(self, name: str) -> AgentInstance:
        return self.runtime.get_agent_status(self.ids[name])

    def active(self) -> int:
        return sum(self.live.values())

    def quiet(self) -> bool:
        """The runtime shows the model's statuses and no lifecycle work is under way (a
        background start holds its agent's lock until it has finished, also after its
        status already shows)."""
        book = self.runtime.agent_book
        return all(self.actual(name).status is self.status[name] for name in NAMES) and not any(
            slot.lock.locked() for slot in book.slots.values()
        )

    def settle(self) -> None:
        """Let background work (a queued agent taking a freed slot, the rest of a group
        call that raised) finish before the runtime is compared with the model."""

        async def wait() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SETTLE_TIMEOUT
            while loop.time() < deadline:
                if self.quiet():
                    return
                await asyncio.sleep(0.002)

        if not self.quiet():
            self.runner.run(wait())

    # ------------------------------------------------------------------ model transitions
    def model_start(self, name: str, *, resume: bool) -> AgentStatus:
        """The agent asks for a slot (start, or resume of a pause restored from the store)."""
        if self.active() >= self.limit:
            self.status[name] = S.QUEUED
            self.queue.append(name)
            self.queued_resume[name] = resume
        else:
            self.model_launch(name, resume=resume)
        return self.status[name]

    def model_launch(self, name: str, *, resume: bool) -> None:
        """The agent's host starts in a free slot: on_start, then on_resume if resuming."""
        if name in self.break_start:
            self.break_start.discard(name)
            self.status[name] = S.FAILED
            self.live[name] = False
            self.model_promote()
            return
        self.status[name] = S.RUNNING
        self.live[name] = True
        if resume:
            self.expected_resumes[name].append(self.paused_state(name))

    def model_release_slot(self, name: str, status: AgentStatus) -> None:
        self.status[name] = status
        self.live[name] = False
        self.model_promote()

    def model_promote(self) -> None:
        """Queued starts take free slots in FIFO order."""
        while self.queue and self.active() < self.limit:
            name = self.queue.pop(0)
            self.launches += 1
            self.model_launch(name, resume=self.queued_resume.pop(name))

    def model_pause(self, name: str) -> None:
        self.status[name] = S.PAUSED
        self.pauses[name] += 1

    def paused_state(self, name: str) -> Any:
        """What the agent's latest successful on_pause returned: on_resume must get it."""
        return PAUSE_STATES[name][self.pauses[name] - 1]

    def model_resume(self, name: str) -> None:
        if self.live[name]:  # paused in this run: on_resume, and it runs on
            self.status[name] = S.RUNNING
            self.expected_resumes[name].append(self.paused_state(name))
        else:  # paused before a restart: it needs a slot, then on_start and on_resume
            self.model_start(name, resume=True)

    def model_stop(self, name: str) -> None:
        if self.status[name] is S.QUEUED:
            self.queue.remove(name)
            self.queued_resume.pop(name)
            self.status[name] = S.STOPPED
        elif not self.live[name]:
            self.status[name] = S.STOPPED  # a pause restored from the store, never started
        else:
            self.model_release_slot(name, S.STOPPED)

    def model_apply(self, op: str, name: str) -> None:
        """A successful lifecycle call (no hook fails)."""
        if op == "start":
            self.model_start(name, resume=False)
        elif op == "pause":
            self.model_pause(name)
        elif op == "resume":
            self.model_resume(name)
        else:
            self.model_stop(name)

    def lifecycle_call(self, op: str, name: str, graceful: bool = True) -> Awaitable[AgentInstance]:
        rt, agent_id = self.runtime, self.ids[name]
        if op == "start":
            return rt.start_agent(agent_id)
        if op == "pause":
            return rt.pause_agent(agent_id, timeout_seconds=PAUSE_TIMEOUT)
        if op == "resume":
            return rt.resume_agent(agent_id)
        return rt.stop_agent(agent_id, graceful=graceful, timeout_seconds=STOP_TIMEOUT)

    def expect_rejected(self, make: Callable[[], Awaitable[Any]], what: str, name: str) -> None:
        before = self.actual(name)
        with pytest.raises(InvalidStateError):
            self.call(make, what)
        after = self.actual(name)
        assert after.status is before.status, f"{what} was rejected but changed the status"

    def check_returned(self, returned: AgentInstance, name: str, what: str) -> None:
        assert returned.status is self.status[name], (
            f"{what} returned status {returned.status.value}, the model expects "
            f"{self.status[name].value}; steps: {self.log}"
        )

    # ------------------------------------------------------------------ setup
    @initialize(limit=st.integers(1, 3))
    @guarded
    def open(self, limit: int) -> None:
        self.limit = limit
        self.rt = self.call(self.open_runtime, f"open runtime (max_concurrent_agents={limit})")
        for name in NAMES:
            self.status[name] = S.REGISTERED
            self.live[name] = False

    # ------------------------------------------------------------------ agent rules
    @rule(name=agent_names, broken=sometimes)
    @guarded
    def start_agent(self, name: str, broken: bool) -> None:
        """F-04, F-08: start; beyond max_concurrent_agents the start is queued."""
        what = f"start {name}" + (" (on_start fails)" if broken else "")
        if self.status[name] not in ALLOWED_FROM["start"]:
            self.expect_rejected(lambda: self.runtime.start_agent(self.ids[name]), what, name)
            return
        if broken:
            BREAK_START.add(name)
            self.break_start.add(name)
        returned = self.call(lambda: self.runtime.start_agent(self.ids[name]), what)
        self.model_start(name, resume=False)
        self.check_returned(returned, name, what)

    @rule(name=agent_names, broken=sometimes)
    @guarded
    def pause_agent(self, name: str, broken: bool) -> None:
        """F-04, F-25: pause returns once the agent is at a safe point; a failing on_pause
        fails the agent and frees its slot."""
        what = f"pause {name}" + (" (on_pause fails)" if broken else "")

        def pause() -> Awaitable[AgentInstance]:
            return self.runtime.pause_agent(self.ids[name], timeout_seconds=PAUSE_TIMEOUT)

        if self.status[name] not in ALLOWED_FROM["pause"]:
            self.expect_rejected(pause, what, name)
            return
        if broken:
            BREAK_PAUSE.add(name)
            with pytest.raises(AgentHookError):
                self.call(pause, what)
            self.model_release_slot(name, S.FAILED)
            return
        returned = self.call(pause, what)
        self.model_pause(name)
        self.check_returned(returned, name, what)

    @rule(name=agent_names, broken=sometimes)
    @guarded
    def resume_agent(self, name: str, broken: bool) -> None:
        """F-04, F-09: resume; on_resume gets exactly what on_pause returned, also for a
        pause restored after a restart (which needs a slot first). A failing on_resume
        fails the agent and frees its slot."""
        what = f"resume {name}"
        if self.status[name] not in ALLOWED_FROM["resume"]:
            self.expect_rejected(lambda: self.runtime.resume_agent(self.ids[name]), what, name)
            return
        if broken and self.live[name]:
            BREAK_RESUME.add(name)
            with pytest.raises(AgentHookError):
                self.call(lambda: self.runtime.resume_agent(self.ids[name]), what + " (fails)")
            self.model_release_slot(name, S.FAILED)
            return
        returned = self.call(lambda: self.runtime.resume_agent(self.ids[name]), what)
        self.model_resume(name)
        self.check_returned(returned, name, what)

    @rule(name=agent_names, graceful=st.booleans())
    @guarded
    def stop_agent(self, name: str, graceful: bool) -> None:
        """F-04: graceful (short timeout) or forced stop from queued, running or paused."""
        what = f"stop {name} ({'graceful' if graceful else 'forced'})"

        def stop() -> Awaitable[AgentInstance]:
            return self.runtime.stop_agent(
                self.ids[name], graceful=graceful, timeout_seconds=STOP_TIMEOUT
            )

        if self.status[name] not in ALLOWED_FROM["stop"]:
            self.expect_rejected(stop, what, name)
            return
        returned = self.call(stop, what)
        self.model_stop(name)
        self.check_returned(returned, name, what)

    @rule(name=agent_names, first=lifecycle_ops, second=lifecycle_ops)
    @guarded
    def race(self, name: str, first: str, second: str) -> None:
        """F-04, R-04: two lifecycle calls on one agent at the same time take effect one
        after the other, in call order; a stop may abandon a pause still on its way to a
        safe point (the pause then raises InvalidStateError and changes nothing)."""
        what = f"{first} and {second} {name} at once"
        results = self.call(
            lambda: asyncio.gather(
                self.lifecycle_call(first, name),
                self.lifecycle_call(second, name),
                return_exceptions=True,
            ),
            what,
        )
        launches = self.launches
        for index, (op, result) in enumerate(zip((first, second), results, strict=True)):
            if op == "pause" and second == "stop" and isinstance(result, InvalidStateError):
                # Abandoned for the stop (unless a pause was not allowed anyway, the stop
                # found it still waiting; a pause that got through first is fine too).
                assert "abandoned" in str(result) or self.status[name] is not S.RUNNING, what
                continue
            if self.status[name] not in ALLOWED_FROM[op]:
                assert isinstance(result, InvalidStateError), f"{what}: {op} gave {result!r}"
                continue
            assert isinstance(result, AgentInstance), f"{what}: {op} raised {result!r}"
            freed = index == 1 and self.launches > launches  # by the first call
            self.model_apply(op, name)
            if freed and result.status is S.QUEUED:
                # The first call freed a slot and a queued start took it. While that start
                # is under way (even one bound to fail) the slot is taken, so the second
                # call may be queued; settling then reaches the model's state.
                continue
            self.check_returned(result, name, f"{what}: {op}")

    # ------------------------------------------------------------------ group rules
    @rule(
        op=st.sampled_from(["start", "pause", "resume", "stop"]),
        graceful=st.booleans(),
        breaks=st.sampled_from([None, None, None, *TEAM_MEMBERS]),
    )
    @guarded
    def group_call(self, op: str, graceful: bool, breaks: str | None) -> None:
        """F-18, F-25: one call starts, pauses, resumes or stops every member of the group
        that is in a state the call applies to; the others are left alone."""
        rt = self.runtime
        members = [name for name in TEAM_MEMBERS if self.status[name] in ALLOWED_FROM[op]]
        what = f"{op} group {members}"
        if op == "start":
            self.call(lambda: rt.start_group(TEAM), what)
            for name in members:  # each takes a slot synchronously, in registration order
                self.model_start(name, resume=False)
        elif op == "pause":
            self.group_pause(members, breaks, what)
        elif op == "resume":
            self.call(lambda: rt.resume_group(TEAM), what)
            for name in members:
                self.model_resume(name)
        else:
            what += " (graceful)" if graceful else " (forced)"
            self.call(
                lambda: rt.stop_group(TEAM, graceful=graceful, timeout_seconds=STOP_TIMEOUT), what
            )
            # Queued members leave the start queue before a freed slot is handed out.
            for name in sorted(members, key=lambda n: self.status[n] is not S.QUEUED):
                self.model_stop(name)

    def group_pause(self, members: list[str], breaks: str | None, what: str) -> None:
        if breaks in members:
            BREAK_PAUSE.add(breaks)
            what += f" ({breaks}'s on_pause fails)"
            with pytest.raises(AgentHookError):
                self.call(lambda: self.runtime.pause_group(TEAM), what)
        else:
            returned = self.call(lambda: self.runtime.pause_group(TEAM), what)
            assert sorted(a.name for a in returned) == sorted(members), what
            assert all(a.status is S.PAUSED for a in returned), what
        for name in members:
            if name == breaks:
                self.model_release_slot(name, S.FAILED)
            else:
                self.model_pause(name)

    # ------------------------------------------------------------------ task rules
    @rule(
        route=st.sampled_from([*NAMES, TEAM, None]),
        after=st.none() | st.integers(0, 1000),
        priority=st.sampled_from([0, 50, 100]),
    )
    @guarded
    def submit_task(self, route: str | None, after: int | None, priority: int) -> None:
        """F-02, F-18: a task for one agent, the group, or anyone; maybe after another."""
        name = f"t{len(self.tasks)}"
        dependencies = []
        if after is not None and self.tasks:
            dependencies = [list(self.tasks)[after % len(self.tasks)]]
        kwargs: dict[str, Any] = {"priority": priority, "dependencies": dependencies}
        if route == TEAM:
            kwargs["group"] = TEAM
        elif route is not None:
            kwargs["agent_id"] = self.ids[route]
        task_id = self.call(
            lambda: self.runtime.submit_task(name, {"route": route}, **kwargs),
            f"submit {name} for {route or 'anyone'} after {dependencies}",
        )
        self.tasks[task_id] = name
        self.route[task_id] = route
        self.deps[task_id] = dependencies

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    @guarded
    def cancel_task(self, data: st.DataObject) -> None:
        """F-19: cancel a pending, blocked or running task (its waiting dependents go with
        it); a task that already ended cannot be cancelled."""
        task_id = data.draw(st.sampled_from(sorted(self.tasks)), label="cancel")
        what = f"cancel {self.tasks[task_id]}"
        before = self.runtime.get_task_status(task_id).status
        try:
            returned = self.call(lambda: self.runtime.cancel_task(task_id), what)
        except InvalidStateError:
            after = self.runtime.get_task_status(task_id).status
            assert after in FINAL, f"{what} was refused while the task is {after.value}"
            return
        assert before not in FINAL, f"{what} succeeded on a task that was {before.value}"
        # A running task may finish before the cancel reaches it.
        assert returned.status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED), what
        if returned.status is TaskStatus.CANCELLED:
            self.cancelled.add(task_id)

    @rule(pause=st.booleans())
    @guarded
    def pause_or_resume_queue(self, pause: bool) -> None:
        """F-25: pausing the queue holds dispatch; it does not change any agent."""
        rt = self.runtime
        self.call(rt.pause_queue if pause else rt.resume_queue, f"queue paused={pause}")
        self.queue_paused = pause

    @precondition(lambda self: any(name not in RELEASED for name in self.tasks.values()))
    @rule(data=st.data(), running=st.booleans())
    @guarded
    def release(self, data: st.DataObject, running: bool) -> None:
        """Open the gate of one task, or of every running task: a gated agent running it
        finishes at its next step."""
        if running:
            names = [
                self.tasks[task_id]
                for task_id in self.tasks
                if self.runtime.get_task_status(task_id).status is TaskStatus.RUNNING
            ]
        else:
            waiting = sorted(name for name in self.tasks.values() if name not in RELEASED)
            names = [data.draw(st.sampled_from(waiting), label="release")]
        self.log.append(f"release {names}")
        RELEASED.update(names)

    @rule(seconds=st.sampled_from([0.0, 0.005, 0.02]))
    @guarded
    def let_time_pass(self, seconds: float) -> None:
        """Let the loop run: tasks get dispatched, released ones finish."""
        self.call(lambda: asyncio.sleep(seconds), f"sleep {seconds}")

    @precondition(lambda self: self.restart_is_interesting())
    @rule()
    @guarded
    def restart_runtime(self) -> None:
        """F-09, F-14, F-20: stop the runtime and start a new one on the same database; paused
        agents come back paused (holding no slot until resumed), the others registered."""
        self.call(lambda: self.runtime.stop(timeout_seconds=STOP_TIMEOUT), "stop runtime")
        self.rt = self.call(self.open_runtime, "restart runtime")
        assert self.runtime.recovery is None, f"a clean stop left work to recover: {self.log}"
        for name in NAMES:
            self.status[name] = S.PAUSED if self.comes_back_paused(name) else S.REGISTERED
            self.live[name] = False
        self.queue.clear()
        self.queued_resume.clear()

    def comes_back_paused(self, name: str) -> bool:
        """Whether a stop leaves ``name`` paused: it is paused, or its resume was still
        queued for a slot at the stop (docs/operations.md, "Graceful shutdown")."""
        return self.status[name] is S.PAUSED or (
            self.status[name] is S.QUEUED and self.queued_resume.get(name, False)
        )

    def restart_is_interesting(self) -> bool:
        """Restart while an agent is paused (it must come back paused) or may be running a
        task (it must be re-queued). Decided from the model only: preconditions must not
        depend on timing."""
        if S.PAUSED in self.status.values():
            return True
        unreleased = any(name not in RELEASED for name in self.tasks.values())
        return unreleased and any(self.live.values())

    # ------------------------------------------------------------------ invariants
    @invariant()
    @guarded
    def agents_match_the_model(self) -> None:
        """F-05: every agent's status is a known value and the one the model expects."""
        if self.rt is None:
            return
        self.settle()
        actual = {name: self.actual(name).status for name in NAMES}
        assert all(isinstance(s, AgentStatus) for s in actual.values())
        assert actual == self.status, f"runtime {actual} != model {self.status}; {self.log}"

    @invariant()
    @guarded
    def slots_match_the_model(self) -> None:
        """F-08: agents holding a slot and queued starts are counted as the model says."""
        if self.rt is None:
            return
        self.settle()
        capacity = self.runtime.get_capacity()
        assert capacity.active_agents == self.active(), (
            f"active_agents {capacity.active_agents} != model {self.active()} "
            f"(live {self.live}); {self.log}"
        )
        assert capacity.active_agents <= self.limit
        assert capacity.queued_agent_starts == len(self.queue), (capacity, self.queue, self.log)

    @invariant()
    @guarded
    def resumes_get_what_pause_returned(self) -> None:
        """F-09: on_resume ran exactly when expected, with exactly what on_pause returned."""
        if self.rt is not None:
            self.settle()
        actual = {name: RESUMED_WITH.get(name, []) for name in NAMES}
        assert actual == self.expected_resumes, f"{actual} != {self.expected_resumes}; {self.log}"

    @invariant()
    @guarded
    def no_task_is_lost(self) -> None:
        """F-02, F-05: every submitted task is known with a valid status; a running task is
        run by an agent that is running or paused, and that agent says so."""
        if self.rt is None:
            return
        self.settle()
        rt = self.runtime
        queue = rt.get_queue_status()
        assert queue.total == len(self.tasks)
        assert queue.paused is self.queue_paused, f"queue paused {queue.paused}; {self.log}"
        statuses = {task_id: rt.get_task_status(task_id).status for task_id in self.tasks}
        for task_id, status in statuses.items():
            deps = [statuses[dep] for dep in self.deps[task_id]]
            if status is TaskStatus.PENDING:
                assert all(d is TaskStatus.COMPLETED for d in deps), (task_id, deps, self.log)
            if status is TaskStatus.BLOCKED:
                assert deps, f"task {self.tasks[task_id]} is blocked without prerequisites"
                assert any(d is not TaskStatus.COMPLETED for d in deps), (task_id, deps)
                assert not any(d in (TaskStatus.FAILED, TaskStatus.CANCELLED) for d in deps), (
                    f"task {self.tasks[task_id]} waits for a prerequisite that ended {deps}"
                )
        by_agent: dict[str, str] = {}
        for task_id in self.tasks:
            task = rt.get_task_status(task_id)
            assert task.status in TASK_STATUSES
            self.check_final_is_final(task)
            if task.status is not TaskStatus.RUNNING:
                continue
            agent_id = task.assigned_agent_id
            assert agent_id is not None, f"running task {task_id} has no agent"
            name = rt.get_agent_status(agent_id).name
            where = f"task {self.tasks[task_id]} runs on {name}; {self.log}"
            assert self.status[name] in (S.RUNNING, S.PAUSED), where
            assert self.live[name], where
            assert rt.get_agent_status(agent_id).task_id == task_id
            assert agent_id not in by_agent, f"{name} runs two tasks at once"
            by_agent[agent_id] = task_id

    def check_final_is_final(self, task: Task) -> None:
        seen = self.final_seen.get(task.task_id)
        if seen is not None:
            assert task.status is seen, f"task {task.name} went from {seen} to {task.status}"
        elif task.status in FINAL:
            self.final_seen[task.task_id] = task.status

    # ------------------------------------------------------------------ the end
    def teardown(self) -> None:
        try:
            if self.rt is not None and not self.broken:
                self.final_checks()
        finally:
            try:
                if self.rt is not None:
                    self.runner.run(asyncio.wait_for(self.rt.stop(STOP_TIMEOUT), CALL_TIMEOUT))
            finally:
                self.runner.close()
                shutil.rmtree(self.tmp, ignore_errors=True)

    def final_checks(self) -> None:
        """F-14, F-20: with every gate open, stop; a new runtime on the same database sees
        every task; taking turns, the agents then complete all of them (no deadlock)."""
        RELEASED.update(self.tasks.values())
        BREAK_START.clear()
        BREAK_PAUSE.clear()
        BREAK_RESUME.clear()
        self.break_start.clear()
        self.call(lambda: self.runtime.stop(), "stop runtime (final)")
        self.rt = self.call(self.open_runtime, "reopen runtime (final)")
        rt = self.runtime
        for task_id, name in self.tasks.items():
            task = rt.get_task_status(task_id)  # NotFoundError here means a lost task
            assert task.name == name
            assert task.status is not TaskStatus.RUNNING, f"{name} runs before any agent does"
            self.check_final_is_final(task)
        for name in NAMES:
            expected = S.PAUSED if self.comes_back_paused(name) else S.REGISTERED
            assert self.actual(name).status is expected, (name, self.actual(name), self.log)
        assert rt.get_queue_status().paused is self.queue_paused, "queue pause not kept"
        self.call(rt.resume_queue, "resume queue (final)")
        self.call(self.take_turns, "agents take turns until every task completed")
        unfinished = {
            self.tasks[task_id]: status.value
            for task_id in self.tasks
            if (status := rt.get_task_status(task_id).status) is not self.expected_end(task_id)
        }
        assert not unfinished, f"tasks that did not end as expected: {unfinished}; {self.log}"

    def expected_end(self, task_id: str) -> TaskStatus:
        """Cancelled if it or a prerequisite (transitively) was cancelled, else completed."""
        if task_id in self.cancelled:
            return TaskStatus.CANCELLED
        if self.final_seen.get(task_id) is TaskStatus.COMPLETED:
            return TaskStatus.COMPLETED
        if any(self.expected_end(dep) is TaskStatus.CANCELLED for dep in self.deps[task_id]):
            return TaskStatus.CANCELLED
        return TaskStatus.COMPLETED

    async def take_turns(self) -> None:
        """Run the agents one at a time (any max_concurrent_agents fits) until every task
        has completed, or a round makes no progress."""
        rt = self.runtime

        def open_tasks() -> list[str]:
            return [
                t for t in self.tasks if rt.get_task_status(t).status is not TaskStatus.COMPLETED
            ]

        def serves(name: str, task_id: str) -> bool:
            route = self.route[task_id]
            return route is None or route in (name, GROUP_OF[name])

        remaining = open_tasks()
        while remaining:
            for name in NAMES:
                for other in NAMES:
                    if other != name and rt.get_agent_status(self.ids[other]).status is S.RUNNING:
                        await rt.stop_agent(self.ids[other], timeout_seconds=1.0)
                agent_id = self.ids[name]
                status = rt.get_agent_status(agent_id).status
                if status is S.PAUSED:
                    await rt.resume_agent(agent_id)
                elif status in ALLOWED_FROM["start"]:
                    await rt.start_agent(agent_id)
                assert rt.get_agent_status(agent_id).status is S.RUNNING, name
                for task_id in open_tasks():
                    task_status = rt.get_task_status(task_id).status
                    if serves(name, task_id) and task_status is not TaskStatus.BLOCKED:
                        await rt.wait_for_task(task_id)
            still = open_tasks()
            if len(still) == len(remaining):
                return  # no progress in a whole round: final_checks reports them
            remaining = still


AgentMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    # No explain phase: tracing every line of the runtime makes shrinking take minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestAgentStateModel = AgentMachine.TestCase


# --------------------------------------------------------------------------- found by the model
# Minimal reproductions of what the machine found, as plain tests.


@pytest.fixture(autouse=True)
def _reset_records() -> None:
    reset_records()


async def test_agent_paused_before_a_restart_can_be_stopped(tmp_path: Path) -> None:
    """F-04, F-09: ``stop`` is allowed from ``paused``, also for an agent that comes back
    paused after a restart (its host never started in this run)."""
    config = RuntimeConfig(storage_path=str(tmp_path / "runtime.db"), default_isolation="inline")
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(QUICK, QuickAgent)
        await rt.start_agent(agent_id)
        await rt.pause_agent(agent_id)
    async with AgentRuntime(config=config) as rt:
        await rt.register_agent(QUICK, QuickAgent)
        assert rt.get_agent_status(agent_id).status is S.PAUSED
        stopped = await rt.stop_agent(agent_id)
        assert stopped.status is S.STOPPED
        assert rt.get_capacity().active_agents == 0


async def test_start_after_stopping_a_queued_resume_is_a_fresh_start(tmp_path: Path) -> None:
    """F-04, F-09: an agent paused before a restart whose resume was queued and then
    stopped has given up its paused state: starting it again is a plain start, without
    ``on_resume`` of the old state (an ``agent_started`` event, not ``agent_resumed``)."""
    config = RuntimeConfig(
        storage_path=str(tmp_path / "runtime.db"),
        default_isolation="inline",
        limits=ResourceLimits(max_concurrent_agents=1),
    )
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(GATED_A, GatedAgent)
        await rt.start_agent(agent_id)
        await rt.pause_agent(agent_id)
    async with AgentRuntime(config=config) as rt:
        await rt.register_agent(GATED_A, GatedAgent)
        other = await rt.register_agent(GATED_B, GatedAgent)
        await rt.start_agent(other)  # takes the only slot
        assert (await rt.resume_agent(agent_id)).status is S.QUEUED
        assert (await rt.stop_agent(agent_id)).status is S.STOPPED
        assert (await rt.start_agent(agent_id)).status is S.QUEUED
        RESUMED_WITH.clear()
        await rt.stop_agent(other)  # frees the slot: the queued start goes ahead
        RELEASED.add("probe")
        probe = await rt.submit_task("probe", agent_id=agent_id)
        assert (await rt.wait_for_task(probe, 5)).status is TaskStatus.COMPLETED
        assert rt.get_agent_status(agent_id).status is S.RUNNING
        assert RESUMED_WITH == {}, "on_resume ran on a fresh start"
        kinds = ["agent_started", "agent_resumed"]
        latest = await rt.query_events(kinds, agent_id=agent_id, limit=1, newest=True)
        assert [e.event_type.value for e in latest] == ["agent_started"]


async def test_start_after_a_failed_resume_is_a_fresh_start(tmp_path: Path) -> None:
    """F-04, F-09: an agent paused before a restart whose resume failed (on_start raised)
    is failed; starting it again later is a plain start, even when the start had to wait
    for a slot: ``on_resume`` must not get the old paused state."""
    config = RuntimeConfig(
        storage_path=str(tmp_path / "runtime.db"),
        default_isolation="inline",
        limits=ResourceLimits(max_concurrent_agents=1),
    )
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(GATED_A, GatedAgent)
        await rt.start_agent(agent_id)
        await rt.pause_agent(agent_id)
    async with AgentRuntime(config=config) as rt:
        await rt.register_agent(GATED_A, GatedAgent)
        other = await rt.register_agent(GATED_B, GatedAgent)
        BREAK_START.add(GATED_A)
        assert (await rt.resume_agent(agent_id)).status is S.FAILED
        await rt.start_agent(other)  # takes the only slot
        assert (await rt.start_agent(agent_id)).status is S.QUEUED
        await rt.stop_agent(other)  # frees the slot: the queued start goes ahead
        RELEASED.add("probe")
        probe = await rt.submit_task("probe", agent_id=agent_id)
        assert (await rt.wait_for_task(probe, 5)).status is TaskStatus.COMPLETED
        assert RESUMED_WITH == {}, "on_resume ran on a fresh start"


async def test_queued_start_after_on_resume_failed_is_a_fresh_start(tmp_path: Path) -> None:
    """F-04, F-09: same in one run: a paused agent whose on_resume raised is failed; a
    later start that waits for a slot must not hand the old state to on_resume again."""
    config = RuntimeConfig(
        storage_path=str(tmp_path / "runtime.db"),
        default_isolation="inline",
        limits=ResourceLimits(max_concurrent_agents=1),
    )
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(GATED_A, GatedAgent)
        other = await rt.register_agent(GATED_B, GatedAgent)
        await rt.start_agent(agent_id)
        await rt.pause_agent(agent_id)
        BREAK_RESUME.add(GATED_A)
        with pytest.raises(AgentHookError):
            await rt.resume_agent(agent_id)
        assert rt.get_agent_status(agent_id).status is S.FAILED
        await rt.start_agent(other)  # takes the only slot
        assert (await rt.start_agent(agent_id)).status is S.QUEUED
        await rt.stop_agent(other)
        RELEASED.add("probe")
        probe = await rt.submit_task("probe", agent_id=agent_id)
        assert (await rt.wait_for_task(probe, 5)).status is TaskStatus.COMPLETED
        assert RESUMED_WITH == {}, "on_resume ran on a fresh start"
