"""Agents whose lifecycle hooks hang, for the lifecycle robustness tests. Module-level, so
worker processes can import them by module path; they talk to the test through files."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

from miminions import AgentCrashedError, BaseAgent, Task

#: What a synchronous hook of :class:`SyncHangingResumeAgent` blocks on (inline agents
#: only: the test sets it when it ends, so no thread outlives it).
RELEASE_SYNC_HOOKS = threading.Event()
#: Set once that hook began blocking.
SYNC_HOOK_BLOCKING = threading.Event()


class HangingHooksAgent(BaseAgent):
    """Appends each lifecycle hook it runs to ``config['log']`` as a JSON line (``["start"]``,
    ``["pause"]``, ``["resume", state]``, ``["stop"]``) before doing anything else.

    The hooks named in ``config['hang']`` (``"start"``, ``"resume"``) then wait forever —
    the first time only: a marker file next to the log remembers that they hung, so the
    next start or resume of the agent (in this worker or another one) goes through.
    ``on_pause`` returns ``{"pid": ..., "note": "saved by on_pause"}``.
    """

    def _log(self, *entry: Any) -> None:
        with open(self.config["log"], "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")

    def _hangs(self, hook: str) -> bool:
        if hook not in self.config.get("hang", ()):
            return False
        marker = Path(f"{self.config['log']}.hung-{hook}")
        if marker.exists():
            return False
        marker.touch()
        return True

    async def _maybe_hang(self, hook: str) -> None:
        if self._hangs(hook):
            await asyncio.Event().wait()

    async def on_start(self) -> None:
        self._log("start")
        await self._maybe_hang("start")

    async def on_pause(self) -> dict[str, Any]:
        self._log("pause")
        return {"pid": os.getpid(), "note": "saved by on_pause"}

    async def on_resume(self, state: dict[str, Any]) -> None:
        self._log("resume", state)
        await self._maybe_hang("resume")

    async def on_stop(self) -> None:
        self._log("stop")

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {"pid": os.getpid()}


class SyncHangingResumeAgent(BaseAgent):
    """A synchronous ``on_resume`` that blocks its thread until :data:`RELEASE_SYNC_HOOKS`
    is set (it cannot be cancelled, only abandoned)."""

    # Synchronous hooks on purpose (BaseAgent declares them async; the runtime takes both).
    def on_pause(self) -> dict[str, Any]:  # type: ignore[override]
        return {"note": "saved by on_pause"}

    def on_resume(self, state: dict[str, Any]) -> None:  # type: ignore[override]
        SYNC_HOOK_BLOCKING.set()
        RELEASE_SYNC_HOOKS.wait()

    async def execute_task(self, task: Task) -> dict[str, Any]:
        return {}


def hook_log(path: Path) -> list[list[Any]]:
    """The hooks a :class:`HangingHooksAgent` logged to ``path``, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class ResumeFailsAgent(BaseAgent):
    """``on_pause`` returns ``{"kept": True}``; ``on_resume`` raises."""

    async def on_pause(self) -> dict[str, Any]:
        return {"kept": True}

    async def on_resume(self, state: Any) -> None:
        raise RuntimeError("cannot resume")

    async def execute_task(self, task: Task) -> None:
        return None


class PauseRaisesCrashedAgent(BaseAgent):
    """Its own ``on_pause`` raises :class:`AgentCrashedError` (say, a backend it uses
    crashed): a hook failure like any other, not a crash of its host."""

    async def on_pause(self) -> dict[str, Any]:
        raise AgentCrashedError("the backend it talks to crashed")

    async def execute_task(self, task: Task) -> None:
        return None
