"""Shared fixtures: a started runtime on a temporary database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, RuntimeConfig
from tests.support import agents


@pytest.fixture(autouse=True)
def _reset_agent_records() -> None:
    agents.CALLS.clear()
    agents.FAILING.clear()
    agents.GATES.clear()
    agents.STARTED.clear()
    agents.SyncBlockingAgent.release.clear()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh database path."""
    return tmp_path / "runtime.db"


@pytest.fixture
def make_config(db_path: Path) -> Callable[..., RuntimeConfig]:
    """Build a config for fast tests (short backoffs). Agents default to ``inline`` here:
    most tests watch agents through in-process records; the isolation tests and the
    parametrised behaviour tests choose ``process`` explicitly."""

    def make(**overrides: Any) -> RuntimeConfig:
        values: dict[str, Any] = {
            "storage_path": str(db_path),
            "default_isolation": "inline",
            "retry_backoff_base_seconds": 0.01,
            "retry_backoff_max_seconds": 0.05,
            "shutdown_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return RuntimeConfig(**values)

    return make


@pytest.fixture
async def rt(make_config: Callable[..., RuntimeConfig]) -> AsyncIterator[AgentRuntime]:
    """A started runtime on a temporary database, stopped after the test."""
    runtime = AgentRuntime(config=make_config())
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
