"""Built-in ``inline`` isolation: the agent runs as coroutines on the runtime's own loop.

For trusted, I/O-bound agents (F-15's light mode): no process boundary, so a crash of the
agent's Python code is contained (it fails the task) but a blocking C call or a memory
blow-up is not. Synchronous agent code runs in a worker thread so the loop never blocks;
such code cannot be interrupted mid-call, only abandoned (its result is ignored).

Pause is cooperative: the running task halts at its next ``await context.<call>`` (a safe
point) until resumed (see :class:`~miminions.kernel.agent_runner.AgentRunner`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from miminions.kernel.agent_runner import AgentRunner
from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.jsonutil import copy_json
from miminions.kernel.models import AgentSpec, Task, own_json_values

if TYPE_CHECKING:
    from miminions.kernel.runtime import AgentRuntime


class InlineHost:
    """Hosts one agent on the runtime's loop (see the module docstring)."""

    def __init__(self, spec: AgentSpec, registered: object, runtime: AgentRuntime) -> None:
        self.spec = spec
        self._runner = AgentRunner(
            spec.name,
            spec.kind,
            registered,
            make_context=lambda channel: runtime.make_context(spec, channel),
            save_checkpoint=runtime.task_book.save_checkpoint,
            report_usage=lambda tokens, cost: runtime.report_usage(spec.agent_id, tokens, cost),
            runtime_call=lambda op, payload: runtime.agent_call(spec.agent_id, op, payload),
            task_halted=lambda task_id: runtime.report_task_halted(spec.agent_id, task_id),
        )

    @property
    def process_id(self) -> int | None:
        """Inline agents share the runtime's process."""
        return None

    async def start(self, resume_state: Any = None) -> None:
        """Build the agent, run ``on_start``, then ``on_resume(resume_state)`` if given
        (a copy: the runtime keeps the stored state unchanged whatever the agent does)."""
        await self._runner.start(copy_json(resume_state))

    async def run(self, task: Task, checkpoint: Any = None) -> Any:
        """Run one task on this loop (a sync ``execute_task`` runs in the agent's thread).

        The agent shares the runtime's memory but not its data: its task (a copy made for
        this call) gets copies of its JSON values, and it gets a copy of the checkpoint, so
        whatever it changes in them stays with it (as it would in a worker process).
        """
        return await self._runner.run(own_json_values(task), copy_json(checkpoint))

    async def pause(self) -> Any:
        """Halt the running task at its next safe point (or its end), then ``on_pause``."""
        return await self._runner.pause()

    async def resume(self, state: Any) -> None:
        """Run ``on_resume(state)`` (with a copy, as in :meth:`start`) and let a halted
        task continue."""
        await self._runner.resume(copy_json(state))

    async def notify_error(self, error: BaseException, task: Task | None) -> None:
        """Run the agent's ``on_error`` (with a snapshot of the task, as in :meth:`run`)."""
        await self._runner.notify_error(error, None if task is None else own_json_values(task))

    def request_stop(self) -> None:
        """From now on ``context.is_stopping`` is true: the task should finish or checkpoint."""
        self._runner.request_stop()

    async def stop(self, timeout_seconds: float) -> None:
        """Run ``on_stop`` within ``timeout_seconds`` and drop the agent."""
        await self._runner.stop(timeout_seconds)

    async def kill(self) -> None:
        """Drop the agent without running any hook."""
        self._runner.release()

    def abandon(self) -> None:
        """:meth:`kill` without awaiting (the runtime's stop was cut short): its task and
        any ``on_message`` handler are cancelled, a message the handler held goes back to
        the mailbox."""
        self._runner.release()


@hookimpl(trylast=True)  # built-in: another plugin may take over inline agents
def miminions_make_host(spec: AgentSpec, agent: object, runtime: AgentRuntime) -> InlineHost | None:
    """Host agents registered with ``isolation="inline"`` on the runtime's loop."""
    if spec.isolation != "inline":
        return None
    return InlineHost(spec, agent, runtime)
