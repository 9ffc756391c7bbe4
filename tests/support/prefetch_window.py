"""A process agent holding a task in its prefetch window, for the tests of what a stop does
with such a task (tests/integration/test_shutdown_*.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miminions import AgentRuntime, RuntimeConfig
from tests.support.process_agents import GatedAgent
from tests.support.runtime import start_agent
from tests.support.waiting import wait_until


@dataclass
class HeldWindow:
    """A started runtime (``config``) whose process agent ran task ``a``, runs ``b`` and
    holds ``c`` taken ahead of time, not begun. Each task ends once its gate file exists;
    the agent logs ``start <name>`` to ``log`` as a task begins."""

    rt: AgentRuntime
    config: RuntimeConfig
    ids: dict[str, str]
    gates: dict[str, Path]
    log: Path

    def open_gates(self) -> None:
        """Let every task end."""
        for gate in self.gates.values():
            gate.touch()


async def agent_holding_a_window(make_config: Callable[..., Any], tmp_path: Path) -> HeldWindow:
    """See :class:`HeldWindow` (stop its runtime yourself)."""
    log = tmp_path / "log"
    gates = {name: tmp_path / f"gate-{name}" for name in "abc"}
    config = make_config(default_isolation="process")
    rt = AgentRuntime(config=config)
    await rt.start()
    await start_agent(rt, "gated", GatedAgent)
    ids = {
        name: await rt.submit_task(name, {"log": str(log), "gate": str(gates[name])})
        for name in "abc"
    }
    gates["a"].touch()  # a ends: the agent runs b and takes c ahead of time
    await wait_until(lambda: rt.get_task_status(ids["b"]).started_at is not None, "b began")
    await wait_until(lambda: rt.get_task_status(ids["c"]).status.value == "running", "c taken")
    assert rt.get_task_status(ids["c"]).started_at is None  # not begun
    return HeldWindow(rt, config, ids, gates, log)
