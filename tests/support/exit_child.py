"""Child for tests/integration/test_cancel_wind_down.py:
``python -m tests.support.exit_child MODE DB``.

``timeout-at-exit``: an inline agent's first task times out and is winding down (its cleanup
awaits) when main returns without stopping the runtime; a second task waits in the queue.
asyncio.run then cancels every task left and should return. The ``process-...`` modes
are described where they are defined."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from miminions import AgentRuntime, Event, EventType, RuntimeConfig, hookimpl

WINDING_DOWN = asyncio.Event()


def _logged(log: Path, word: str) -> bool:
    return log.exists() and word in log.read_text()


async def agent(task: object, context: object) -> str:
    name = task.name  # type: ignore[attr-defined]
    print(f"start {name}", flush=True)
    try:
        await asyncio.Event().wait()  # a long call (until cancelled)
    except asyncio.CancelledError:
        if name == "first":
            WINDING_DOWN.set()
            await asyncio.sleep(3600)  # cleanup that awaits (closing a session, say)
        raise
    return "never"


async def _slow_process_agent(
    db: str, grace: float, plugins: Sequence[object] = (), **config: Any
) -> tuple[AgentRuntime, str, dict[str, str]]:
    """A started runtime on ``db`` (``cancel_grace_seconds`` ``grace``, ``config`` for the
    rest) with a started process agent (SlowToStopAgent, slow: a cancelled task winds down
    until a file that never appears exists): the runtime, the agent's id and the input its
    tasks take."""
    from miminions import ProcessSettings
    from tests.support.process_agents import SlowToStopAgent

    process = ProcessSettings(cancel_grace_seconds=grace)
    rt = AgentRuntime(
        config=RuntimeConfig(storage_path=db, process=process, **config), plugins=plugins
    )
    await rt.start()
    slow = await rt.register_agent(
        "slow", SlowToStopAgent, isolation="process", config={"slow": True}
    )
    await rt.start_agent(slow)
    return rt, slow, {"log": db + ".log", "release": db + ".never"}


async def process_main(db: str) -> None:
    """``process-timeout-at-exit``: the same with a process agent (SlowToStopAgent): its
    first task times out and winds down in its worker until a file that never appears
    exists; main returns meanwhile; a second task waits in the queue."""
    rt, _, data = await _slow_process_agent(db, 30.0)
    await rt.submit_task("first", input_data=data, timeout_seconds=0.5)
    await rt.submit_task("second", input_data=data)
    while not _logged(Path(data["log"]), "cancelled"):  # noqa: ASYNC110 (another process writes it)
        await asyncio.sleep(0.01)
    print("returning", flush=True)


async def process_cancelled_at_exit(db: str) -> None:
    """``process-cancel-at-exit``: a process agent (SlowToStopAgent) runs a task that winds
    down for ever once cancelled; main returns without stopping the runtime, so
    asyncio.run's cancel of every task is the task's first cancel, and its worker is killed
    when the cancel grace (0.3 s) ends, while asyncio.run waits."""
    rt, _, data = await _slow_process_agent(db, 0.3)
    await rt.submit_task("first", input_data=data)
    await rt.submit_task("second", input_data=data)
    while not _logged(Path(data["log"]), "start"):  # noqa: ASYNC110 (another process writes it)
        await asyncio.sleep(0.01)
    print("returning", flush=True)


class _PrintAgentStarts:
    """Prints each agent_starting / agent_started event as it is recorded, so the parent
    sees what happened after main returned."""

    miminions_plugin_name = "exit_child_agent_starts"

    @hookimpl
    def miminions_event(self, event: Event) -> None:
        if event.event_type in (EventType.AGENT_STARTING, EventType.AGENT_STARTED):
            print(f"event {event.event_type.value} {event.agent_id}", flush=True)


async def restart_at_exit(db: str) -> None:
    """``restart-at-exit``: a process agent crashes (its worker exits) and its restart is
    planned (backoff 0.2 s); a second process agent runs a task that ignores its cancel
    (cancel grace 1 s). main returns without stopping the runtime: asyncio.run cancels every
    task and waits for them until the second agent's worker is killed; the restart timer
    fires meanwhile."""
    from miminions import RestartPolicy
    from tests.support.process_agents import CrashAgent

    restart = RestartPolicy(backoff_base_seconds=0.2)
    rt, slow, data = await _slow_process_agent(
        db, 1.0, plugins=[_PrintAgentStarts()], restart=restart
    )
    crashy = await rt.register_agent(
        "crashy", CrashAgent, isolation="process", config={"crashy": True}
    )
    await rt.start_agent(crashy)
    await rt.submit_task("slow", agent_id=slow, input_data=data)
    while not _logged(Path(data["log"]), "start"):  # noqa: ASYNC110 (another process writes it)
        await asyncio.sleep(0.01)
    await rt.submit_task("crash", agent_id=crashy, input_data={"mode": "exit"})
    while "restarting in" not in (rt.get_agent_status(crashy).status_reason or ""):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    print("returning", flush=True)


async def main(mode: str, db: str) -> None:
    if mode == "process-timeout-at-exit":
        return await process_main(db)
    if mode == "restart-at-exit":
        return await restart_at_exit(db)
    if mode == "process-cancel-at-exit":
        return await process_cancelled_at_exit(db)
    rt = AgentRuntime(config=RuntimeConfig(storage_path=db))
    await rt.start()
    agent_id = await rt.register_agent("worker", agent, isolation="inline")
    await rt.start_agent(agent_id)
    await rt.submit_task("first", timeout_seconds=0.2)
    await rt.submit_task("second")
    await WINDING_DOWN.wait()
    print("returning", flush=True)
    # returns without stopping the runtime: asyncio.run cancels every task left


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
    print("exited", flush=True)
