"""P-02: message delivery latency and throughput, in-process and across processes.

Latency is measured where the message arrives: the receiving agent's ``on_message`` takes
``now - message.created_at`` in its own process (one machine, one clock), for messages an
agent sends to another agent spaced 2 ms apart (no queueing). Throughput: one agent sends
a burst as fast as it can; the time until the receiver has handled all of them. Request /
response: ``rt.request`` round trips to an agent that replies at once. Targets (P-02):
delivery p95 <= 0.05 ms in-process, <= 0.5 ms agent-to-agent across processes.

Each latency is reported next to its *floor* (:mod:`benchmarks.floors`), measured the same
way (same count, same spacing, stamped where made, timed where received, every sample kept)
on the same event loop, without the runtime: for inline agents a bare ``asyncio.Queue`` hop
between two coroutines; for process agents a bare socket relay of the runtime's shape, a
sender process -> socketpair -> this process (asyncio) -> socketpair -> a receiver process,
carrying small length-prefixed JSON frames. The floor is what the machine and the event loop
charge for the hop at all; on a given machine it may be above the target, which then no
runtime could meet there, and the gap between figure and floor is the runtime's own cost.
Beside it, the machine's *wake-up penalty* (:func:`benchmarks.floors.wake_penalty`): a fixed
piece of Python work timed back to back and right after the loop idled as long as the gap
between messages. Where it is large, the runtime's work on the delivery path, done just
after such a wait, costs several times what it costs in a tight loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.floors import queue_hop_latencies, socket_relay_latencies, wake_penalty
from benchmarks.harness import INSTRUMENTING_EXTRAS, DbPaths, Mode, latency_summary
from benchmarks.messaging_agents import LatencyAgent, ReplyAgent, SenderAgent
from miminions import AgentRuntime, ResourceLimits, RuntimeConfig, TaskStatus

TARGET_P95_MS = {"inline": 0.05, "process": 0.5}
GAP_SECONDS = 0.002  # between the messages whose latency is measured (and their floor's)


async def _start(rt: AgentRuntime, name: str, agent: object, isolation: str) -> str:
    agent_id = await rt.register_agent(name, agent, isolation=isolation)
    await rt.start_agent(agent_id)
    return agent_id


async def _result(rt: AgentRuntime, task_id: str) -> dict[str, Any]:
    task = await rt.wait_for_task(task_id, 120)
    assert task.status is TaskStatus.COMPLETED, task.error_message
    assert isinstance(task.output_data, dict)
    return task.output_data


async def _measure(
    path: Path, isolation: str, count: int, burst: int, requests: int
) -> dict[str, Any]:
    config = RuntimeConfig(
        storage_path=str(path),
        default_isolation=isolation,
        # a burst outruns its receiver: room for all of it in the mailbox
        limits=ResourceLimits(message_queue_max_size=burst + count),
    )
    async with AgentRuntime(config=config, disable=INSTRUMENTING_EXTRAS) as rt:
        receiver = await _start(rt, "receiver", LatencyAgent, isolation)
        sender = await _start(rt, "sender", SenderAgent, isolation)
        replier = await _start(rt, "replier", ReplyAgent, isolation)
        # latency: spaced sends
        await _result(
            rt,
            await rt.submit_task(
                "send", {"to": receiver, "count": count, "gap": GAP_SECONDS}, agent_id=sender
            ),
        )
        latencies = (
            await _result(rt, await rt.submit_task("collect", {"expect": count}, agent_id=receiver))
        )["latencies"]
        # throughput: a burst
        start = time.perf_counter()
        await _result(
            rt, await rt.submit_task("send", {"to": receiver, "count": burst}, agent_id=sender)
        )
        await _result(rt, await rt.submit_task("collect", {"expect": burst}, agent_id=receiver))
        burst_seconds = time.perf_counter() - start
        # request / response from the runtime
        round_trips = []
        for index in range(requests):
            began = time.perf_counter()
            await rt.request(replier, "ping", index, timeout_seconds=10)
            round_trips.append(time.perf_counter() - began)
    return {"latencies": latencies, "burst_seconds": burst_seconds, "round_trips": round_trips}


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_message_delivery(
    benchmark: Any,
    runner: asyncio.Runner,
    db_paths: DbPaths,
    mode: Mode,
    report: Callable[..., None],
    isolation: str,
) -> None:
    """P-02: delivery latency p50/p95/p99, burst throughput and request round trips."""
    count, burst, requests = mode.pick((2000, 5000, 1000), (200, 500, 100))
    result: dict[str, Any] = {}

    def target() -> None:
        result.update(
            runner.run(
                _measure(db_paths(f"messaging-{isolation}"), isolation, count, burst, requests)
            )
        )

    benchmark.pedantic(target, rounds=1, iterations=1)
    # the floor: the same hop without the runtime, on the same loop, outside the timing
    if isolation == "inline":
        floor_seconds = runner.run(queue_hop_latencies(count, GAP_SECONDS))
        floor_kind, floor_what = "asyncio.Queue hop", "bare asyncio queue hop"
    else:
        floor_seconds = runner.run(socket_relay_latencies(count, GAP_SECONDS))
        floor_kind, floor_what = "socket relay", "bare socket relay through a middle process"
    floor = latency_summary(s * 1000 for s in floor_seconds)
    hot, after_idle = runner.run(wake_penalty(min(count, 500), GAP_SECONDS))
    latency = latency_summary(ms * 1000 for ms in result["latencies"])
    rtt = latency_summary(s * 1000 for s in result["round_trips"])
    throughput = burst / result["burst_seconds"]
    target_ms = TARGET_P95_MS[isolation]
    verdict = "meets" if latency["p95"] <= target_ms else "misses"
    where = "in-process" if isolation == "inline" else "across processes"
    report(
        f"P-02 messages {where} ({isolation} agents): delivery p50 {latency['p50']:.3f} / "
        f"p95 {latency['p95']:.3f} / p99 {latency['p99']:.3f} ms ({verdict} target p95 "
        f"{target_ms} ms); burst of {burst:,}: {throughput:,.0f} messages/s; request/response "
        f"round trip p50 {rtt['p50']:.3f} / p95 {rtt['p95']:.3f} ms; floor ({floor_what}, "
        f"same spacing): p50 {floor['p50']:.3f} / p95 {floor['p95']:.3f} ms; wake-up "
        f"penalty: a fixed piece of Python work takes {hot * 1e6:.1f} us back to back and "
        f"{after_idle * 1e6:.1f} us right after the loop idled {GAP_SECONDS * 1000:.0f} ms",
        isolation=isolation,
        latency_ms=latency,
        floor_ms=floor,
        floor_kind=floor_kind,
        wake_work_us={
            "back_to_back": round(hot * 1e6, 2),
            "after_idle": round(after_idle * 1e6, 2),
        },
        round_trip_ms=rtt,
        burst_messages_per_second=round(throughput, 1),
        target_p95_ms=target_ms,
    )
    assert len(result["latencies"]) == count
    assert len(floor_seconds) == count
    if mode.quick:
        assert latency["p95"] < 100, "message delivery p95 is beyond the quick sanity bound"
