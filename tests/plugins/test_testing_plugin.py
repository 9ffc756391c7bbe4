"""The pytest plugin ``miminions.testing`` (E-02), run the way a user runs it: pytester
writes a user's test file and runs pytest on it, and these tests check the outcomes and
the reports."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from miminions import AgentRuntime, RuntimeConfig, TaskRequest
from miminions.plugins.process_probe import read_usage
from miminions.testing import (
    TEST_CONFIG_DEFAULTS,
    AgentHarness,
    runtime_config,
    started_runtime,
    wait_until,
)
from tests.support.agents import EchoAgent
from tests.support.interpreter import run_python
from tests.support.runtime import ROOT

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.timeout(120)

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

# A user's agents, defined at the top of each user test file below.
AGENTS = """
import os

import pytest

from miminions import AgentStatus, BaseAgent, EventType, TaskStatus, hookimpl
from miminions.testing import AgentHarness, run_agent, started_runtime


class Echo(BaseAgent):
    async def execute_task(self, task):
        if task.input_data.get("fail"):
            raise RuntimeError(task.input_data["fail"])
        return {"echo": task.input_data, "pid": os.getpid()}
"""


def user_tests(pytester: pytest.Pytester, body: str, *, mode: str = "auto") -> None:
    """Write a user's test file (the agents above plus ``body``) and a pytest config with
    pytest-asyncio in ``mode``."""
    pytester.makeini(
        f"""
        [pytest]
        asyncio_mode = {mode}
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makepyfile(test_user=AGENTS + textwrap.dedent(body))


def run(pytester: pytest.Pytester, *, fresh_interpreter: bool = False) -> pytest.RunResult:
    """Run pytest on the user's tests; the plugin is loaded from its entry point, as in any
    project. ``fresh_interpreter``: in a subprocess, as process agents need (the worker
    processes must be able to import the test module)."""
    # Plugins the user's tests do not need are left out: loading them is most of the time.
    args: tuple[str, ...] = ("--strict-markers", "-p", "no:cacheprovider", "-p", "no:benchmark")
    args += ("-p", "no:hypothesispytest")
    if fresh_interpreter:
        return pytester.runpytest_subprocess(*args)
    return pytester.runpytest_inprocess(*args)


# --------------------------------------------------------------------------- fixtures
def test_a_users_agent_runs_on_the_runtime_fixture_in_strict_mode(
    pytester: pytest.Pytester,
) -> None:
    """The fixtures work in pytest-asyncio's strict mode (tests marked asyncio), on a
    database in the test's tmp_path, with the agent inline."""
    user_tests(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_echo(miminions_runtime, miminions_config, tmp_path):
            assert miminions_config.storage_path == str(tmp_path / "miminions.db")
            assert miminions_runtime.config == miminions_config
            (task,) = await run_agent(miminions_runtime, Echo, [{"x": 1}])
            assert task.status is TaskStatus.COMPLETED
            assert task.output_data == {"echo": {"x": 1}, "pid": os.getpid()}
            assert miminions_runtime.list_agents()[0].status is AgentStatus.STOPPED
        """,
        mode="strict",
    )
    run(pytester).assert_outcomes(passed=1)


def test_marker_options_reach_the_config_and_the_runtime(pytester: pytest.Pytester) -> None:
    """@pytest.mark.miminions sets config fields (isolation as a short name), the closest
    marker wins per option, and plugins=[...] are registered in the runtime."""
    user_tests(
        pytester,
        """
        class Recorder:
            def __init__(self):
                self.types = []

            @hookimpl
            def miminions_event(self, event):
                self.types.append(event.event_type)

        RECORDER = Recorder()
        pytestmark = pytest.mark.miminions(limits={"max_concurrent_agents": 3}, isolation="x")

        @pytest.mark.miminions(isolation="inline", plugins=[RECORDER])
        async def test_marked(miminions_runtime, miminions_plugins):
            assert miminions_plugins == [RECORDER]
            assert miminions_runtime.config.limits.max_concurrent_agents == 3
            assert miminions_runtime.config.default_isolation == "inline"
            await run_agent(miminions_runtime, Echo, [{}])
            assert EventType.TASK_COMPLETED in RECORDER.types

        @pytest.mark.miminions(no_such_option=1)
        async def test_unknown_option(miminions_runtime):
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.miminions: unknown RuntimeConfig field(s) *no_such_option*"]
    )


def test_marker_disables_plugins_to_replace_or_leave_out(pytester: pytest.Pytester) -> None:
    """disable=[...] builds the runtime without those plugins: a built-in left out (no event
    reaches the log), or replaced by a plugin of plugins=[...] (a store in another file).
    It is ``miminions_disable``; a bare string or an unknown name fails the setup."""
    user_tests(
        pytester,
        """
        import logging
        from pathlib import Path

        from miminions.plugins.sqlite_store import SQLiteStore


        def logged(caplog):
            return [r.getMessage() for r in caplog.records if r.name == "miminions.events"]


        async def test_logged_by_default(miminions_runtime, miminions_disable, caplog):
            caplog.set_level(logging.DEBUG, logger="miminions.events")
            assert miminions_disable == []
            await run_agent(miminions_runtime, Echo, [{}])
            assert any(line.startswith("task_completed ") for line in logged(caplog))


        @pytest.mark.miminions(disable=["logging_monitor"])
        async def test_not_logged(miminions_runtime, miminions_disable, caplog):
            caplog.set_level(logging.DEBUG, logger="miminions.events")
            assert miminions_disable == ["logging_monitor"]
            (task,) = await run_agent(miminions_runtime, Echo, [{}])
            assert task.status is TaskStatus.COMPLETED
            assert logged(caplog) == []


        class ElsewhereStore:
            miminions_plugin_name = "elsewhere_store"

            @hookimpl
            def miminions_make_store(self, config):
                return SQLiteStore(config.storage_path + ".elsewhere")


        @pytest.mark.miminions(disable=["sqlite_store"], plugins=[ElsewhereStore()])
        async def test_store_replaced(miminions_runtime, miminions_config):
            (task,) = await run_agent(miminions_runtime, Echo, [{"x": 1}])
            await miminions_runtime.store.flush()
            (stored,) = await miminions_runtime.store.load_tasks()
            assert (stored.task_id, stored.status) == (task.task_id, TaskStatus.COMPLETED)
            assert Path(miminions_config.storage_path + ".elsewhere").exists()
            assert not Path(miminions_config.storage_path).exists()


        @pytest.mark.miminions(disable="logging_monitor")
        async def test_a_string(miminions_runtime):
            pass


        @pytest.mark.miminions(disable=["no_such_plugin"])
        async def test_unknown_name(miminions_runtime):
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=3, errors=2)
    output = result.stdout.str()
    assert "disable takes a list of plugin names, e.g. disable=['logging_monitor']" in output
    assert "cannot disable unknown plugin(s) ['no_such_plugin']" in output


def test_a_conftest_redefines_the_config_fixture(pytester: pytest.Pytester) -> None:
    """A project changes the config for a whole directory by redefining miminions_config
    on top of the plugin's."""
    pytester.makeconftest(
        """
        import pytest
        from miminions.testing import runtime_config

        @pytest.fixture
        def miminions_config(miminions_config):
            return runtime_config(base=miminions_config, shutdown_timeout_seconds=7.0)
        """
    )
    user_tests(
        pytester,
        """
        async def test_config(miminions_runtime, tmp_path):
            assert miminions_runtime.config.shutdown_timeout_seconds == 7.0
            assert miminions_runtime.config.storage_path == str(tmp_path / "miminions.db")
        """,
    )
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.slow
def test_process_agents_run_in_a_worker_that_ends_with_the_test(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """With isolation="process" the agent (defined in the test module) runs in a worker
    process; after the test no worker process is left."""
    pids = tmp_path / "pids"
    user_tests(
        pytester,
        f"""
        @pytest.mark.miminions(isolation="process")
        async def test_in_a_worker(miminions_runtime):
            agent = await AgentHarness.start(miminions_runtime, Echo)
            task = await agent.run({{"x": 2}})
            assert task.output_data["pid"] == agent.status.process_id != os.getpid()
            with open({str(pids)!r}, "a") as file:
                file.write(f"{{task.output_data['pid']}}\\n")
        """,
    )
    run(pytester, fresh_interpreter=True).assert_outcomes(passed=1)
    (pid,) = [int(line) for line in pids.read_text().split()]
    assert read_usage(pid) is None  # no such process (or only its zombie, for pid 1 to reap)


# --------------------------------------------------------------------------- failure reports
def test_a_task_that_fails_fails_the_test_with_its_error_and_events(
    pytester: pytest.Pytester,
) -> None:
    """A task that does not end as expected fails the test with the task's error, the
    agent's status and the recent events; expect= accepts other ends."""
    user_tests(
        pytester,
        """
        async def test_expects_completion(miminions_runtime):
            agent = await AgentHarness.start(miminions_runtime, Echo, name="echoer")
            await agent.run({"fail": "the model said no"})

        async def test_expects_the_failure(miminions_runtime):
            agent = await AgentHarness.start(miminions_runtime, Echo)
            task = await agent.run({"fail": "no"}, expect="failed")
            assert task.error_message == "RuntimeError: no"
            (done,) = await run_agent(miminions_runtime, Echo, [{"fail": "x"}], expect=None)
            assert done.status is TaskStatus.FAILED
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*expected 1 task(s) to end completed, but 1 ended otherwise:",
            "*task 'echoer-1' (*) is failed",
            "*error: RuntimeError: the model said no",
            "*agent 'echoer' is running",
            "*recent events:",
            "*task_started task=*",
            "*task_failed [[]error] task=* *the model said no*",
        ]
    )


def test_a_task_that_does_not_finish_fails_the_test_with_what_holds_it(
    pytester: pytest.Pytester,
) -> None:
    """A wait is bounded: past the timeout the test fails, saying why the task waits."""
    user_tests(
        pytester,
        """
        async def test_waits(miminions_runtime):
            agent = await AgentHarness.start(miminions_runtime, Echo)
            await miminions_runtime.pause_queue()
            await agent.run({}, timeout_seconds=0.2)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*1 of 1 task(s) did not finish within 0.2 s:",
            "*task 'Echo-1' (*) is pending",
            "*why: the task queue is paused*",
            "*queue_paused",
        ]
    )
    result.stdout.no_fnmatch_line("*WaitTimeoutError*")  # the report replaces it


def test_an_agent_that_fails_to_start_fails_the_test(pytester: pytest.Pytester) -> None:
    """AgentHarness.start fails the test with the reason when on_start raises."""
    user_tests(
        pytester,
        """
        class Broken(BaseAgent):
            async def on_start(self):
                raise ConnectionError("no model server")

            async def execute_task(self, task):
                return {}

        async def test_start(miminions_runtime):
            await AgentHarness.start(miminions_runtime, Broken)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*agent 'Broken' failed to start: *ConnectionError: no model server*", "*agent_failed*"]
    )


# --------------------------------------------------------------------------- teardown checks
def test_a_runtime_that_did_not_stop_fails_the_teardown(pytester: pytest.Pytester) -> None:
    """The teardown reports what the runtime left running (here its stop is disabled, so
    the agent and its worker go on); check_leaks=False turns the checks off."""
    user_tests(
        pytester,
        """
        async def no_stop(*args, **kwargs):
            pass

        @pytest.mark.miminions(isolation="process")
        async def test_leaky(miminions_runtime):
            await AgentHarness.start(miminions_runtime, Echo, name="stays")
            miminions_runtime.stop = no_stop

        @pytest.mark.miminions(check_leaks=False)
        async def test_unchecked(miminions_runtime):
            await AgentHarness.start(miminions_runtime, Echo, name="stays")
            miminions_runtime.stop = no_stop
        """,
    )
    result = run(pytester, fresh_interpreter=True)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaky*",
            "*the runtime left things running after it stopped:",
            "*agent 'stays' (*) is still running",
            "*worker process * of agent * is alive",
        ]
    )


# --------------------------------------------------------------------------- the docs example
def test_the_docs_example_runs_as_written(pytester: pytest.Pytester) -> None:
    """docs/testing.md: the complete example, and the restart example (started_runtime)
    added to it, pass in strict mode as written."""
    blocks = PYTHON_BLOCK.findall((ROOT / "docs" / "testing.md").read_text(encoding="utf-8"))
    example = blocks[0]
    (restart,) = [block for block in blocks if "started_runtime(miminions_config)" in block]
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_summarizer=example + "\n\n" + restart)
    run(pytester, fresh_interpreter=True).assert_outcomes(passed=5)


# --------------------------------------------------------------------------- helpers, import
async def test_harness_names_agents_and_routes_tasks_to_its_agent(
    miminions_runtime: AgentRuntime,
) -> None:
    """Default names are the agent's __name__, suffixed when taken; input dicts and
    TaskRequests without a route go to the harness's agent, in order."""
    first = await AgentHarness.start(miminions_runtime, EchoAgent)
    second = await AgentHarness.start(miminions_runtime, EchoAgent)
    assert (first.name, second.name) == ("EchoAgent", "EchoAgent-2")
    given = TaskRequest(name="given", input_data={"n": 2})
    tasks = await second.run_many([{"n": 1}, given])
    assert [task.name for task in tasks] == ["EchoAgent-2-1", "given"]
    assert [task.output_data["echo"] for task in tasks] == [{"n": 1}, {"n": 2}]
    assert {task.assigned_agent_id for task in tasks} == {second.agent_id}


async def test_started_runtime_builds_the_runtime_without_the_disabled_plugins(
    miminions_config: RuntimeConfig,
) -> None:
    """started_runtime(disable=[...]) is AgentRuntime(disable=[...]); the plugin the leak
    checks rely on cannot be disabled."""
    async with started_runtime(miminions_config, disable=["logging_monitor"]) as rt:
        names = rt.plugin_manager.plugin_names()
        assert "logging_monitor" not in names
        assert {"sqlite_store", "miminions_testing_watch"} <= set(names)
    with pytest.raises(ValueError, match="'miminions_testing_watch' cannot be disabled"):
        async with started_runtime(miminions_config, disable=["miminions_testing_watch"]):
            pass


async def test_an_impossible_expect_is_rejected_before_anything_is_submitted(
    miminions_runtime: AgentRuntime,
) -> None:
    agent = await AgentHarness.start(miminions_runtime, EchoAgent)
    with pytest.raises(ValueError, match=r"expect must be one of \['completed', 'failed'"):
        await agent.run({}, expect="pending")
    assert miminions_runtime.list_tasks() == []


def test_runtime_config_builds_on_the_test_defaults_or_a_base(tmp_path: Path) -> None:
    config = runtime_config(tmp_path / "a.db", isolation="process")
    assert config.storage_path == str(tmp_path / "a.db")
    assert config.default_isolation == "process"
    assert config.retry_backoff_base_seconds == TEST_CONFIG_DEFAULTS["retry_backoff_base_seconds"]
    again = runtime_config(base=config, limits={"max_concurrent_agents": 2})
    assert again.limits.max_concurrent_agents == 2
    assert again.default_isolation == "process"
    assert again.storage_path == config.storage_path


def test_runtime_config_rejects_unknown_fields_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown RuntimeConfig field\(s\) \['isolaton'\]"):
        runtime_config(tmp_path / "a.db", isolaton="process")
    with pytest.raises(TypeError, match="needs a storage_path"):
        runtime_config()
    with pytest.raises(TypeError, match="not both"):
        runtime_config(tmp_path / "a.db", isolation="inline", default_isolation="inline")
    with pytest.raises(ValueError, match="retry_backoff_base_seconds"):
        runtime_config(tmp_path / "a.db", retry_backoff_base_seconds=-1)
    assert isinstance(runtime_config(tmp_path / "a.db"), RuntimeConfig)


async def test_wait_until_returns_the_value_or_fails_naming_what_it_waited_for() -> None:
    values = iter([0, None, "ready"])
    assert await wait_until(lambda: next(values), within=5) == "ready"
    with pytest.raises(pytest.fail.Exception, match=r"waiting for the flag \(last: False\)"):
        await wait_until(lambda: False, what="the flag", within=0.05)


def test_the_plugin_loads_without_pytest_asyncio() -> None:
    """pytest loads the plugin in every project that has miminions installed, also in one
    without pytest-asyncio: importing it must not fail there."""
    code = (
        "import sys; sys.modules['pytest_asyncio'] = None; "
        "import miminions.testing as t; "
        "print(t.miminions_runtime.name)"
    )
    assert run_python(code).strip() == "miminions_runtime"


def test_loading_the_plugin_does_not_load_the_runtime() -> None:
    """Every pytest run of an environment with miminions installed imports the plugin:
    it must not pay for the runtime (its models take a third of a second to build) until a
    test uses a fixture or a helper. The helpers are still importable from it."""
    code = (
        "import sys, miminions.testing as t; "
        "loaded = sorted(m for m in sys.modules if m.startswith('miminions.kernel')); "
        "print(loaded); "
        "from miminions.testing import AgentHarness; print(AgentHarness.__name__)"
    )
    assert run_python(code).split("\n")[:2] == ["[]", "AgentHarness"]
