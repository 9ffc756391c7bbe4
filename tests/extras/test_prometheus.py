"""The prometheus extra: metrics scraped over real HTTP follow the work; export, disable,
missing package, several runtimes, nothing left listening."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from miminions import (
    AgentRuntime,
    ConfigurationError,
    MissingExtraError,
    PluginError,
    ResourceLimits,
    RuntimeConfig,
    RuntimeNotRunningError,
    UsageBudget,
)
from miminions.extras import prometheus
from miminions.extras.prometheus_http import MetricsEndpoint
from miminions.kernel.plugins import AUTOLOAD_ENV
from tests.support.agents import EchoAgent, RecordingAgent
from tests.support.interpreter import without_package
from tests.support.messaging_agents import ResponderAgent
from tests.support.process_agents import SubprocessAgent
from tests.support.runtime import start_agent
from tests.support.waiting import WAIT_SECONDS, wait_until

PIP_COMMAND = "pip install 'miminions[prometheus]'"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MakeConfig = Callable[..., RuntimeConfig]


@pytest.fixture(autouse=True)
def _entry_points_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extra is tested as users get it: loaded from the entry-point group."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)


@pytest.fixture
def client_package() -> None:
    """Tests that need prometheus_client itself (the core test session has no extras)."""
    pytest.importorskip("prometheus_client")


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes


def fetch(url: str, *, method: str = "GET", accept: str | None = None) -> Reply:
    """One HTTP request, straight to the address (no proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, method=method)
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with opener.open(request, timeout=WAIT_SECONDS) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers, error.read())


async def scrape(url: str, **kwargs: Any) -> Reply:
    """Fetch ``url`` from a thread: the server runs on this test's event loop."""
    return await asyncio.to_thread(fetch, url, **kwargs)


def parse(text: bytes) -> Samples:
    """Every sample of a text exposition, keyed by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scraped(rt: AgentRuntime) -> Samples:
    where = prometheus.endpoint(rt)
    assert where is not None
    reply = await scrape(where.url)
    assert reply.status == 200
    return parse(reply.body)


def with_port(make_config: MakeConfig, **options: Any) -> RuntimeConfig:
    return make_config(plugin_options={"prometheus": {"port": 0, **options}})


# --------------------------------------------------------------------------- registration
@pytest.mark.usefixtures("client_package")
def test_registers_through_the_entry_point(make_config: MakeConfig) -> None:
    """The extra comes from the ``miminions`` entry-point group under its name."""
    rt = AgentRuntime(config=make_config())
    assert "prometheus" in rt.plugin_manager.plugin_names()
    assert "miminions_export_metrics" in rt.plugin_manager.hooks_of("prometheus")


# --------------------------------------------------------------------------- the endpoint
@pytest.mark.usefixtures("client_package")
async def test_scraped_metrics_follow_the_work(make_config: MakeConfig) -> None:
    """Tasks, a failing task with a retry, a request and its reply show up in a real scrape:
    counters, gauges by status and the two histograms."""
    async with AgentRuntime(config=with_port(make_config)) as rt:
        where = prometheus.endpoint(rt)
        assert where is not None
        assert where.host == "127.0.0.1"
        assert where.port > 0
        assert where.url == f"http://127.0.0.1:{where.port}/metrics"

        before = await scraped(rt)
        assert value(before, "miminions_tasks_submitted_total") == 0
        assert value(before, "miminions_agents", status="running") == 0
        assert value(before, "miminions_task_duration_seconds_count", outcome="completed") == 0

        worker = await start_agent(rt, "worker", RecordingAgent)
        responder = await start_agent(rt, "responder", ResponderAgent)
        ok = [await rt.submit_task(f"ok{i}", agent_id=worker) for i in range(2)]
        bad = await rt.submit_task("bad", {"fail": "boom"}, max_retries=1, agent_id=worker)
        finished = await rt.wait_for_tasks([*ok, bad], timeout_seconds=WAIT_SECONDS)
        assert [task.status.value for task in finished] == ["completed", "completed", "failed"]
        await rt.request(responder, "ask", {"q": 1}, timeout_seconds=WAIT_SECONDS)

        after = await scraped(rt)
        assert value(after, "miminions_tasks_submitted_total") == 3
        assert value(after, "miminions_tasks_finished_total", status="completed") == 2
        assert value(after, "miminions_tasks_finished_total", status="failed") == 1
        assert value(after, "miminions_task_retries_total") == 1
        assert value(after, "miminions_tasks", status="completed") == 2
        assert value(after, "miminions_tasks", status="failed") == 1
        assert value(after, "miminions_tasks", status="pending") == 0
        assert value(after, "miminions_task_duration_seconds_count", outcome="completed") == 2
        assert value(after, "miminions_task_duration_seconds_count", outcome="failed") == 2
        assert value(after, "miminions_agents", status="running") == 2
        assert value(after, "miminions_agent_slots", state="used") == 2
        assert value(after, "miminions_messages_sent_total") == 2  # the request, the reply
        assert value(after, "miminions_messages_received_total") == 2
        assert value(after, "miminions_message_delivery_latency_seconds_count") == 2
        assert value(after, "miminions_events_total", event_type="task_completed") == 2
        assert value(after, "miminions_dead_letters") == 1


@pytest.mark.usefixtures("client_package")
async def test_the_received_counter_never_goes_down(make_config: MakeConfig) -> None:
    """A message handed back to its mailbox (its receiver's worker went) stops counting as
    delivered in get_metrics() until it is taken again; the Prometheus counter of received
    messages does not go down meanwhile (a drop reads as a counter reset)."""
    async with AgentRuntime(config=with_port(make_config)) as rt:
        agent_id = await start_agent(rt, "echo", EchoAgent)
        await rt.send_message(agent_id, "note", {"n": 1})
        message = await rt.messenger.receive(agent_id, WAIT_SECONDS)
        assert value(await scraped(rt), "miminions_messages_received_total") == 1
        rt.messenger.put_back(message)  # what a host does when the receiver is gone
        assert rt.get_metrics().messages_delivered == 0
        assert value(await scraped(rt), "miminions_messages_received_total") == 1
        await rt.messenger.receive(agent_id, WAIT_SECONDS)
        assert value(await scraped(rt), "miminions_messages_received_total") == 1


@pytest.mark.usefixtures("client_package")
async def test_a_message_received_again_is_one_latency_sample(make_config: MakeConfig) -> None:
    """A message handed back to its mailbox and received again is one message in the
    latency figures: one sample in get_metrics()'s and one in the Prometheus histogram."""
    async with AgentRuntime(config=with_port(make_config)) as rt:
        agent_id = await start_agent(rt, "echo", EchoAgent)
        await rt.send_message(agent_id, "note", {"n": 1})
        message = await rt.messenger.receive(agent_id, WAIT_SECONDS)
        rt.messenger.put_back(message)  # what a host does when the receiver is gone
        await rt.messenger.receive(agent_id, WAIT_SECONDS)
        samples = await scraped(rt)
        assert value(samples, "miminions_messages_received_total") == 1
        assert value(samples, "miminions_message_delivery_latency_seconds_count") == 1
        assert len(rt.messenger.latencies) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.usefixtures("client_package")
async def test_the_memory_gauge_counts_what_the_memory_limit_counts(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """miminions_agent_resident_memory_bytes, which the docs compare with
    max_memory_per_agent_mb, counts the subprocesses the agent started, as the limit does
    (an agent whose tool held 80 MiB showed a fraction of it)."""
    held, pids = tmp_path / "held", tmp_path / "pids"
    async with AgentRuntime(config=with_port(make_config)) as rt:
        agent_id = await start_agent(rt, "tooluser", SubprocessAgent, isolation="process")
        await rt.submit_task("hold", {"hold_mb": 80, "held": str(held), "pid": str(pids)})
        await wait_until(held.exists, "the subprocess to hold its memory")
        rss = value(
            await scraped(rt),
            "miminions_agent_resident_memory_bytes",
            agent_id=agent_id,
            agent_name="tooluser",
        )
        assert rss > 80 * 2**20
        await rt.stop_agent(agent_id, graceful=False)


@pytest.mark.usefixtures("client_package")
async def test_queue_depth_by_priority_band(make_config: MakeConfig) -> None:
    """Pending tasks are counted by band of base priority while nobody runs them."""
    async with AgentRuntime(config=with_port(make_config)) as rt:
        await rt.pause_queue()
        for priority in (0, 10, 50, 100):
            await rt.submit_task("waiting", priority=priority)
        samples = await scraped(rt)
        assert value(samples, "miminions_queue_depth", priority_band="high") == 2
        assert value(samples, "miminions_queue_depth", priority_band="medium") == 1
        assert value(samples, "miminions_queue_depth", priority_band="low") == 1
        assert value(samples, "miminions_queue_paused") == 1
        assert value(samples, "miminions_tasks", status="pending") == 4


@pytest.mark.usefixtures("client_package")
async def test_http_answers(make_config: MakeConfig) -> None:
    """OpenMetrics when the scraper asks for it, HEAD without a body, 404 elsewhere, 405
    for other methods."""
    async with AgentRuntime(config=with_port(make_config)) as rt:
        where = prometheus.endpoint(rt)
        assert where is not None
        plain = await scrape(where.url)
        assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")

        negotiated = await scrape(where.url, accept="application/openmetrics-text")
        assert negotiated.status == 200
        assert negotiated.headers["Content-Type"].startswith("application/openmetrics-text")
        assert negotiated.body.endswith(b"# EOF\n")

        head = await scrape(where.url, method="HEAD")
        assert (head.status, head.body) == (200, b"")
        assert int(head.headers["Content-Length"]) > 0

        elsewhere = await scrape(where.url.replace("/metrics", "/other"))
        assert elsewhere.status == 404
        assert b"/metrics" in elsewhere.body

        posted = await scrape(where.url, method="POST")
        assert posted.status == 405
        assert posted.headers["Allow"] == "GET, HEAD"

        def send_raw(request: bytes) -> bytes:
            with socket.create_connection((where.host, where.port), WAIT_SECONDS) as sock:
                sock.sendall(request)
                return sock.makefile("rb").read()

        garbled = await asyncio.to_thread(send_raw, b"NONSENSE\r\n\r\n")
        assert garbled.startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.usefixtures("client_package")
async def test_restarts_and_limit_breaches_are_counted(make_config: MakeConfig) -> None:
    """A spent usage budget counts as a limit breach, a crash planned for restart as a
    restart (read through export_prometheus_metrics, no endpoint configured)."""
    async with AgentRuntime(config=make_config()) as rt:
        assert prometheus.endpoint(rt) is None  # no port: no endpoint, metrics all the same
        before = parse(rt.export_prometheus_metrics())
        assert value(before, "miminions_agent_restarts_total") == 0
        assert (
            value(before, "miminions_limit_breaches_total", limit="budget", resource="tokens") == 0
        )

        budget = ResourceLimits(usage_budget=UsageBudget(tokens=10))
        spender = await start_agent(rt, "spender", EchoAgent, limits=budget)
        crasher = await start_agent(rt, "crasher", EchoAgent)
        rt.report_usage(spender, tokens=25, cost=0.0)
        rt.report_host_failure(crasher, "simulated crash")

        def counted() -> Samples | None:
            samples = parse(rt.export_prometheus_metrics())
            return samples if value(samples, "miminions_agent_restarts_total") else None

        after = await wait_until(counted, "the restart to be counted")
        assert value(after, "miminions_agent_restarts_total") == 1
        assert (
            value(after, "miminions_limit_breaches_total", limit="budget", resource="tokens") == 1
        )
        assert value(after, "miminions_limit_breaches_total", limit="hard", resource="memory") == 0
        assert value(after, "miminions_events_total", event_type="budget_exhausted") == 1


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.usefixtures("client_package")
async def test_resident_memory_per_process_agent(make_config: MakeConfig) -> None:
    """Each process agent's worker reports its resident memory, labelled by agent."""
    async with AgentRuntime(config=with_port(make_config)) as rt:
        agent_id = await start_agent(rt, "worker", EchoAgent, isolation="process")
        inline_id = await start_agent(rt, "inline", EchoAgent)
        samples = await scraped(rt)
        rss = value(
            samples, "miminions_agent_resident_memory_bytes", agent_id=agent_id, agent_name="worker"
        )
        assert rss > 1024 * 1024  # a Python process holds megabytes
        assert not any(
            dict(labels).get("agent_id") == inline_id for _, labels in samples
        )  # an inline agent has no process of its own


# --------------------------------------------------------------------------- export
@pytest.mark.usefixtures("client_package")
async def test_export_is_the_text_format(make_config: MakeConfig) -> None:
    """export_prometheus_metrics() returns text a Prometheus parser reads; it needs a
    started runtime and still answers after stop."""
    rt = AgentRuntime(config=make_config())
    with pytest.raises(RuntimeNotRunningError):
        rt.export_prometheus_metrics()
    async with rt:
        await start_agent(rt, "worker", EchoAgent)
        await rt.wait_for_task(await rt.submit_task("one"), timeout_seconds=WAIT_SECONDS)
        text = rt.export_prometheus_metrics()
        assert text.startswith(b"# HELP ")
        samples = parse(text)
        assert value(samples, "miminions_tasks_finished_total", status="completed") == 1
        assert value(samples, "miminions_uptime_seconds") > 0
        assert any(name == "process_resident_memory_bytes" for name, _ in samples)
    assert value(parse(rt.export_prometheus_metrics()), "miminions_tasks", status="completed") == 1


@pytest.mark.usefixtures("client_package")
async def test_export_hook_formats(make_config: MakeConfig) -> None:
    """The hook renders OpenMetrics too, and passes on a format it does not know."""
    async with AgentRuntime(config=make_config()) as rt:
        hook = rt.plugin_manager.hook.miminions_export_metrics
        assert hook(runtime=rt, format="openmetrics").endswith(b"# EOF\n")
        assert hook(runtime=rt, format="json") is None


@pytest.mark.usefixtures("client_package")
def test_histogram_bounds_are_inclusive() -> None:
    """A value on a bucket's bound counts in that bucket (Prometheus' ``le``)."""
    from miminions.extras.prometheus_collect import Histogram

    histogram = Histogram([0.5, 1.0])
    for observed in (0.5, 0.7, 1.0, 3.0):
        histogram.observe(observed)
    assert histogram.buckets() == [("0.5", 1.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert histogram.sum == 5.2


@pytest.mark.usefixtures("client_package")
async def test_a_dropped_runtime_is_not_kept_alive(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin keeps its state per runtime without keeping the runtime (or its
    registry) alive once the application lets go of it."""
    # This plugin alone, beside the built-ins (they too keep state per runtime, weakly).
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    rt = AgentRuntime(config=with_port(make_config), plugins=[prometheus])
    async with rt:
        metrics = prometheus.metrics_of(rt)
        assert metrics is not None
    gone_runtime, gone_metrics = weakref.ref(rt), weakref.ref(metrics)
    del rt, metrics
    gc.collect()  # the runtime, whose finalizer releases the plugin's state for it
    gc.collect()  # that state (its registry refers back to its collector)
    assert gone_runtime() is None
    assert gone_metrics() is None


@pytest.mark.usefixtures("client_package")
async def test_two_runtimes_do_not_clash(tmp_path: Path, make_config: MakeConfig) -> None:
    """Each runtime has its own registry and endpoint: no duplicate metrics, no shared
    counts."""
    first_config = with_port(make_config, task_duration_buckets=[0.75, 1.5])
    second_config = with_port(make_config).model_copy(
        update={"storage_path": str(tmp_path / "second.db")}
    )
    async with (
        AgentRuntime(config=first_config) as first,
        AgentRuntime(config=second_config) as second,
    ):
        await start_agent(first, "worker", EchoAgent)
        await first.wait_for_task(await first.submit_task("one"), timeout_seconds=WAIT_SECONDS)
        first_where, second_where = prometheus.endpoint(first), prometheus.endpoint(second)
        assert first_where is not None
        assert second_where is not None
        assert first_where.port != second_where.port
        first_samples, second_samples = await scraped(first), await scraped(second)
        assert value(first_samples, "miminions_tasks_submitted_total") == 1
        assert value(second_samples, "miminions_tasks_submitted_total") == 0
        # each runtime's own options: 0.75 is a bound of the first's buckets only
        labels = frozenset({("outcome", "completed"), ("le", "0.75")})
        key = ("miminions_task_duration_seconds_bucket", labels)
        assert key in first_samples
        assert key not in second_samples


# --------------------------------------------------------------------------- lifetime
@pytest.mark.usefixtures("client_package")
async def test_nothing_listens_after_stop(make_config: MakeConfig) -> None:
    """The stop closes the listening socket and every open connection, quietly: one with
    a request under way ends without an error for the loop's exception handler (Python
    3.11's asyncio reports a cancelled connection handler as one)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    rt = AgentRuntime(config=with_port(make_config))
    await rt.start()
    where = prometheus.endpoint(rt)
    assert where is not None
    idle = await asyncio.to_thread(socket.create_connection, (where.host, where.port), 5.0)
    try:
        idle.sendall(b"GET /metrics HTTP/1.1\r\n")  # a scrape under way, its head unfinished
        active = prometheus._runtimes[id(rt)]
        assert active is not None
        served = active.endpoint
        assert served is not None
        await wait_until(lambda: len(served._clients) == 1, "the connection to be served")
        handlers = list(served._clients)
        await rt.stop()
        await asyncio.wait(handlers, timeout=WAIT_SECONDS)
        await asyncio.sleep(0)  # the handlers' done callbacks run in this turn
        assert reported == [], [(c.get("message"), c.get("exception")) for c in reported]
        assert prometheus.endpoint(rt) is None
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(socket.create_connection, (where.host, where.port), 5.0)

        def closed_by_server() -> bytes:
            try:
                return idle.recv(1024)
            except ConnectionResetError:
                return b""

        idle.settimeout(5.0)
        assert await asyncio.to_thread(closed_by_server) == b""
    finally:
        idle.close()
        loop.set_exception_handler(previous)


def test_a_loop_torn_down_right_after_the_start_leaves_no_socket() -> None:
    """The endpoint starts serving on the loop's next turns; a loop torn down before that
    (``asyncio.run`` cancels what is left) closes its listening socket at once, instead of
    leaving it to the garbage collector."""

    async def open_endpoint() -> MetricsEndpoint:
        return MetricsEndpoint.listen("127.0.0.1", 0, lambda accept: (b"", "text/plain"))

    endpoint = asyncio.run(open_endpoint())  # kept: the garbage collector cannot close it
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((endpoint.address.host, endpoint.address.port), 5.0)


def test_a_loop_ended_while_serving_leaves_no_socket() -> None:
    """A loop that ends while the endpoint serves (a program that never stopped its
    runtime) closes its listening socket too: the port stayed bound, and scrapes waited
    unanswered in its backlog."""

    async def serve_once() -> MetricsEndpoint:
        endpoint = MetricsEndpoint.listen("127.0.0.1", 0, lambda accept: (b"ok", "text/plain"))
        reader, writer = await asyncio.open_connection(*endpoint.address[:2])
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
        return endpoint

    endpoint = asyncio.run(serve_once())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((endpoint.address.host, endpoint.address.port), 5.0)


@pytest.mark.usefixtures("client_package")
def test_a_runtime_stopped_after_its_loop_closed_releases_its_port(
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A runtime whose loop was closed without cancelling its tasks, stopped from another
    loop, releases the metrics port, quietly (closing the endpoint raised on the closed
    loop, and the port stayed bound)."""
    rt = AgentRuntime(config=with_port(make_config))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(rt.start())
    address = prometheus.endpoint(rt)
    assert address is not None
    loop.close()
    asyncio.run(rt.stop())
    assert not [r for r in caplog.records if "failed to clean up" in r.getMessage()]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address.host, address.port), 5.0)


@pytest.mark.usefixtures("client_package")
async def test_a_host_name_is_bound_at_its_first_address(make_config: MakeConfig) -> None:
    """``host="localhost"``: one socket, on the first address the name resolves to, which
    ``endpoint()`` reports and a scrape reaches."""
    infos = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    first = infos[0][4][0]
    async with AgentRuntime(config=with_port(make_config, host="localhost")) as rt:
        where = prometheus.endpoint(rt)
        assert where is not None
        assert where.host == first
        assert (await scrape(where.url)).status == 200


@pytest.mark.usefixtures("client_package")
async def test_a_taken_port_fails_the_start(make_config: MakeConfig) -> None:
    """A port something else listens on is a ConfigurationError at start, and the runtime
    is stopped again."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        rt = AgentRuntime(config=make_config(plugin_options={"prometheus": {"port": port}}))
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
            await rt.start()
        assert not rt.is_running
        assert prometheus.endpoint(rt) is None


# --------------------------------------------------------------------------- options
@pytest.mark.usefixtures("client_package")
@pytest.mark.parametrize(
    "options",
    [
        {"prot": 9464},
        {"port": -1},
        {"port": 70000},
        {"port": True},
        {"host": ""},
        {"task_duration_buckets": [1.0, 0.5]},
        {"message_latency_buckets": []},
    ],
)
async def test_bad_options_are_a_configuration_error(
    make_config: MakeConfig, options: dict[str, Any]
) -> None:
    rt = AgentRuntime(config=make_config(plugin_options={"prometheus": options}))
    with pytest.raises(ConfigurationError, match=r"plugin_options\['prometheus'\] is invalid"):
        await rt.start()
    assert not rt.is_running


# --------------------------------------------------------------------------- disabled, missing
async def test_disabled_by_name(make_config: MakeConfig) -> None:
    """disable=["prometheus"]: no plugin, no endpoint even with a port configured, and the
    export says why."""
    rt = AgentRuntime(config=with_port(make_config), disable=["prometheus"])
    assert "prometheus" not in rt.plugin_manager.plugin_names()
    async with rt:
        assert prometheus.endpoint(rt) is None
        assert prometheus.metrics_of(rt) is None
        with pytest.raises(PluginError, match=r"disabled \(disable=\['prometheus'\]\)"):
            rt.export_prometheus_metrics()


async def test_missing_package_leaves_the_plugin_dormant(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without prometheus_client the runtime runs as usual; only the export asks for the
    package."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    async with AgentRuntime(config=make_config()) as rt:
        await start_agent(rt, "worker", EchoAgent)
        task = await rt.wait_for_task(await rt.submit_task("one"), timeout_seconds=WAIT_SECONDS)
        assert task.status.value == "completed"
        assert prometheus.metrics_of(rt) is None
        assert prometheus.endpoint(rt) is None
        with pytest.raises(MissingExtraError, match=PIP_COMMAND.replace("[", r"\[")) as info:
            rt.export_prometheus_metrics()
        assert info.value.extra == "prometheus"


@pytest.mark.parametrize("section", [{}, {"port": 0}])
async def test_missing_package_asked_for_fails_the_start(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, section: dict[str, Any]
) -> None:
    """A ``plugin_options["prometheus"]`` section asks for the extra: without its package
    the start fails naming the pip command."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    rt = AgentRuntime(config=make_config(plugin_options={"prometheus": section}))
    with pytest.raises(MissingExtraError) as info:
        await rt.start()
    assert PIP_COMMAND in str(info.value)
    assert not rt.is_running


def test_not_installed_it_adds_no_hook_to_the_work(tmp_path: Path) -> None:
    """Without prometheus_client at import, the plugin is loaded but does not listen to
    events; asking for it still fails the start, and the export names the extra."""
    seen = without_package("prometheus_client", "prometheus", str(tmp_path / "db.sqlite"))
    assert "prometheus" in seen["plugins"]
    assert seen["hooks"] == ["miminions_configure"]
    assert "prometheus" not in seen["event"]
    assert PIP_COMMAND in seen["start"]
    assert PIP_COMMAND in seen["export"]
