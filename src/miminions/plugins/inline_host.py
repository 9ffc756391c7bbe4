"""Built-in ``inline`` isolation: the agent runs as coroutines on the runtime's own loop.

For trusted, I/O-bound agents (F-15's light mode): no process boundary, so a crash of the
agent's Python code is contained (it fails the task) but a blocking C call or a memory
blow-up is not. Synchronous agent code runs in a worker thread so the loop never blocks;
such code cannot be interrupted mid-call, only abandoned (its result is ignored).

Pause is cooperative: :meth:`InlineHost.pause` closes a gate; the running task halts at its
next ``await context.<call>`` (a safe point) until :meth:`resume` opens it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from miminions.kernel.agent import AgentContext, call_agent_code, call_hook, instantiate_agent
from miminions.kernel.errors import InvalidStateError
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.models import AgentSpec, JSONObject, Task

if TYPE_CHECKING:
    from miminions.kernel.runtime import AgentRuntime


class InlineHost:
    """Hosts one agent on the runtime's loop (see the module docstring)."""

    def __init__(self, spec: AgentSpec, registered: object, runtime: AgentRuntime) -> None:
        self.spec = spec
        self._registered = registered
        self._runtime = runtime
        self._agent: Any = None
        self._execute: Callable[[Task], Awaitable[Any]] = _not_started
        self._context: AgentContext | None = None
        self._gate = asyncio.Event()
        self._gate.set()
        self._halted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._thread: ThreadPoolExecutor | None = None

    @property
    def process_id(self) -> int | None:
        """Inline agents share the runtime's process."""
        return None

    # --------------------------------------------------------------- ContextChannel
    @property
    def stopping(self) -> bool:
        """True once the agent was asked to stop."""
        return self._stopping

    async def safe_point(self) -> None:
        """Wait here while the agent is paused."""
        if self._gate.is_set():
            return
        self._halted.set()
        try:
            await self._gate.wait()
        finally:
            self._halted.clear()

    def save_checkpoint(self, task_id: str, state: Any) -> Awaitable[None]:
        """Record a task checkpoint through the runtime's task book."""
        return self._runtime.task_book.save_checkpoint(task_id, state)

    # --------------------------------------------------------------- AgentHost
    async def start(self, resume_state: JSONObject | None = None) -> None:
        """Build the agent, run ``on_start``, then ``on_resume(resume_state)`` if given."""
        self._stopping = False
        self._gate.set()
        self._agent = instantiate_agent(self._registered, self.spec.kind)
        execute = self._agent.execute_task
        # Decided once per start, not per task: async code is awaited directly; sync code
        # runs in this agent's own thread, one call at a time (an abandoned call that is
        # still running delays the next one instead of running beside it).
        if inspect.iscoroutinefunction(execute):
            self._execute = execute
        else:
            self._execute = partial(call_agent_code, execute, executor=self._own_thread())
        self._context = self._runtime.make_context(self.spec, self)
        # objects with __slots__ can still use the context passed to function agents
        with contextlib.suppress(AttributeError):
            self._agent.context = self._context
        await self._hook("on_start")
        if resume_state is not None:
            await self._hook("on_resume", resume_state)

    async def run(self, task: Task, checkpoint: Any = None) -> Any:
        """Run one task on this loop (a sync ``execute_task`` runs in the agent's thread)."""
        context = self._require_context()
        context.current_task = task
        context.last_checkpoint = checkpoint
        self._idle.clear()
        try:
            return await self._execute(task)
        finally:
            context.current_task = None
            self._idle.set()

    async def pause(self) -> JSONObject:
        """Close the gate, wait for the running task's safe point (or its end), ``on_pause``.

        If the pause is abandoned (cancelled, or ``on_pause`` fails) the gate opens again,
        so a halted task never stays halted without a pause to show for it.
        """
        self._gate.clear()
        try:
            if not self._idle.is_set():
                halted = asyncio.ensure_future(self._halted.wait())
                idle = asyncio.ensure_future(self._idle.wait())
                try:
                    await asyncio.wait({halted, idle}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    halted.cancel()
                    idle.cancel()
            state = await self._hook("on_pause")
        except BaseException:
            self._gate.set()
            raise
        return state if state is not None else {}

    async def resume(self, state: JSONObject) -> None:
        """Run ``on_resume(state)`` and open the gate."""
        await self._hook("on_resume", state)
        self._gate.set()

    async def notify_error(self, error: BaseException, task: Task | None) -> None:
        """Run the agent's ``on_error``."""
        await self._hook("on_error", error, task)

    def request_stop(self) -> None:
        """From now on ``context.is_stopping`` is true: the task should finish or checkpoint."""
        self._stopping = True

    async def stop(self, timeout_seconds: float) -> None:
        """Run ``on_stop`` within ``timeout_seconds`` and drop the agent."""
        self._stopping = True
        self._gate.set()
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._hook("on_stop")
        finally:
            self._release()

    async def kill(self) -> None:
        """Drop the agent without running any hook."""
        self._stopping = True
        self._gate.set()
        self._release()

    def _own_thread(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"miminions-{self.spec.name}")
        return self._thread

    async def _hook(self, name: str, *args: Any) -> Any:
        return await call_hook(self._agent, name, *args, executor=self._own_thread())

    def _release(self) -> None:
        self._agent = None
        if self._thread is not None:
            # A sync call that ignores cancellation keeps its thread; nothing waits for it.
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None

    def _require_context(self) -> AgentContext:
        if self._context is None or self._agent is None:
            raise InvalidStateError(f"agent {self.spec.name!r} is not started")
        return self._context


async def _not_started(task: Task) -> Any:
    raise InvalidStateError("the agent is not started")


@hookimpl(trylast=True)  # built-in: another plugin may take over inline agents
def miminions_make_host(spec: AgentSpec, agent: object, runtime: AgentRuntime) -> InlineHost | None:
    """Host agents registered with ``isolation="inline"`` on the runtime's loop."""
    if spec.isolation != "inline":
        return None
    return InlineHost(spec, agent, runtime)
