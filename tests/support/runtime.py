"""Small helpers for tests that drive a real runtime."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from miminions import AgentRuntime

ROOT = Path(__file__).resolve().parents[2]


async def run_child_runtime(
    module: str, db_path: Path, *, stdin: bool = False
) -> asyncio.subprocess.Process:
    """Start ``python -m tests.support.<module> DB_PATH`` (a runtime in a child process a
    test can kill) from the project root, its stdout (and with ``stdin``, its stdin) piped
    to the test."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"tests.support.{module}",
        str(db_path),
        stdin=asyncio.subprocess.PIPE if stdin else None,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


async def start_agent(rt: AgentRuntime, name: str, agent: object, **kwargs: Any) -> str:
    """Register ``agent`` under ``name`` (``kwargs`` go to ``register_agent``), start it and
    return its id."""
    agent_id = await rt.register_agent(name, agent, **kwargs)
    await rt.start_agent(agent_id)
    return agent_id
