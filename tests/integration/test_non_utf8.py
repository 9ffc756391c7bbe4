"""Text with no UTF-8 form coming out of agent code (R-04): a lone surrogate, as
``os.fsdecode`` makes of an undecodable file name, in an error, a checkpoint or a message.

Nothing may hang or be lost over it: an error quoting such text still fails its task (the
text escaped, so it can be stored and sent), and data holding it is refused with a typed
error, the same in both isolation modes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from miminions import AgentRuntime, RuntimeConfig, TaskStatus
from miminions.testing import started_runtime
from tests.support.process_agents import NonUtf8Agent

pytestmark = pytest.mark.timeout(60)

WAIT = 15.0


async def _run(rt: AgentRuntime, agent_id: str, mode: str) -> tuple[TaskStatus, str]:
    task = await rt.wait_for_task(
        await rt.submit_task("bad-text", {"mode": mode}, agent_id=agent_id), WAIT
    )
    return task.status, task.error_message or ""


async def test_an_error_quoting_non_utf8_text_fails_its_task_and_is_stored(
    make_config: Callable[..., RuntimeConfig], isolation: str
) -> None:
    config = make_config(default_isolation=isolation)
    async with started_runtime(config) as rt:
        agent_id = await rt.register_agent("files", NonUtf8Agent)
        await rt.start_agent(agent_id)
        status, error = await _run(rt, agent_id, "raise")
        task_id = rt.list_tasks()[0].task_id

    assert status is TaskStatus.FAILED
    assert error == "FileNotFoundError: no such file: report-\\udcff.txt"
    async with started_runtime(config) as rt:  # the failure was stored, as it was reported
        stored = rt.get_task_status(task_id)
        assert (stored.status, stored.error_message) == (status, error)


@pytest.mark.parametrize("mode", ["checkpoint", "send"])
async def test_non_utf8_data_from_an_agent_is_refused_with_a_validation_error(
    make_config: Callable[..., RuntimeConfig], isolation: str, mode: str
) -> None:
    async with started_runtime(make_config(default_isolation=isolation)) as rt:
        agent_id = await rt.register_agent("files", NonUtf8Agent)
        await rt.start_agent(agent_id)

        status, error = await _run(rt, agent_id, mode)

        assert status is TaskStatus.FAILED
        assert error.startswith("ValidationError: "), error
        assert "cannot be encoded as UTF-8" in error
