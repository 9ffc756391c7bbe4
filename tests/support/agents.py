"""Agents used by the tests. Module-level and importable, so they also work when an agent
has to be located by import path."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from miminions import AgentContext, BaseAgent, Task

# Tests reach into these to observe what agents did; each test resets what it uses.
CALLS: list[tuple[str, Any]] = []


class EchoAgent(BaseAgent):
    """Returns its input and records which task it ran."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        CALLS.append((self.context.name, task.name))
        return {"echo": task.input_data, "agent": self.context.name}


class RecordingAgent(BaseAgent):
    """Records every lifecycle hook and task, in order."""

    async def on_start(self) -> None:
        CALLS.append(("on_start", self.context.name))

    async def on_stop(self) -> None:
        CALLS.append(("on_stop", self.context.name))

    async def on_pause(self) -> dict[str, Any]:
        CALLS.append(("on_pause", self.context.name))
        return {"counter": 41, "nested": {"items": [1, "two", None, 3.5]}}

    async def on_resume(self, state: dict[str, Any]) -> None:
        CALLS.append(("on_resume", state))

    async def on_error(self, error: BaseException, task: Task | None) -> None:
        CALLS.append(("on_error", (type(error).__name__, task.task_id if task else None)))

    async def execute_task(self, task: Task) -> dict[str, Any]:
        CALLS.append(("execute", task.name))
        if task.input_data.get("fail"):
            raise RuntimeError(task.input_data["fail"])
        if task.input_data.get("return") == "object":
            return {"not json": object()}
        return {"done": task.name}


class FlakyAgent(BaseAgent):
    """Fails the first ``fail_times`` attempts of each task (from input_data)."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if task.retry_count < task.input_data.get("fail_times", 0):
            raise ValueError(f"attempt {task.retry_count + 1} fails")
        return {"attempts": task.retry_count + 1}


FAILING: set[str] = set()


class SwitchAgent(BaseAgent):
    """Fails tasks whose name is in ``FAILING``, completes the others."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if task.name in FAILING:
            raise RuntimeError(f"{task.name} is switched to fail")
        return {"ok": task.name}


class GatedAgent(BaseAgent):
    """Waits at a checkpoint loop until released through ``GATES[task name]``."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        gate = GATES.setdefault(task.name, asyncio.Event())
        STARTED.setdefault(task.name, asyncio.Event()).set()
        steps = 0
        while not gate.is_set():
            await self.context.checkpoint({"steps": steps})
            steps += 1
            await asyncio.sleep(0.005)
        return {"steps": steps}


GATES: dict[str, asyncio.Event] = {}
STARTED: dict[str, asyncio.Event] = {}


class SleepyAgent(BaseAgent):
    """Sleeps ``input_data['seconds']`` (default: forever)."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        STARTED.setdefault(task.name, asyncio.Event()).set()
        await asyncio.sleep(task.input_data.get("seconds", 3600))
        return {"slept": True}


class SyncBlockingAgent:
    """A plain (non-BaseAgent) agent with a synchronous execute_task that blocks a thread."""

    release = threading.Event()

    def execute_task(self, task: Task) -> dict[str, Any]:
        if not self.release.wait(timeout=30):
            raise TimeoutError("never released")
        return {"thread": threading.current_thread().name}


async def async_function_agent(task: Task, context: AgentContext) -> dict[str, Any]:
    """A function agent."""
    return {"fn": task.input_data.get("x", 0) * 2, "agent": context.name}


def sync_function_agent(task: Task, context: AgentContext) -> dict[str, Any]:
    """A synchronous function agent (runs in a thread)."""
    return {"thread": threading.current_thread().name, "agent": context.name}


class UsageAgent(BaseAgent):
    """Reports ``input_data["tokens"]`` / ``["cost"]`` as its usage, then returns. Its
    ``on_start`` and ``on_resume`` report ``config["on_start"]`` / ``["on_resume"]`` tokens
    (none by default), as an agent warming up a model would."""

    async def on_start(self) -> None:
        await self.context.report_usage(tokens=self.config.get("on_start", 0))

    async def on_resume(self, state: Any) -> None:
        await self.context.report_usage(tokens=self.config.get("on_resume", 0))

    async def execute_task(self, task: Task) -> dict[str, Any]:
        await self.context.report_usage(
            tokens=task.input_data.get("tokens", 0), cost=task.input_data.get("cost", 0.0)
        )
        return {"reported": True}


async def meddling_agent(task: Task, context: AgentContext) -> None:
    """Changes the task object it is handed: its input (nested too) and dependencies."""
    task.input_data["added"] = True
    if "nested" in task.input_data:
        task.input_data["nested"]["x"] = 2
    task.dependencies.append("nonsense")


class SlowOnErrorAgent(BaseAgent):
    """Fails tasks named ``fails``; its ``on_error`` sets ``STARTED["on_error"]``, waits for
    ``GATES["on_error"]`` and records ``on_error_done`` in ``RAN``. Other tasks record
    their name in ``RAN`` as they begin, count themselves in ``ACTIVE`` (``MOST_ACTIVE``
    keeps the peak) and wait for ``GATES["tasks"]``."""

    ACTIVE = 0
    MOST_ACTIVE = 0
    RAN: list[str] = []

    async def on_error(self, error: BaseException, task: Task | None) -> None:
        STARTED.setdefault("on_error", asyncio.Event()).set()
        await GATES.setdefault("on_error", asyncio.Event()).wait()
        SlowOnErrorAgent.RAN.append("on_error_done")

    async def execute_task(self, task: Task) -> dict[str, Any]:
        cls = SlowOnErrorAgent
        cls.RAN.append(task.name)
        if task.name == "fails":
            raise RuntimeError("fails on purpose")
        cls.ACTIVE += 1
        cls.MOST_ACTIVE = max(cls.MOST_ACTIVE, cls.ACTIVE)
        try:
            await GATES.setdefault("tasks", asyncio.Event()).wait()
        finally:
            cls.ACTIVE -= 1
        return {"ran": task.name}


async def _cancelled_future() -> None:
    """Await a future somebody else cancelled: a CancelledError nobody asked this task for."""
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def _fail_soon() -> None:
    await asyncio.sleep(0)
    raise ValueError("child failed")


class CancelQuirkAgent(BaseAgent):
    """Does odd things with cancellation, as its task's name says: ``swallow`` catches the
    cancel of its 10 s sleep and returns; ``selfcancel`` raises CancelledError itself;
    ``convert`` turns the cancel into a RuntimeError; ``taskcancel`` cancels its own task
    (a hand-made watchdog); ``taskgroup`` leaves a cancel counted on its task (a TaskGroup
    whose child fails after the body ended, on Python 3.11), then awaits a future somebody
    else cancelled. Other tasks complete at once."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if task.name == "swallow":
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)
        elif task.name == "selfcancel":
            raise asyncio.CancelledError
        elif task.name == "taskcancel":
            this = asyncio.current_task()
            assert this is not None
            this.cancel()
            await asyncio.sleep(0)
        elif task.name == "taskgroup":
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(_fail_soon())
            except* ValueError:
                pass
            await _cancelled_future()
        elif task.name == "convert":
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise RuntimeError("cleanup failed") from None
        return {"ran": task.name}


class StubbornAgent(BaseAgent):
    """A task named ``stubborn`` catches every cancellation and runs until
    ``GATES["stubborn"]`` is set; other tasks complete at once."""

    async def execute_task(self, task: Task) -> dict[str, Any]:
        if task.name == "stubborn":
            STARTED.setdefault("stubborn", asyncio.Event()).set()
            gate = GATES.setdefault("stubborn", asyncio.Event())
            while not gate.is_set():
                # ignores its timeout, cancel and stop on purpose
                with contextlib.suppress(asyncio.CancelledError):
                    await gate.wait()
        return {"ran": task.name}


async def misusing_agent(task: Task, context: AgentContext) -> dict[str, str]:
    """Calls context methods with arguments of the wrong type and reports, per call, the
    class of the error it got (``MiminionsError`` subclasses are what bad input gets)."""
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "reply": lambda: context.reply("not a message"),  # type: ignore[arg-type]
        "unsubscribe": lambda: context.unsubscribe(["a", "list"]),  # type: ignore[arg-type]
    }
    found: dict[str, str] = {}
    for label, call in calls.items():
        try:
            await call()
            found[label] = "no error"
        except Exception as exc:
            found[label] = type(exc).__name__
    return found


class SlowOnErrorAfterFailure:
    """Fails tasks named ``fail``; its on_error waits for ``release`` (a cleanup that takes
    a while), during which the agent takes no task."""

    def __init__(self) -> None:
        self.in_on_error = asyncio.Event()
        self.release = asyncio.Event()

    async def execute_task(self, task: Any) -> Any:
        if task.name == "fail":
            raise RuntimeError("failed on purpose")
        return {}

    async def on_error(self, error: BaseException, task: Any) -> None:
        self.in_on_error.set()
        await self.release.wait()


class AgentId(str):
    """A str subclass naming an agent."""


class Sender(BaseAgent):
    """Sends to ``task.input_data['to']`` given in the form ``mode`` says."""

    async def execute_task(self, task: Task) -> Any:
        to = task.input_data["to"]
        mode = task.input_data["mode"]
        recipients: Any
        if mode == "dict":
            recipients = {to: 1}
        elif mode == "str_subclass":
            recipients = AgentId(to)
        elif mode == "list_of_str_subclass":
            recipients = [AgentId(to)]
        elif mode == "dict_keys":
            recipients = {to: 1}.keys()
        elif mode == "bytes":
            recipients = to.encode()
        else:
            recipients = to
        try:
            ids = await self.context.send(recipients, "note", {"x": 1})
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"sent": len(ids)}
