"""F-20, F-25: what survives a restart, and one runtime per database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    ConfigurationError,
    InvalidStateError,
    ResourceLimits,
    RuntimeConfig,
    TaskRequest,
    TaskStatus,
    hookimpl,
)
from miminions.kernel.runtime import RUN_META_KEY, live_owner
from tests.support import agents
from tests.support.children import finish, first_line, spawn
from tests.support.memory_store import MemoryStore
from tests.support.queued_resume_child import KEPT_STATE, KeeperAgent, one_slot_config


async def test_queue_pause_survives_restart(make_config: Callable[..., RuntimeConfig]) -> None:
    """F-25: a paused queue comes back paused; pending work waits until it is resumed."""
    async with AgentRuntime(config=make_config()) as rt:
        await rt.pause_queue()
        task_id = await rt.submit_task("later")
    async with AgentRuntime(config=make_config()) as rt:
        assert rt.get_queue_status().paused
        await rt.start_agent(await rt.register_agent("echo", agents.EchoAgent))
        assert [r.kind.value for r in rt.explain(task_id).reasons] == ["queue_paused"]
        await rt.resume_queue()
        assert (await rt.wait_for_task(task_id, 5)).status is TaskStatus.COMPLETED
    async with AgentRuntime(config=make_config()) as rt:
        assert not rt.get_queue_status().paused


async def test_pending_tasks_survive_a_clean_restart(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """F-20: tasks still waiting at a clean stop are there after a restart, with their
    dependencies, idempotency keys and priorities."""
    async with AgentRuntime(config=make_config()) as rt:
        await rt.pause_queue()
        first = await rt.submit_task("first", {"n": 1}, priority=10, idempotency_key="k")
        second = await rt.submit_task("second", dependencies=[first])
    async with AgentRuntime(config=make_config()) as rt:
        assert rt.recovery is None
        assert rt.get_task_status(first).input_data == {"n": 1}
        assert rt.get_task_status(second).status is TaskStatus.BLOCKED
        assert await rt.submit_task("first", idempotency_key="k") == first
        await rt.start_agent(await rt.register_agent("echo", agents.EchoAgent))
        await rt.resume_queue()
        assert (await rt.wait_for_task(second, 5)).status is TaskStatus.COMPLETED


async def test_fifo_within_a_priority_survives_a_restart(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """Tasks of one priority keep their first-in, first-out order across a restart, also
    when a batch lists a dependent before its prerequisite (d needs p, submitted as d, q,
    p: q is ahead of p before the restart and after it)."""
    async with AgentRuntime(config=make_config()) as rt:
        await rt.pause_queue()
        await rt.submit_tasks(
            [
                TaskRequest(task_id="d", name="d", dependencies=["p"]),
                TaskRequest(task_id="q", name="q"),
                TaskRequest(task_id="p", name="p"),
                TaskRequest(task_id="r", name="r"),
            ]
        )
        before = {t: rt.get_task_status(t).queue_position for t in ("q", "p", "r")}
        assert before == {"q": 0, "p": 1, "r": 2}
    async with AgentRuntime(config=make_config()) as rt:
        assert {t: rt.get_task_status(t).queue_position for t in ("q", "p", "r")} == before
        assert rt.get_task_status("d").status is TaskStatus.BLOCKED


async def test_a_crashed_runs_record_naming_a_live_process_does_not_block_a_restart(
    make_config: Callable[..., RuntimeConfig], db_path: Path
) -> None:
    """R-02, F-20: the run record of a runtime that crashed names its pid, which may belong
    to another process by now (pids are reused; here: our parent). The built-in store holds
    the database's OS lock, which died with the crashed runtime: the next start recovers
    instead of taking the living process for a runtime."""
    async with AgentRuntime(config=make_config()):
        pass
    with sqlite3.connect(db_path) as conn:
        record = json.dumps({"pid": os.getppid(), "clean": False, "started_at": 0})
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (record, RUN_META_KEY))
    async with AgentRuntime(config=make_config()) as rt:
        assert rt.recovery is not None
        assert rt.recovery["clean_shutdown"] is False


async def test_without_a_store_lock_a_live_runs_record_is_refused(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """R-02: with a store that takes no lock, the run record is the only guard: a runtime
    does not take over a database whose record names a living process that did not stop."""
    store = MemoryStore()
    store.meta[RUN_META_KEY] = {"pid": os.getppid(), "clean": False}

    class StorePlugin:
        @hookimpl
        def miminions_make_store(self, config: RuntimeConfig) -> MemoryStore:
            return store

    runtime = AgentRuntime(config=make_config(), plugins=[StorePlugin()])
    with pytest.raises(ConfigurationError, match=f"in use by a runtime in process {os.getppid()}"):
        await runtime.start()


async def test_second_runtime_in_one_process_is_refused(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """R-02: two runtimes of one process never share a database (each task would run
    twice); once the first stops, the database is free again."""
    async with AgentRuntime(config=make_config()):
        second = AgentRuntime(config=make_config())
        with pytest.raises(ConfigurationError, match="already open by another runtime"):
            await second.start()
        with pytest.raises(InvalidStateError, match="this runtime is stopped"):
            await second.start()  # refused, it is over (not left "starting" for good)
        await second.stop()  # nothing to stop: returns at once
    async with AgentRuntime(config=make_config()) as third:
        assert third.is_running


class MoveTheDatabase:
    """Points the runtime at ``path`` from miminions_configure."""

    miminions_plugin_name = "move_the_database"

    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl
    def miminions_configure(self, config: RuntimeConfig) -> None:
        config.storage_path = self.path


async def test_the_database_claimed_is_the_one_configure_chose(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """R-02: one runtime per database in a process holds for the path miminions_configure
    left, not the one the runtime was given (the claim was on the path given)."""
    first = make_config()
    async with AgentRuntime(config=first):
        moved = AgentRuntime(
            config=make_config(storage_path=str(tmp_path / "elsewhere.db")),
            plugins=[MoveTheDatabase(first.storage_path)],
        )
        with pytest.raises(ConfigurationError, match="already open by another runtime"):
            await moved.start()


async def test_configure_may_give_the_database_as_a_path_object(
    make_config: Callable[..., RuntimeConfig], tmp_path: Path
) -> None:
    """A path object miminions_configure sets is taken as text (the start crashed on it)."""
    target = tmp_path / "moved.db"
    async with AgentRuntime(config=make_config(), plugins=[MoveTheDatabase(target)]) as rt:  # type: ignore[arg-type]
        assert rt.config.storage_path == str(target)
    assert target.exists()


async def test_a_database_whose_agent_has_a_soft_limit_above_its_hard_one_opens(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    """Limits stored before a soft limit above its hard one was refused (at registration)
    still load: the database opens, its work is there."""
    config = make_config()
    async with AgentRuntime(config=config) as rt:
        agent_id = await rt.register_agent(
            "a", agents.EchoAgent, limits=ResourceLimits(max_memory_per_agent_mb=100)
        )
        await rt.submit_task("kept")
    with sqlite3.connect(config.storage_path) as conn:
        [(spec,)] = conn.execute("SELECT spec FROM agents WHERE agent_id = ?", (agent_id,))
        data = json.loads(spec)
        data["limits"]["soft_memory_per_agent_mb"] = 200.0  # as an older release stored it
        conn.execute("UPDATE agents SET spec = ? WHERE agent_id = ?", (json.dumps(data), agent_id))
    async with AgentRuntime(config=config) as rt:
        assert [t.name for t in rt.list_tasks()] == ["kept"]


def test_live_owner_reads_the_run_record() -> None:
    """A run record names a live owner only when it did not stop cleanly and is alive."""
    assert live_owner(None) is None
    assert live_owner({"pid": os.getpid(), "clean": True}) is None
    assert live_owner({"pid": os.getpid(), "clean": False}) == os.getpid()
    assert live_owner({"pid": "x", "clean": False}) is None


@pytest.mark.slow
async def test_concurrent_starts_in_two_processes_only_one_wins(db_path: Path) -> None:
    """R-02: two processes starting a runtime on one database at the same moment: exactly
    one starts, the other is refused naming it (else every task would run twice); once the
    winner stops, the database is free again."""
    children = [await spawn("start_child", db_path) for _ in range(2)]
    try:
        async with asyncio.timeout(60):
            lines = [await first_line(child) for child in children]
        started = [i for i, line in enumerate(lines) if line.startswith("started ")]
        assert len(started) == 1, lines
        winner, loser = children[started[0]], children[1 - started[0]]
        await loser.wait()
        assert loser.returncode == 0
        winner_pid = lines[started[0]].removeprefix("started ")
        assert lines[1 - started[0]] == (
            f"refused ConfigurationError: database {str(db_path)!r} is in use by a runtime in "
            f"process {winner_pid}; one runtime per database (stop that one, or use another "
            "storage_path)"
        )
        async with asyncio.timeout(60):
            await finish(winner)
            assert await first_line(winner) == "stopped"
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    async with AgentRuntime(db_path) as third:
        assert third.is_running
        assert third.recovery is None  # the winner stopped cleanly


@pytest.mark.slow
async def test_database_of_a_killed_runtime_can_be_started_again(db_path: Path) -> None:
    """R-02, F-20: the database's lock dies with its holder, so a runtime killed with
    SIGKILL never leaves its database taken: the next start recovers it."""
    child = await spawn("start_child", db_path)
    try:
        async with asyncio.timeout(60):
            line = await first_line(child)
        assert line.startswith("started "), line
        with pytest.raises(ConfigurationError, match="in use by a runtime in process"):
            await AgentRuntime(db_path).start()
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    async with AgentRuntime(db_path) as rt:
        assert rt.recovery is not None
        assert rt.recovery["clean_shutdown"] is False
        assert rt.recovery["previous_pid"] == child.pid


@pytest.mark.slow
async def test_a_paused_agent_whose_resume_was_queued_stays_paused_after_a_kill(
    db_path: Path,
) -> None:
    """F-09, F-20: a paused agent whose resume waits for an agent slot when the runtime is
    SIGKILLed comes back paused with its state, and on_resume gets that state."""
    config = one_slot_config(str(db_path))
    async with AgentRuntime(config=config) as rt:
        keeper = await rt.register_agent("keeper", KeeperAgent)
        await rt.start_agent(keeper)
        await rt.pause_agent(keeper)
    child = await spawn("queued_resume_child", db_path)
    try:
        async with asyncio.timeout(60):
            assert await first_line(child) == "queued"
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    KeeperAgent.RESUMED.clear()
    async with AgentRuntime(config=config) as rt:
        keeper = await rt.register_agent("keeper", KeeperAgent)
        assert rt.get_agent_status(keeper).status is AgentStatus.PAUSED
        await rt.resume_agent(keeper)
        assert rt.get_agent_status(keeper).status is AgentStatus.RUNNING
    assert KeeperAgent.RESUMED == [KEPT_STATE]


async def test_in_memory_runtimes_never_lock_each_other_out() -> None:
    """Every ``:memory:`` runtime has a database of its own: however many start and stop
    in one process, a new one always starts."""
    first = AgentRuntime(":memory:")
    await first.start()
    second = AgentRuntime(":memory:")
    await second.start()
    try:
        await first.stop()
        async with AgentRuntime(":memory:") as third:
            assert third.is_running
    finally:
        await second.stop()
