"""The helpers of ``miminions.testing`` as a user writing tests for their own agents uses
them: two runtimes in one test, bounded waits, marker options, clear errors for misuse,
failure reports, loop scopes, and the samples of docs/testing.md."""

from __future__ import annotations

import asyncio
import os
import re
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from miminions import AgentRuntime, BaseAgent, RuntimeConfig, Task, ValidationError
from miminions.kernel import agent as agent_module
from miminions.testing import (
    AgentHarness,
    run_agent,
    runtime_config,
    started_runtime,
    wait_until,
)
from tests.support.runtime import ROOT

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(120)

INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


# --------------------------------------------------------------------------- user agents
class Echo(BaseAgent):
    async def execute_task(self, task: Task) -> Any:
        return {"echo": task.input_data, "pid": os.getpid()}


GATE: dict[str, asyncio.Event] = {}


class Gated(BaseAgent):
    """Runs until the test sets GATE["release"]; says when it began."""

    async def execute_task(self, task: Task) -> Any:
        GATE["started"].set()
        await GATE["release"].wait()
        return {}


class Mixed(BaseAgent):
    async def execute_task(self, task: Task) -> Any:
        if task.input_data.get("fail"):
            raise RuntimeError("the real cause")
        GATE["started"].set()
        await GATE["release"].wait()
        return {}


class Summarizer(BaseAgent):  # docs/testing.md's example agent, verbatim
    async def execute_task(self, task: Task) -> Any:
        text = task.input_data["text"]
        if not text:
            raise ValueError("nothing to summarize")
        return {"summary": text[:10], "pid": os.getpid()}


# --------------------------------------------------------------------------- 1. two runtimes
@pytest.mark.slow
@pytest.mark.miminions(isolation="process")
async def test_a_second_runtime_does_not_blame_the_firsts_process_agent(
    miminions_runtime: AgentRuntime, tmp_path: Path
) -> None:
    """docs/testing.md "More than one runtime": a second runtime started mid-test took
    every asyncio task created since it started that runs miminions code as its own
    leftover: the first runtime's per-worker tasks of a process agent started meanwhile
    were waited on for 5 s and reported, though neither runtime leaked anything."""
    async with started_runtime(runtime_config(tmp_path / "second.db")) as second:
        first_agent = await AgentHarness.start(miminions_runtime, Echo)
        await first_agent.run({"n": 1})
        second_agent = await AgentHarness.start(second, Echo)
        await second_agent.run({"n": 2})
    await first_agent.run({"n": 3})


async def test_a_second_runtime_does_not_blame_the_firsts_running_task(
    miminions_runtime: AgentRuntime, tmp_path: Path
) -> None:
    """Same, inline: a task of the first runtime that runs while the second one ends was
    reported as the second runtime's leftover (AsyncioExecutor._work is pending)."""
    GATE["started"], GATE["release"] = asyncio.Event(), asyncio.Event()
    agent = await AgentHarness.start(miminions_runtime, Gated)
    async with started_runtime(runtime_config(tmp_path / "second.db")):
        task_id = await agent.submit({})
        await asyncio.wait_for(GATE["started"].wait(), 10)
    GATE["release"].set()
    await agent.wait(task_id)


async def test_two_runtimes_in_parallel_one_ending_while_the_other_works(
    tmp_path: Path,
) -> None:
    """Two runtimes used side by side (asyncio.gather): the one that ended first blamed
    the other's running task."""
    GATE["started"], GATE["release"] = asyncio.Event(), asyncio.Event()
    long_config = runtime_config(tmp_path / "long.db")
    short_config = runtime_config(tmp_path / "short.db")
    short_opened = asyncio.Event()
    short_done = asyncio.Event()

    async def long_one() -> None:
        async with started_runtime(long_config) as rt:
            await short_opened.wait()
            agent = await AgentHarness.start(rt, Gated)
            task_id = await agent.submit({})
            await short_done.wait()
            GATE["release"].set()
            await agent.wait(task_id)

    async def short_one() -> None:
        try:
            async with started_runtime(short_config) as rt:
                short_opened.set()
                await run_agent(rt, Echo, [{}])
                await asyncio.wait_for(GATE["started"].wait(), 10)
        finally:
            short_done.set()

    await asyncio.gather(long_one(), short_one())


# --------------------------------------------------------------------------- 2. wait_until
async def test_wait_until_bounds_an_async_check_that_does_not_return() -> None:
    """docs: wait_until "fails the test after `within` seconds naming `what`", also when an
    async check does not return (it was awaited without a bound: the wait hung)."""
    never = asyncio.Event()

    async def reply_arrived() -> bool:
        await never.wait()
        return True

    with pytest.raises(pytest.fail.Exception, match="the reply"):
        await asyncio.wait_for(wait_until(reply_arrived, what="the reply", within=0.1), 5)


# --------------------------------------------------------------------------- 3. marker merge
@pytest.mark.miminions(isolation="process")
class TestIsolationMarkerClosestWins:
    @pytest.mark.miminions(default_isolation="inline")
    def test_closest_marker_wins_for_isolation(self, miminions_config: RuntimeConfig) -> None:
        """docs: "where several [markers] apply, the one closest to the test wins, option by
        option"; isolation is "short for default_isolation". A class said isolation=, the
        test default_isolation=: the setup failed "give isolation or default_isolation, not
        both"."""
        assert miminions_config.default_isolation == "inline"


# --------------------------------------------------------------------------- 4. bad errors
async def test_submit_with_a_non_dict_input_gives_the_runtimes_error(
    miminions_runtime: AgentRuntime,
) -> None:
    """submit("text") raised "dictionary update sequence element #0 has length 1; 2 is
    required" (dict() of it) instead of the runtime's "input_data must be a dict"."""
    agent = await AgentHarness.start(miminions_runtime, Echo)
    with pytest.raises(ValidationError, match="input_data must be a dict"):
        await agent.submit("text")  # type: ignore[arg-type]


async def test_run_agent_with_one_dict_instead_of_a_list_says_so(
    miminions_runtime: AgentRuntime,
) -> None:
    """run_agent(rt, Agent, {"text": "a"}) -- one task's input instead of a list of them --
    iterated the dict's keys and failed with "dictionary update sequence element #0 has
    length 1; 2 is required"."""
    with pytest.raises(TypeError, match=r"tasks must be a list of input_data dicts"):
        await run_agent(miminions_runtime, Echo, {"text": "a"})  # type: ignore[dict-item]


def test_marker_plugins_not_a_list_says_so(pytester: pytest.Pytester) -> None:
    """@pytest.mark.miminions(plugins=MyPlugin()) (one plugin, not a list) failed the
    setup with "TypeError: 'MyPlugin' object is not iterable"."""
    pytester.makeini(INI)
    pytester.makepyfile(
        test_user="""
        import pytest

        class MyPlugin:
            pass

        @pytest.mark.miminions(plugins=MyPlugin())
        async def test_it(miminions_runtime):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.no_fnmatch_line("*object is not iterable*")
    result.stdout.fnmatch_lines(["*plugins*list*"])


# --------------------------------------------------------------------------- 5. reports
async def test_run_many_timeout_report_names_the_task_that_failed(
    miminions_runtime: AgentRuntime,
) -> None:
    """run_many "Fails the test as wait does, describing every task that did not end as
    expected": when one task fails and another does not finish in time, the report listed
    only the late one; the failed task -- usually the cause -- was left out."""
    GATE["started"], GATE["release"] = asyncio.Event(), asyncio.Event()
    agent = await AgentHarness.start(miminions_runtime, Mixed, name="mixed")
    with pytest.raises(pytest.fail.Exception) as failure:
        await agent.run_many([{"fail": True}, {}], timeout_seconds=0.5)
    GATE["release"].set()
    report = str(failure.value)
    assert "1 of 2 task(s) did not finish within 0.5 s, and 1 ended otherwise" in report
    assert "task 'mixed-1' (" in report
    assert "error: RuntimeError: the real cause" in report


# --------------------------------------------------------------------------- 6. docs
def _docs_block(start: str) -> str:
    blocks = re.findall(
        r"^```python\n(.*?)^```",
        (ROOT / "docs" / "testing.md").read_text(encoding="utf-8"),
        re.DOTALL | re.MULTILINE,
    )
    (block,) = [b for b in blocks if b.startswith(start)]
    return str(block)


async def test_docs_agent_harness_sample_runs_as_written(miminions_runtime: AgentRuntime) -> None:
    """docs/testing.md "Running agents and awaiting outcomes": the AgentHarness sample runs
    as written with the page's own Summarizer (a task it expected to fail completed)."""
    sample = _docs_block("agent = await AgentHarness.start(rt, Summarizer")
    source = "async def sample(rt):\n" + textwrap.indent(sample, "    ")
    namespace: dict[str, Any] = {"AgentHarness": AgentHarness, "Summarizer": Summarizer}
    exec(compile(source, "docs/testing.md", "exec"), namespace)
    await namespace["sample"](miminions_runtime)


MODULE_LOOP_TEST = """
import pytest
from miminions import BaseAgent
from miminions.testing import run_agent

pytestmark = pytest.mark.asyncio(loop_scope="module")

class Echo(BaseAgent):
    async def execute_task(self, task):
        return {}

async def test_it(miminions_runtime):
    await run_agent(miminions_runtime, Echo, [{}], timeout_seconds=5)
"""


def test_a_test_on_another_loop_than_the_fixture_is_told_why(pytester: pytest.Pytester) -> None:
    """A module's tests on one event loop (``loop_scope="module"``) with the fixture loop
    function-scoped: the first call failed "this runtime runs on another event loop ...
    from another thread, use asyncio.run_coroutine_threadsafe", pointing at threads. The
    setup fails saying which setting to change."""
    pytester.makeini(INI)
    pytester.makepyfile(test_user=MODULE_LOOP_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*Set asyncio_default_fixture_loop_scope = module*"])


def test_a_test_on_the_fixtures_loop_scope_runs(pytester: pytest.Pytester) -> None:
    """With ``asyncio_default_fixture_loop_scope = module``, as the message says, it runs."""
    pytester.makeini(INI.replace("loop_scope = function", "loop_scope = module"))
    pytester.makepyfile(test_user=MODULE_LOOP_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=1)


def _leak() -> asyncio.Task[object]:
    """An asyncio task running miminions code left pending (what the check looks for)."""
    return asyncio.ensure_future(agent_module._awaited(asyncio.Event().wait()))


async def _block_leaving_a_task(path: Path, leaked: list[asyncio.Task[object]]) -> None:
    async with started_runtime(runtime_config(path)):
        leaked.append(_leak())  # made after the runtime started: the check's business


async def test_a_runtime_open_on_another_loop_leaves_the_task_check_on(tmp_path: Path) -> None:
    """asyncio.all_tasks() is per loop, so a runtime open on another event loop (a
    session-scoped runtime on its own loop, in another thread) cannot own this loop's
    tasks: it does not turn the task check off (a leak went unreported)."""
    leaked: list[asyncio.Task[object]] = []
    opened, release = threading.Event(), threading.Event()

    async def other_runtime() -> None:
        async with started_runtime(runtime_config(tmp_path / "other.db"), check_leaks=False):
            opened.set()
            await asyncio.to_thread(release.wait, 30)

    thread = threading.Thread(target=asyncio.run, args=(other_runtime(),))
    try:
        # Control: alone, the leak fails the teardown.
        with pytest.raises(pytest.fail.Exception, match="is pending"):
            await _block_leaving_a_task(tmp_path / "alone.db", leaked)
        thread.start()
        assert opened.wait(30)
        with pytest.raises(pytest.fail.Exception, match="is pending"):
            await _block_leaving_a_task(tmp_path / "mine.db", leaked)
    finally:
        for task in leaked:
            task.cancel()
        release.set()
        if thread.is_alive():
            thread.join(30)


async def test_an_async_check_that_answers_at_once_is_reported_with_its_last_value() -> None:
    """An async check answering False at once, every time, times out with its last value,
    as a sync check does (the check made after the deadline was cancelled before it ran,
    and the failure claimed "the check itself did not return")."""
    calls = 0

    async def check() -> bool:
        nonlocal calls
        calls += 1
        return False

    with pytest.raises(pytest.fail.Exception) as failed:
        await wait_until(check, "the flag", within=0.05)
    message = str(failed.value)
    assert "did not return" not in message, message
    assert "last: False" in message, message


async def test_an_async_check_true_at_once_passes_like_a_sync_one() -> None:
    """A check that is true passes even with ``within=0`` (it is checked once), sync or
    async (the async one was cancelled before it ran)."""

    def sync_check() -> str:
        return "ready"

    async def async_check() -> str:
        return "ready"

    assert await wait_until(sync_check, "ready", within=0) == "ready"
    assert await wait_until(async_check, "ready", within=0) == "ready"
