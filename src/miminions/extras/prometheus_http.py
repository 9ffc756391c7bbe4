"""The HTTP endpoint of the prometheus extra: ``GET /metrics`` on the runtime's event loop.

It serves on the runtime's own loop rather than in prometheus_client's server thread, for
two reasons. A scrape reads the runtime's in-memory state, which only the loop's thread may
touch (another thread could see a dict change size mid-iteration). And closing is
immediate and synchronous, as ``miminions_runtime_stopped`` requires: no ``serve_forever``
thread to wait for. Rendering the metrics of a runtime takes well under a millisecond, so
serving them on the loop costs the agents nothing noticeable.

The server speaks just enough HTTP/1.1 for a scraper: one request per connection
(``Connection: close``), ``GET`` or ``HEAD`` of ``/metrics`` (query strings are ignored),
the exposition format chosen from the ``Accept`` header. Anything else gets a 4xx answer;
a client that sends no complete request head within :data:`REQUEST_TIMEOUT_SECONDS` is
disconnected. This module uses only the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Callable
from functools import partial
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import urlsplit

from miminions.kernel.errors import ConfigurationError

#: The path the metrics are served at (Prometheus' default ``metrics_path``).
METRICS_PATH = "/metrics"
#: A client must send its request head within this many seconds.
REQUEST_TIMEOUT_SECONDS = 10.0
#: The largest request head accepted (a scrape sends a few hundred bytes).
MAX_HEAD_BYTES = 16 * 1024

#: Renders the metrics for an ``Accept`` header: ``(body, content type)``.
Render = Callable[[str], tuple[bytes, str]]

logger = logging.getLogger("miminions.extras.prometheus")


class Endpoint(NamedTuple):
    """Where a metrics endpoint listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The URL a scraper fetches, e.g. ``http://127.0.0.1:9464/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{METRICS_PATH}"


class MetricsEndpoint:
    """One listening socket serving ``/metrics``; see the module docstring.

    Build it with :meth:`listen` on the runtime's loop; :meth:`close` it when the runtime
    stops.
    """

    def __init__(self, sock: socket.socket, render: Render) -> None:
        host, port = sock.getsockname()[:2]
        self.address = Endpoint(host, port)
        self._sock = sock
        self._render = render
        self._closed = False
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[object], asyncio.StreamWriter] = {}
        # The socket listens already (connections wait in its backlog); the loop starts
        # accepting them at its next iteration.
        loop = asyncio.get_running_loop()
        self._opening = loop.create_task(self._open())
        self._opening.add_done_callback(self._opened)
        # Pending while the endpoint is open: a loop that ends without the runtime being
        # stopped (asyncio.run cancels what is left) releases the port then (it stayed
        # listening, scrapes waiting unanswered in its backlog). It holds the endpoint
        # weakly: a runtime dropped after its stop is not kept alive until the next turn.
        self._canary = loop.create_task(asyncio.Event().wait())
        self._canary.add_done_callback(partial(_release_at_loop_end, weakref.ref(self)))
        # (Left pending by a loop closed without cancelling its tasks: not worth a warning.)
        self._canary._log_destroy_pending = False  # type: ignore[attr-defined]

    @classmethod
    def listen(cls, host: str, port: int, render: Render) -> MetricsEndpoint:
        """Bind ``host:port`` (port 0: a free port) now and serve ``render``'s output.

        Binding happens at once, so a taken port fails the caller, and :attr:`address` is
        known when this returns. One socket, on the first address ``host`` resolves to (as
        prometheus_client's own server does): a name like ``localhost`` may resolve to
        ``::1`` before ``127.0.0.1``, so give an IP address to choose the family;
        :attr:`address` tells the one bound.

        :raises ConfigurationError: the address cannot be resolved or listened on.
        """
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            sock = socket.create_server(address, family=family)
        except OSError as exc:
            raise ConfigurationError(
                f"the Prometheus endpoint cannot listen on {host}:{port}: {exc}; choose "
                "another plugin_options['prometheus']['port'] (0 takes a free one)"
            ) from exc
        return cls(sock, render)

    @property
    def url(self) -> str:
        """The URL a scraper fetches."""
        return self.address.url

    def close(self) -> None:
        """Stop listening and drop every open connection, at once (never blocks)."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()  # and its socket
        else:  # the server was never made: nothing but this socket to release
            self._sock.close()
        for task, writer in list(self._clients.items()):
            writer.transport.abort()
            with contextlib.suppress(RuntimeError):  # see below
                task.cancel()
        # (A stop from another loop may come after this one closed without cancelling
        # them: nothing can run there any more.)
        with contextlib.suppress(RuntimeError):
            self._opening.cancel()
        with contextlib.suppress(RuntimeError):
            self._canary.cancel()

    # ------------------------------------------------------------------ serving
    async def _open(self) -> None:
        # Made without serving, the server comes to exist in this first step of the task,
        # with no suspension point before it is kept: whenever the task ends, _opened finds
        # either the server or the bare socket to close.
        self._server = await asyncio.start_server(
            self._serve, sock=self._sock, limit=MAX_HEAD_BYTES, start_serving=False
        )
        if not self._closed:
            await self._server.start_serving()

    def _opened(self, opening: asyncio.Task[None]) -> None:
        if opening.cancelled():
            # The loop is being torn down (asyncio.run cancels what is left) or close() ran
            # first: no socket may wait for the garbage collector.
            self._release()
            return
        error = opening.exception()
        if error is not None:
            logger.error("the Prometheus endpoint at %s failed to start: %r", self.url, error)
            self._release()

    def _release(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        self._sock.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._closed or task is None:
            writer.transport.abort()
            return
        self._clients[task] = writer
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                response = _plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request too large")
            else:
                response = self._answer(head)
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client went away, or said nothing in time: nobody to answer
        except asyncio.CancelledError:
            if not self._closed:
                raise
            # close() cancelled it: end as a finished task. On Python 3.11, asyncio's
            # StreamReaderProtocol asks a cancelled handler task for its exception, and the
            # loop's exception handler would log an error at every stop with a client.
        finally:
            self._clients.pop(task, None)
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _plain(HTTPStatus.BAD_REQUEST, "malformed request line")
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return _plain(HTTPStatus.METHOD_NOT_ALLOWED, "use GET", ("Allow: GET, HEAD",))
        if urlsplit(target).path != METRICS_PATH:
            return _plain(HTTPStatus.NOT_FOUND, f"the metrics are at {METRICS_PATH}")
        accept = ""
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        try:
            body, content_type = self._render(accept)
        except Exception:
            logger.exception("rendering the Prometheus metrics failed")
            return _plain(HTTPStatus.INTERNAL_SERVER_ERROR, "rendering the metrics failed")
        return _response(HTTPStatus.OK, body, content_type, head_only=method == "HEAD")


def _plain(status: HTTPStatus, text: str, extra_headers: tuple[str, ...] = ()) -> bytes:
    body = f"{status.value} {status.phrase}: {text}\n".encode()
    return _response(status, body, "text/plain; charset=utf-8", extra_headers=extra_headers)


def _response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    *,
    head_only: bool = False,
    extra_headers: tuple[str, ...] = (),
) -> bytes:
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *extra_headers,
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


__all__ = [
    "MAX_HEAD_BYTES",
    "METRICS_PATH",
    "REQUEST_TIMEOUT_SECONDS",
    "Endpoint",
    "MetricsEndpoint",
]


def _release_at_loop_end(
    endpoint: weakref.ref[MetricsEndpoint], canary: asyncio.Task[object]
) -> None:
    """The endpoint's canary ended: the loop is being torn down (or the endpoint closed)."""
    still = endpoint()
    if still is not None:
        still.close()
