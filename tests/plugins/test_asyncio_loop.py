"""The built-in event loop (``miminions.plugins.asyncio_loop``): asyncio's loop whose waits
for a timer are not rounded up to whole milliseconds on Linux."""

from __future__ import annotations

import asyncio
import select
import selectors
import socket
from collections.abc import Callable
from typing import Any

import pytest

import miminions
from miminions import AgentContext, AgentRuntime, RuntimeConfig, Task, TaskStatus
from miminions.kernel.plugins import build_plugin_manager
from miminions.plugins import asyncio_loop
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS

pytestmark = pytest.mark.skipif(
    not hasattr(selectors, "EpollSelector"), reason="the precise selector is for epoll (Linux)"
)


def selector_of(loop: asyncio.AbstractEventLoop) -> str:
    """The class name of a selector event loop's selector."""
    return type(loop._selector).__name__  # type: ignore[attr-defined]


@pytest.fixture
def select_calls(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """Record the timeout of every ``select.select`` call (which still happens)."""
    calls: list[float | None] = []
    real = select.select

    def recording(r: Any, w: Any, x: Any, timeout: float | None = None) -> Any:
        calls.append(timeout)
        return real(r, w, x, timeout)

    monkeypatch.setattr(select, "select", recording)
    return calls


def run_on_new_loop(main: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=asyncio_loop.new_event_loop) as runner:
        return runner.run(main())


def test_the_plugin_answers_last_with_the_precise_loop(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    pm = build_plugin_manager(disable=["uvloop"])
    factory = pm.hook.miminions_loop_factory(config=make_config())
    assert factory is asyncio_loop.new_event_loop
    loop = factory()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert selector_of(loop) == "_PreciseEpollSelector"
    finally:
        loop.close()


def test_a_timer_due_in_a_fraction_of_a_millisecond_is_waited_for_exactly(
    select_calls: list[float | None],
) -> None:
    """The wait for a timer 7.5 ms away is one select() of about 7.5 ms, not an
    epoll_wait of 8 ms."""

    async def main() -> None:
        fired = asyncio.Event()
        asyncio.get_running_loop().call_later(0.0075, fired.set)
        await asyncio.wait_for(fired.wait(), WAIT_SECONDS)

    run_on_new_loop(main)
    waits = [t for t in select_calls if t is not None and t > 0.001]
    assert waits, select_calls
    assert all(0.001 < t <= 0.0075 for t in waits), waits
    assert any((t * 1000) % 1 for t in waits), waits  # a fraction of a millisecond


def test_io_wakes_the_loop_while_a_timer_is_pending(select_calls: list[float | None]) -> None:
    """Waiting through select() on the epoll descriptor still wakes for I/O at once."""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        reader, writer = socket.socketpair()
        with reader, writer:
            reader.setblocking(False)
            got: asyncio.Future[bytes] = loop.create_future()

            def receive() -> None:
                if not got.done():
                    got.set_result(reader.recv(10))

            loop.add_reader(reader, receive)
            far = loop.call_later(3600.0005, lambda: None)  # the loop waits with select()
            loop.call_later(0.0015, writer.send, b"ping")
            try:
                return await asyncio.wait_for(got, WAIT_SECONDS)
            finally:
                far.cancel()
                loop.remove_reader(reader)

    assert run_on_new_loop(main) == b"ping"
    assert any(t is not None and t > 0 for t in select_calls)


def test_a_descriptor_select_cannot_take_falls_back_to_epoll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """select() refuses descriptors past FD_SETSIZE (ValueError): the selector then keeps
    to epoll for good, and timers still fire."""
    calls = 0

    def refusing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        raise ValueError("filedescriptor out of range in select()")

    monkeypatch.setattr(select, "select", refusing)

    async def main() -> None:
        for _ in range(3):
            await asyncio.sleep(0.0015)

    run_on_new_loop(main)
    assert calls == 1


def test_a_program_s_event_loop_policy_is_obeyed() -> None:
    class TaggedLoop(asyncio.SelectorEventLoop):
        pass

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return TaggedLoop()

    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        loop = asyncio_loop.new_event_loop()
        try:
            assert type(loop) is TaggedLoop
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(previous)


async def report_selector(task: Task, context: AgentContext) -> str:
    """A process agent answering with its worker's selector."""
    return selector_of(asyncio.get_running_loop())


def test_run_and_workers_use_it_when_no_other_loop_plugin_answers(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    async def main() -> tuple[str, Any]:
        async with AgentRuntime(config=make_config(), disable=["uvloop"]) as rt:
            agent_id = await start_agent(rt, "reporter", report_selector, isolation="process")
            task = await rt.wait_for_task(
                await rt.submit_task("which", agent_id=agent_id), timeout_seconds=WAIT_SECONDS
            )
        assert task.status is TaskStatus.COMPLETED, task.error_message
        return selector_of(asyncio.get_running_loop()), task.output_data

    assert miminions.run(main(), disable=["uvloop"]) == (
        "_PreciseEpollSelector",
        "_PreciseEpollSelector",
    )


def test_disabling_it_leaves_asyncio_s_own_loop(make_config: Callable[..., RuntimeConfig]) -> None:
    pm = build_plugin_manager(disable=["uvloop", "asyncio_loop"])
    assert pm.hook.miminions_loop_factory(config=make_config()) is None
