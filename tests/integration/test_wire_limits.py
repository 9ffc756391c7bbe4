"""What crosses the runtime <-> worker boundary at its limits: one frame of at most
``MAX_FRAME_BYTES`` (made small here, in the runtime's process, so the tests stay light)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from miminions import AgentRuntime, RuntimeConfig, TaskStatus
from miminions.kernel import wire
from miminions.kernel.models import ProcessSettings, RestartPolicy
from tests.support.wire_agents import BigCheckpointAgent, ForgedErrorAgent, KeysAgent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process agents"),
]

#: The frame limit of the runtime's end in these tests (its workers keep 64 MB).
LIMIT = 1_000_000


@pytest.fixture
def config(
    make_config: Callable[..., RuntimeConfig], monkeypatch: pytest.MonkeyPatch
) -> RuntimeConfig:
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", LIMIT)
    values: dict[str, Any] = {
        "default_isolation": "process",
        "process": ProcessSettings(heartbeat_timeout_seconds=10.0, cancel_grace_seconds=0.5),
        "restart": RestartPolicy(max_restarts=5, backoff_base_seconds=0.01),
    }
    return make_config(**values)


async def test_a_checkpoint_over_half_a_frame_reaches_the_retry(config: RuntimeConfig) -> None:
    """A checkpoint of 60% of a frame is sent and stored; the retry's run frame carried it
    twice (in the task and on its own), over the limit: every later attempt failed to be
    sent, and the task was dead-lettered with its progress unusable."""
    size = LIMIT * 6 // 10
    async with AgentRuntime(config=config) as rt:
        await rt.start_agent(await rt.register_agent("cp", BigCheckpointAgent))
        task_id = await rt.submit_task("big", input_data={"bytes": size}, max_retries=2)
        task = await rt.wait_for_task(task_id, 60)
        assert task.status is TaskStatus.COMPLETED, task.error_message
        assert task.output_data == {"resumed_with": size, "in_task": size}


async def test_an_error_reply_whose_type_has_no_utf8_form_is_stored_escaped(
    config: RuntimeConfig,
) -> None:
    """A worker's error reply whose ``type`` is ``"Bad\\ud800Type"`` (valid JSON; what a raw
    write by agent code can send) fails the task, stored with the type escaped: the store
    refused the task's row, dead letter and events, and the task kept its old state."""
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent("forger", ForgedErrorAgent)
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("forge"), 30)
        assert task.status is TaskStatus.FAILED
        assert task.error_message == "Bad\\ud800Type: m"


async def test_an_answer_too_large_for_a_frame_is_a_validation_error_saying_so(
    config: RuntimeConfig,
) -> None:
    """``context.kv.keys()`` whose answer is over the frame limit fails in a process agent
    with ``FrameTooLargeError`` (a ``ValidationError``, as documented) that says the answer
    is too large: it was a ``RemoteAgentError`` advising to "return or send a reference"."""
    async with AgentRuntime(config=config) as rt:
        stem = "k" * 1000
        for i in range(LIMIT // 1000 + 10):
            await rt.kv.set(f"{stem}{i:06d}", 1)
        agent_id = await rt.register_agent("lister", KeysAgent)
        await rt.start_agent(agent_id)
        task_id = await rt.submit_task("list", input_data={"prefix": ""}, agent_id=agent_id)
        output = (await rt.wait_for_task(task_id, 60)).output_data
        assert output is not None
        assert output["error"] == "FrameTooLargeError"
        assert output["validation_error"] is True
        assert output["message"].startswith("the answer to this call is larger than")
