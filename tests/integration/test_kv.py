"""The shared key-value store (F-16) and group messages (F-18), for inline and process
agents alike (issue 4 points 3 and 4)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path

import pytest

from miminions import (
    AgentRuntime,
    AgentStatus,
    EventType,
    InvalidStateError,
    RuntimeConfig,
    RuntimeNotRunningError,
    TaskStatus,
    ValidationError,
)
from miminions.kernel import agent as agent_module
from miminions.kernel.kv import MAX_VALUE_BYTES, KVChange, KVWatch
from miminions.kernel.task_input import MAX_JSON_DEPTH
from miminions.testing import runtime_config, started_runtime
from tests.support.kv_agents import (
    GIVEN_UP,
    GroupMailAgent,
    KVAgent,
    sync_watch_orphaner,
    sync_watch_poller,
)
from tests.support.process_agents import NonStringKeyAgent
from tests.support.waiting import wait_until

WAIT = 15.0


@pytest.fixture
def miminions_config(miminions_config: RuntimeConfig, isolation: str) -> RuntimeConfig:
    """The plugin's config with agents in the mode under test (``rt`` runs on it)."""
    return runtime_config(base=miminions_config, isolation=isolation)


async def run(rt: AgentRuntime, agent_id: str, **input_data: object) -> dict[str, object]:
    task = await rt.wait_for_task(
        await rt.submit_task("kv", dict(input_data), agent_id=agent_id), WAIT
    )
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert isinstance(task.output_data, dict)
    return task.output_data


async def start(rt: AgentRuntime, name: str, agent: object, **kwargs: object) -> str:
    agent_id = await rt.register_agent(name, agent, **kwargs)  # type: ignore[arg-type]
    await rt.start_agent(agent_id)
    return agent_id


async def test_a_write_is_seen_by_another_agent_and_the_runtime(rt: AgentRuntime) -> None:
    """F-16: set/get/delete/keys across agents and rt.kv; versions count the writes."""
    a = await start(rt, "a", KVAgent)
    b = await start(rt, "b", KVAgent)
    assert await run(rt, a, op="set", key="plan/step", value={"n": 1}) == {"version": 1}
    assert await run(rt, b, op="get", key="plan/step") == {"value": {"n": 1}}
    assert rt.kv.get("plan/step") == {"n": 1}
    assert await rt.kv.set("plan/other", [1, 2]) == 1
    assert await run(rt, a, op="keys", prefix="plan/") == {"keys": ["plan/other", "plan/step"]}
    assert await run(rt, b, op="set", key="plan/step", value={"n": 2}) == {"version": 2}
    assert rt.kv.version("plan/step") == 2
    assert await run(rt, a, op="delete", key="plan/step") == {"deleted": True}
    assert await run(rt, b, op="get", key="plan/step", default="gone") == {"value": "gone"}
    assert await run(rt, b, op="delete", key="plan/step") == {"deleted": False}


async def test_compare_and_set_and_namespaces(rt: AgentRuntime) -> None:
    """F-16: compare_and_set changes only an expected value; namespaces keep data apart."""
    a = await start(rt, "a", KVAgent)
    assert await run(rt, a, op="cas", key="lock", expected=None, value="a") == {"changed": True}
    assert await run(rt, a, op="cas", key="lock", expected=None, value="b") == {"changed": False}
    assert await run(rt, a, op="cas", key="lock", expected="a", value=None) == {"changed": True}
    assert rt.kv.get("lock") is None
    await run(rt, a, op="set", key="k", value=1, namespace="team-a")
    await run(rt, a, op="set", key="k", value=2, namespace="team-b")
    assert rt.kv.get("k", namespace="team-a") == 1
    assert rt.kv.get("k", namespace="team-b") == 2
    assert rt.kv.get("k") is None


async def test_compare_and_set_compares_as_json_in_both_modes(rt: AgentRuntime) -> None:
    """F-16: ``expected`` is compared as JSON, as it would arrive from a process agent: a
    tuple matches the stored list, the same in both isolation modes and for the runtime."""
    a = await start(rt, "a", KVAgent)
    await rt.kv.set("pair", [1, 2])
    swapped = await run(
        rt, a, op="cas", key="pair", expected=[1, 2], expected_as_tuple=True, value=[2, 1]
    )
    assert swapped == {"changed": True}
    assert await rt.kv.compare_and_set("pair", (2, 1), [3, 4])
    assert rt.kv.get("pair") == [3, 4]
    with pytest.raises(ValidationError, match="expected"):
        await rt.kv.compare_and_set("pair", {1, 2}, [5])


async def test_watch_sees_another_agents_writes_quickly(rt: AgentRuntime) -> None:
    """F-16: a watcher in one agent sees another agent's writes, well under 100 ms after
    the write returned."""
    watcher = await start(rt, "watcher", KVAgent)
    writer = await start(rt, "writer", KVAgent)
    watch_id = await rt.submit_task(
        "watch", {"op": "watch", "prefix": "jobs/", "count": 2}, agent_id=watcher
    )
    # The watcher's task must be watching before the writes.
    await wait_until(lambda: rt.kv.watchers == 1, "the agent's watch to open")
    await run(rt, writer, op="set", key="jobs/1", value="queued")
    await rt.kv.set("other/1", "ignored")
    written = time.monotonic()
    await rt.kv.set("jobs/1", "done")
    task = await rt.wait_for_task(watch_id, WAIT)
    seen_after = time.monotonic() - written
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data == {
        "seen": [
            {"namespace": "", "key": "jobs/1", "value": "queued", "version": 1},
            {"namespace": "", "key": "jobs/1", "value": "done", "version": 2},
        ]
    }
    assert seen_after < 5.0  # generous bound; the benchmark reports the real figure


async def test_what_a_watcher_got_is_its_own(rt: AgentRuntime) -> None:
    """Every read returns a copy, and so does a watch: a watcher (an agent, the
    application) changing the value it was given changes nothing in the store."""
    watcher = await start(rt, "watcher", KVAgent)
    watch_id = await rt.submit_task(
        "watch", {"op": "watch", "prefix": "doc", "count": 1, "edit": True}, agent_id=watcher
    )
    await wait_until(lambda: rt.kv.watchers == 1, "the agent's watch to open")
    own = rt.kv.watch("doc")
    await rt.kv.set("doc", {"text": "hi", "tags": ["a"]})
    task = await rt.wait_for_task(watch_id, WAIT)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    change = await own.next(WAIT)
    own.close()
    assert change is not None
    change.value["tags"].append("b")
    assert rt.kv.get("doc") == {"text": "hi", "tags": ["a"]}


async def test_compare_and_set_tells_booleans_from_numbers(rt: AgentRuntime) -> None:
    """JSON has booleans of their own: True does not match a stored 1, nor 0 a stored
    False; a value that is not JSON is refused whatever the key holds."""
    await rt.kv.set("count", 1)
    assert not await rt.kv.compare_and_set("count", True, 2)
    await rt.kv.set("flag", {"on": [False]})
    assert not await rt.kv.compare_and_set("flag", {"on": [0]}, True)
    assert await rt.kv.compare_and_set("flag", {"on": [False]}, {"on": [True]})
    assert await rt.kv.compare_and_set("count", 1.0, 2)  # one number, however written
    with pytest.raises(ValidationError, match="value"):
        await rt.kv.compare_and_set("count", "not what it holds", {1, 2})
    assert rt.kv.get("count") == 2


async def test_after_stop_writes_change_nothing_and_watches_are_refused(
    miminions_config: RuntimeConfig,
) -> None:
    """Once the runtime stopped, a write raises and leaves the old value (for every reader
    and watcher); a new watch raises instead of waiting forever."""
    async with started_runtime(miminions_config) as rt:
        await rt.kv.set("k", "old")
    with pytest.raises(RuntimeNotRunningError):
        await rt.kv.set("k", "new")
    assert rt.kv.get("k") == "old"
    assert rt.kv.version("k") == 1
    with pytest.raises(RuntimeNotRunningError):
        rt.kv.watch("")


async def test_values_survive_a_restart(
    miminions_config: RuntimeConfig,
) -> None:
    """F-16: the store is durable; a deleted key stays deleted."""
    async with started_runtime(miminions_config) as rt:
        a = await start(rt, "a", KVAgent)
        await run(rt, a, op="set", key="kept", value={"x": [1, "two"]})
        await run(rt, a, op="set", key="dropped", value=1)
        await run(rt, a, op="delete", key="dropped")
    async with started_runtime(miminions_config) as rt:
        assert rt.kv.get("kept") == {"x": [1, "two"]}
        assert rt.kv.version("kept") == 1
        assert rt.kv.get("dropped") is None
        assert rt.kv.keys() == ["kept"]


async def test_a_value_nested_to_the_limit_is_kept_and_read_anywhere(
    miminions_config: RuntimeConfig,
) -> None:
    """A value nesting as deep as JSON values may is stored, survives a restart and is
    read by agents (one deeper is refused: a value just under the interpreter's limit was
    stored, then every start of the database failed with a RecursionError)."""
    deep: object = 1
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    async with started_runtime(miminions_config) as rt:
        await rt.kv.set("deep", deep)
        with pytest.raises(ValidationError, match="levels deep"):
            await rt.kv.set("deeper", [deep])
    async with started_runtime(miminions_config) as rt:
        assert rt.kv.get("deep") == deep
        reader = await start(rt, "reader", KVAgent)
        assert await run(rt, reader, op="depth", key="deep") == {"depth": MAX_JSON_DEPTH}


async def test_an_agent_follows_a_key_with_a_watch_opened_before_its_read(
    rt: AgentRuntime,
) -> None:
    """``open_watch`` opens the watch at once, so a change made between it and a read of
    the key is seen (``watch()`` opens as its iteration starts: such a change was missed)."""
    a = await start(rt, "a", KVAgent)
    assert await run(rt, a, op="follow", prefix="jobs/", key="jobs/1") == {
        "current": None,
        "seen": {"namespace": "", "key": "jobs/1", "value": "done", "version": 1},
    }
    assert rt.kv.watchers == 0  # closed by its async with


async def test_a_watch_left_open_closes_as_its_task_ends(rt: AgentRuntime) -> None:
    """A watch a task opened and dropped unclosed is closed (it queued every later change
    under its prefix until the agent stopped)."""
    a = await start(rt, "a", KVAgent)
    assert await run(rt, a, op="open_only", prefix="jobs/") == {"opened": True}
    await wait_until(lambda: rt.kv.watchers == 0, "the dropped watch to close")


async def test_a_watch_held_by_a_task_that_failed_closes_as_it_ends(rt: AgentRuntime) -> None:
    """A task that raised holding an open watch drops it too: its error (whose traceback
    holds the task's frame, and so the watch) is not kept alive by a reference cycle
    until the cyclic garbage collector happens to run."""
    a = await start(rt, "a", KVAgent)
    gc.disable()  # only reference counting frees the watch, as in a long idle stretch
    try:
        task_id = await rt.submit_task(
            "kv", {"op": "open_and_raise", "prefix": "jobs/"}, agent_id=a
        )
        done = await rt.wait_for_task(task_id, WAIT)
        assert done.status is TaskStatus.FAILED
        await wait_until(lambda: rt.kv.watchers == 0, "the dropped watch to close")
    finally:
        gc.enable()


@pytest.mark.parametrize("how", ["wait_for", "call_sync"])
async def test_a_watch_outlives_a_next_given_up_on(rt: AgentRuntime, how: str) -> None:
    """Giving up on one ``next`` (``asyncio.wait_for``, a ``call_sync`` timeout) leaves the
    watch open: a later change is seen (the watch was closed, every later ``next`` None)."""
    if how == "wait_for":
        a = await start(rt, "a", KVAgent)
        result = await run(rt, a, op="give_up_once", prefix="jobs/", key="jobs/1")
    else:
        a = await start(rt, "a", sync_watch_poller)
        task_id = await rt.submit_task("poll", {"prefix": "jobs/", "key": "jobs/1"}, agent_id=a)
        done = await rt.wait_for_task(task_id, WAIT)
        assert done.status is TaskStatus.COMPLETED, done.error_message
        result = done.output_data
    assert result == {"change": {"namespace": "", "key": "jobs/1", "value": "done", "version": 1}}


async def test_a_change_a_given_up_call_sync_next_got_late_is_the_next_one(
    rt: AgentRuntime, isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``call_sync(watch.next())`` times out, and the agent's loop is too busy to end the
    call within the cancel wait: the change that call got once the loop turned is the
    watch's next one (it was dropped: a change lost for good)."""
    if isolation != "inline":
        pytest.skip("the test holds the loop an inline agent's calls run on")
    monkeypatch.setattr(agent_module, "_CANCEL_WAIT_SECONDS", 0.1)
    given_up = GIVEN_UP["late"] = threading.Event()
    a = await start(rt, "a", sync_watch_orphaner)
    task_id = await rt.submit_task("poll", {"prefix": "jobs/", "name": "late"}, agent_id=a)
    calls = rt._kv_calls
    assert calls is not None

    def asking() -> bool:  # the first next() waits for a change
        return any(w._queue._getters for w in calls._watches.values())  # type: ignore[attr-defined]

    await wait_until(asking, "the agent's first next()")
    # That next() gets its change, to take at the loop's next turn, which is held until
    # the agent's thread gave up on it.
    (watch,) = calls._watches.values()
    watch.push(KVChange("", "jobs/1", "late", 1))
    assert given_up.wait(WAIT)
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert done.output_data == {
        "first": "given up",
        "change": {"namespace": "", "key": "jobs/1", "value": "late", "version": 1},
    }


async def test_a_change_that_came_as_a_next_was_given_up_is_the_next_one(
    rt: AgentRuntime, isolation: str, tmp_path: Path
) -> None:
    """A process agent gives up on a ``next`` whose change is on its way (its loop was
    held): that change is its watch's next one, ahead of later ones (it was lost, then came
    back behind the next change: versions out of order)."""
    if isolation == "inline":
        pytest.skip("an inline agent's next is given up before it takes a change")
    flag = tmp_path / "flag"
    a = await start(rt, "a", KVAgent)
    task_id = await rt.submit_task("kv", {"op": "give_up_held", "flag": str(flag)}, agent_id=a)

    def first_change_handed_out() -> bool:
        watches = list(rt._kv_calls._watches.values())  # type: ignore[union-attr]
        return len(watches) == 1 and watches[0]._queue.qsize() == 1

    await wait_until(first_change_handed_out, "the runtime to answer the first next")
    for _ in range(3):  # its answer is written out (at the end of a loop turn)
        await asyncio.sleep(0)
    flag.touch()
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert done.output_data == {"held": True, "values": [1, 2]}


async def test_two_nexts_at_once_after_one_given_up_each_get_a_change(
    rt: AgentRuntime,
) -> None:
    """Two ``next`` calls at once on one watch, after one given up on: each gets one
    change, in order (in a process agent one raised KeyError and its change was lost)."""
    a = await start(rt, "a", KVAgent)
    task_id = await rt.submit_task("kv", {"op": "two_readers", "prefix": "c/"}, agent_id=a)

    def a_reader_waits_at_the_runtime() -> bool:
        watches = list(rt._kv_calls._watches.values())  # type: ignore[union-attr]
        return (
            rt.kv.get("readers") == "ready"
            and len(watches) == 1
            and len(watches[0]._queue._getters) >= 1
        )

    await wait_until(a_reader_waits_at_the_runtime, "a reader's next() at the runtime")
    await rt.kv.set("c/k", 1)
    await rt.kv.set("c/k", 2)
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.status is TaskStatus.COMPLETED, done.error_message
    assert done.output_data == {"got": [1, 2]}


async def test_get_gives_back_the_default_itself(rt: AgentRuntime) -> None:
    """The default of an absent key is the caller's own object (a process agent sent it
    to the runtime and back: a sentinel was refused as not JSON, a tuple became a list)."""
    a = await start(rt, "a", KVAgent)
    assert await run(rt, a, op="defaults", key="absent") == {"sentinel": True, "tuple": True}


async def test_an_agent_iterating_a_watch_pauses_at_its_next_change(rt: AgentRuntime) -> None:
    """Asking for a watch's next change is a safe point: a pause requested while the agent
    waits takes effect once a change arrives (it never did: the loop made no other call)."""
    a = await start(rt, "a", KVAgent)
    task_id = await rt.submit_task("kv", {"op": "follow_until", "prefix": "jobs/"}, agent_id=a)
    await wait_until(lambda: rt.kv.watchers == 1, "the agent's watch to open")
    pausing = asyncio.ensure_future(rt.pause_agent(a))
    await wait_until(lambda: rt.agent_book.get(a).pausing is not None, "the pause to wait")
    await rt.kv.set("jobs/1", 1)  # the agent takes it, then halts at its next request
    paused = await asyncio.wait_for(pausing, WAIT)
    assert paused.status is AgentStatus.PAUSED
    await rt.kv.set("jobs/1", "stop")  # waits in the watch meanwhile
    await rt.resume_agent(a)
    done = await rt.wait_for_task(task_id, WAIT)
    assert done.output_data == {"changes": 1}


async def test_bad_keys_and_values_are_rejected(rt: AgentRuntime) -> None:
    """R-04: an empty key, a None value or a non-JSON value raise ValidationError."""
    with pytest.raises(ValidationError):
        await rt.kv.set("", 1)
    with pytest.raises(ValidationError, match="use delete"):
        await rt.kv.set("k", None)
    with pytest.raises(ValidationError, match="JSON"):
        await rt.kv.set("k", {1, 2})
    assert rt.kv.keys() == []


async def test_a_value_over_the_size_cap_is_rejected_and_the_old_one_kept(
    rt: AgentRuntime,
) -> None:
    """A value is held in memory and may be read by any process agent: like a message's
    data, it is capped at 10 MB of JSON."""
    await rt.kv.set("report", {"text": "short"})
    too_big = {"text": "x" * MAX_VALUE_BYTES}

    with pytest.raises(ValidationError, match="limit is 10,485,760"):
        await rt.kv.set("report", too_big)
    with pytest.raises(ValidationError, match="limit is 10,485,760"):
        await rt.kv.compare_and_set("report", {"text": "short"}, too_big)

    assert (rt.kv.get("report"), rt.kv.version("report")) == ({"text": "short"}, 1)


async def test_a_watch_with_a_bad_prefix_is_refused_and_writes_go_on(rt: AgentRuntime) -> None:
    """R-04: a prefix that is not a string is refused when the watch opens (in the
    application and in an agent), so it cannot fail the writes of anyone later."""
    watcher = await start(rt, "watcher", KVAgent)
    writer = await start(rt, "writer", KVAgent)
    for prefix in (None, 5):
        with pytest.raises(ValidationError, match="prefix"):
            rt.kv.watch(prefix)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="prefix"):
            rt.kv.keys(prefix)  # type: ignore[arg-type]
    task = await rt.wait_for_task(
        await rt.submit_task("kv", {"op": "watch", "prefix": None, "count": 1}, agent_id=watcher),
        WAIT,
    )
    assert task.status is TaskStatus.FAILED
    assert "prefix" in (task.error_message or "")
    assert rt.kv.watchers == 0
    assert await run(rt, writer, op="set", key="job", value=1) == {"version": 1}
    assert await rt.kv.set("job", 2) == 2
    assert await rt.kv.compare_and_set("job", 2, 3)
    assert rt.kv.get("job") == 3


async def test_a_failing_watch_is_dropped_and_the_write_succeeds(rt: AgentRuntime) -> None:
    """A watch that fails on a change is closed; the write that caused it returns normally
    and the other watches still see it."""

    class BrokenWatch(KVWatch):
        def matches(self, namespace: str, key: str) -> bool:
            raise RuntimeError("broken watch")

    good = rt.kv.watch("")
    broken = BrokenWatch(rt.kv, "", "")
    rt.kv._watches.add(broken)  # as a watch that went wrong would be
    assert await rt.kv.set("k", 1) == 1
    assert rt.kv.watchers == 1
    assert await broken.next(WAIT) is None  # its reader's iteration ended
    change = await good.next(WAIT)
    assert change is not None
    assert (change.key, change.value) == ("k", 1)
    good.close()


async def test_a_group_receives_a_message_sent_to_it(rt: AgentRuntime) -> None:
    """F-18: a message to a group reaches each member, from an agent or the runtime."""
    members = [await start(rt, f"m{i}", GroupMailAgent, group="crew") for i in range(2)]
    outsider = await start(rt, "outsider", GroupMailAgent)
    sender = await start(rt, "sender", GroupMailAgent, group="other")
    assert await run(rt, sender, send_to_group="crew", data={"hi": 1}) == {"sent": 2}
    for member in members:
        assert await run(rt, member) == {"type": "memo", "data": {"hi": 1}, "from": sender}
    assert rt.messenger.bus.pending(outsider) == 0
    await rt.send_to_group("crew", "memo", {"hi": 2})
    for member in members:
        assert await run(rt, member) == {"type": "memo", "data": {"hi": 2}, "from": None}


async def test_expired_message_can_be_sent_again(rt: AgentRuntime) -> None:
    """F-28: an expired message is a dead letter of kind "message"; re-queueing sends it
    again (once) and the recipient gets it."""
    agent_id = await start(rt, "late", GroupMailAgent)
    await rt.stop_agent(agent_id)
    (message_id,) = await rt.send_message(agent_id, "memo", {"n": 7}, ttl_seconds=0.05)
    await wait_until(lambda: rt.list_dead_letters(kind="message"), "the message to expire")
    (letter,) = rt.list_dead_letters(kind="message")
    assert letter.ref_id == message_id
    expired = await rt.query_events(event_type=EventType.MESSAGE_EXPIRED)
    assert [e.details["message_id"] for e in expired] == [message_id]
    new_id = await rt.requeue_dead_letter(letter.dead_letter_id)
    assert new_id != message_id
    with pytest.raises(InvalidStateError, match="re-queued already"):
        await rt.requeue_dead_letter(letter.dead_letter_id)
    await rt.start_agent(agent_id)
    assert await run(rt, agent_id) == {"type": "memo", "data": {"n": 7}, "from": None}


async def test_a_paused_recipients_ttl_waits_across_a_restart(
    miminions_config: RuntimeConfig,
) -> None:
    """F-25, F-20: a message's TTL does not count while its recipient is paused, also
    while the runtime is down and after it restarts with the agent still paused."""
    async with started_runtime(miminions_config) as rt:
        agent_id = await start(rt, "napper", GroupMailAgent)
        await rt.pause_agent(agent_id, timeout_seconds=WAIT)
        await rt.send_message(agent_id, "memo", {"n": 1}, ttl_seconds=0.3)
        # Time has to pass for this test: longer than the TTL, while paused.
        await asyncio.sleep(0.5)
        assert rt.messenger.bus.pending(agent_id) == 1
    await asyncio.sleep(0.4)  # and while no runtime runs
    async with started_runtime(miminions_config) as rt:
        agent_id = await rt.register_agent("napper", GroupMailAgent)
        assert rt.messenger.bus.pending(agent_id) == 1
        await rt.resume_agent(agent_id)
        assert await run(rt, agent_id) == {"type": "memo", "data": {"n": 1}, "from": None}
        assert await rt.query_events(event_type=EventType.MESSAGE_EXPIRED) == []


async def test_a_message_received_after_a_restart_is_not_delivered_again(
    miminions_config: RuntimeConfig,
) -> None:
    """F-28: an undelivered message survives a restart, and once received it is gone for
    good (its stored copy is removed, so a later restart does not bring it back)."""
    async with started_runtime(miminions_config) as rt:
        agent_id = await rt.register_agent("late", GroupMailAgent)
        await rt.send_message(agent_id, "memo", {"n": 5})
    async with started_runtime(miminions_config) as rt:
        agent_id = await start(rt, "late", GroupMailAgent)
        assert await run(rt, agent_id) == {"type": "memo", "data": {"n": 5}, "from": None}
    async with started_runtime(miminions_config) as rt:
        agent_id = await rt.register_agent("late", GroupMailAgent)
        assert rt.messenger.bus.pending(agent_id) == 0


async def test_a_closed_watch_keeps_answering_none(rt: AgentRuntime) -> None:
    """Once a watch is closed, every next() returns None and every ``async for`` over it
    ends at once: the end is not used up by the first reader that sees it."""
    watch = rt.kv.watch("jobs/")
    watch.close()
    assert await asyncio.wait_for(watch.next(), WAIT) is None
    assert await asyncio.wait_for(watch.next(), WAIT) is None

    async def drain() -> list[object]:
        return [change async for change in watch]

    assert await asyncio.wait_for(drain(), WAIT) == []


async def test_stopping_the_runtime_wakes_every_reader_of_a_watch(
    miminions_config: RuntimeConfig,
) -> None:
    """When the runtime stops, every watch ends: two readers waiting on one watch both
    get None (only one of them did, the other waited for ever)."""
    async with started_runtime(miminions_config) as rt:
        watch = rt.kv.watch("jobs/")
        readers = [asyncio.ensure_future(watch.next()) for _ in range(2)]
        await asyncio.sleep(0)  # both are waiting in next()
    done, pending = await asyncio.wait(readers, timeout=WAIT)
    for reader in pending:
        reader.cancel()
    assert not pending, f"{len(pending)} of 2 readers of a watch still wait after the stop"
    assert [reader.result() for reader in done] == [None, None]


@pytest.mark.parametrize("call", ["send", "kv_set"])
async def test_an_agents_value_with_a_key_that_is_not_a_string_is_refused(
    rt: AgentRuntime, isolation: str, call: str
) -> None:
    """A message or a KV value holding a dict key that is not a string is refused, from a
    process agent too (its worker's encoder turned {3: x} into {"3": x}, silently)."""
    other = await rt.register_agent("other", NonStringKeyAgent, isolation="inline")
    agent = await rt.register_agent("keys", NonStringKeyAgent, isolation=isolation)
    await rt.start_agent(agent)
    task = await rt.wait_for_task(
        await rt.submit_task("try", {"call": call, "to": other}, agent_id=agent), WAIT
    )
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert task.output_data["raised"] == "ValidationError", task.output_data
    assert "keys must be strings" in task.output_data["text"]
    assert rt.kv.get("k") is None
    assert rt.messenger.bus.pending(other) == 0
