"""Shared fixtures, built on the miminions pytest plugin (``miminions.testing``): a started
runtime on a temporary database, and configs for tests that start their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, RuntimeConfig
from miminions.testing import runtime_config
from tests.support import agents


@pytest.fixture(autouse=True)
def _reset_agent_records() -> None:
    agents.CALLS.clear()
    agents.FAILING.clear()
    agents.GATES.clear()
    agents.STARTED.clear()
    agents.SyncBlockingAgent.release.clear()


@pytest.fixture
def db_path(miminions_config: RuntimeConfig) -> Path:
    """The test's fresh database path (the one ``rt`` and ``make_config`` use)."""
    return Path(miminions_config.storage_path)


@pytest.fixture
def make_config(miminions_config: RuntimeConfig) -> Callable[..., RuntimeConfig]:
    """Build a config for fast tests: the plugin's ``miminions_config`` (short backoffs, a
    short shutdown) with ``overrides``. Agents default to ``inline`` here: most tests watch
    agents through in-process records; the isolation tests and the parametrised behaviour
    tests choose ``process`` explicitly."""

    def make(**overrides: Any) -> RuntimeConfig:
        return runtime_config(base=miminions_config, **overrides)

    return make


@pytest.fixture
def rt(miminions_runtime: AgentRuntime) -> AgentRuntime:
    """A started runtime on a temporary database, stopped after the test (which then
    fails if the runtime left anything running)."""
    return miminions_runtime


@pytest.fixture(params=["inline", "process"])
def isolation(request: pytest.FixtureRequest) -> str:
    """The isolation mode under test: a test that asks for it runs once per mode."""
    return str(request.param)
