"""Small helpers for tests that drive a real runtime."""

from __future__ import annotations

from typing import Any

from miminions import AgentRuntime


async def start_agent(rt: AgentRuntime, name: str, agent: object, **kwargs: Any) -> str:
    """Register ``agent`` under ``name`` (``kwargs`` go to ``register_agent``), start it and
    return its id."""
    agent_id = await rt.register_agent(name, agent, **kwargs)
    await rt.start_agent(agent_id)
    return agent_id
