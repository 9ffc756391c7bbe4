"""Floors for the P-02 delivery latencies and the P-03 event query: the same work without
the runtime.

A delivery-latency figure mixes the runtime's own cost with what the machine and the event
loop charge for the hop at all. These functions measure that floor the way
``benchmarks/test_messaging.py`` measures the runtime: items made ``gap`` seconds apart,
each stamped when it is made and timed where it arrives, every sample kept.

- :func:`queue_hop_latencies`: one coroutine hands items to another through an
  ``asyncio.Queue`` on the running loop (the floor of inline agents).
- :func:`socket_relay_latencies`: a sender process writes length-prefixed JSON frames on a
  socketpair to this process, which relays them with asyncio on the running loop to a
  receiver process on a second socketpair (the floor of process agents: worker -> runtime
  -> worker). The children are plain blocking-socket Python processes that run this
  module's ``_sender_main`` / ``_receiver_main``; they import nothing from miminions.

- :func:`bare_fetch_seconds`: the rows of an event query read with Python's own sqlite3,
  as tuples, on the calling thread (the floor of ``query_events``: reading the rows at all).

- :func:`wake_penalty`: how much slower a fixed piece of Python work runs right after the
  loop sat idle for ``gap`` seconds than when it runs back to back. A delivery does its
  work (the runtime's, or the floor's much smaller share) just after such a wait, so on a
  machine where this penalty is large, every microsecond of work on the path counts
  several times.

Only the standard library is imported here, so a child starts quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HEADER_BYTES = 4  # as miminions.kernel.wire: 4-byte big-endian length, then UTF-8 JSON
READY = b"R"  # receiver -> relay: listening
GO = b"G"  # relay -> sender: start sending
CHILD_START_TIMEOUT_SECONDS = 30.0  # a child that has not answered by then is killed
CHILD_EXIT_TIMEOUT_SECONDS = 10.0  # after its last frame, a child must exit within this
_ROOT = Path(__file__).resolve().parent.parent  # the directory holding ``benchmarks``


# ------------------------------------------------------------------ in-process floor
async def queue_hop_latencies(count: int, gap: float) -> list[float]:
    """Seconds from creation to receipt of ``count`` items, one made every ``gap`` seconds
    and handed from one coroutine to another through an ``asyncio.Queue``.

    Each item is the ``datetime.now(UTC)`` of its making; the receiving coroutine takes
    ``datetime.now(UTC) - item`` as soon as it gets it. Runs on the running loop.
    """
    queue: asyncio.Queue[datetime] = asyncio.Queue()
    latencies: list[float] = []

    async def send() -> None:
        for _ in range(count):
            queue.put_nowait(datetime.now(UTC))
            await asyncio.sleep(gap)

    async def receive() -> None:
        for _ in range(count):
            made = await queue.get()
            latencies.append((datetime.now(UTC) - made).total_seconds())

    await asyncio.gather(send(), receive())
    return latencies


# ------------------------------------------------------------------ cross-process floor
def _frame(payload: object) -> bytes:
    """``payload`` as one frame: 4-byte big-endian length + compact JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from the blocking ``sock``; EOFError if it closes first."""
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the relay closed the socket")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv_frame(sock: socket.socket) -> bytes:
    """The JSON body of the next frame on the blocking ``sock``."""
    size = int.from_bytes(_recv_exactly(sock, HEADER_BYTES), "big")
    return _recv_exactly(sock, size)


def _sender_main(fd: int, count: int, gap: float) -> None:
    """Child process: wait for the relay's go, then write ``count`` frames stamped with
    ``time.time()`` on socket ``fd``, sleeping ``gap`` seconds after each."""
    with socket.socket(fileno=fd) as sock:
        sock.settimeout(CHILD_START_TIMEOUT_SECONDS)
        if _recv_exactly(sock, 1) != GO:
            raise RuntimeError("expected the relay's go")
        for index in range(count):
            sock.sendall(_frame({"op": "send", "i": index, "t": time.time()}))
            time.sleep(gap)


def _receiver_main(fd: int, count: int, gap: float) -> None:
    """Child process: tell the relay it is ready, take ``time.time() - stamp`` for each of
    ``count`` frames on socket ``fd``, then send all the latencies back as one frame."""
    with socket.socket(fileno=fd) as sock:
        # long enough for the whole run, so a vanished relay cannot keep it waiting forever
        sock.settimeout(CHILD_START_TIMEOUT_SECONDS + count * gap * 10)
        sock.sendall(READY)
        latencies: list[float] = []
        for _ in range(count):
            body = _recv_frame(sock)
            latencies.append(time.time() - json.loads(body)["t"])
        sock.sendall(_frame({"latencies": latencies}))


def _child_main(role: str, fd: int, count: int, gap: float) -> None:
    """Child process entry: run ``_<role>_main``; if the relay goes away (its measurement
    was cut short), exit with status 1 and one line, not a traceback."""
    main = _sender_main if role == "sender" else _receiver_main
    try:
        main(fd, count, gap)
    except (EOFError, OSError) as error:  # OSError: a closed or reset socket, a timeout
        sys.exit(f"floors {role}: the relay went away ({type(error).__name__})")


def _start_child(role: str, sock: socket.socket, count: int, gap: float) -> subprocess.Popen[bytes]:
    """A Python child running ``_<role>_main`` (``role``: sender or receiver) on ``sock``,
    which it inherits by its file descriptor."""
    fd = sock.fileno()
    code = (
        "import sys; from benchmarks import floors; floors._child_main("
        "sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, role, str(fd), str(count), repr(gap)],
        pass_fds=[fd],
        cwd=_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def _reap(children: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for each child to exit; kill (and wait for) those
    that do not, so none outlives the measurement."""
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def socket_relay_latencies(count: int, gap: float) -> list[float]:
    """Seconds from creation to receipt of ``count`` frames, one made every ``gap``
    seconds in a sender process and relayed by this process to a receiver process.

    The runtime's shape for a message between two process agents: sender child ->
    socketpair -> this process (reads each length-prefixed JSON frame with asyncio on the
    running loop and writes it on unchanged) -> socketpair -> receiver child, which takes
    ``time.time() - stamp`` per frame (one machine, one clock) and returns the latencies in
    one frame at the end. The children always exit or are killed before this returns.
    """
    sender_ours, sender_theirs = socket.socketpair()
    receiver_ours, receiver_theirs = socket.socketpair()
    children: list[subprocess.Popen[bytes]] = []
    writers: list[asyncio.StreamWriter] = []
    try:
        try:
            children.append(_start_child("receiver", receiver_theirs, count, gap))
            children.append(_start_child("sender", sender_theirs, count, gap))
        finally:  # the children hold their own copies now
            sender_theirs.close()
            receiver_theirs.close()
        from_sender, to_sender = await asyncio.open_connection(sock=sender_ours)
        writers.append(to_sender)
        from_receiver, to_receiver = await asyncio.open_connection(sock=receiver_ours)
        writers.append(to_receiver)

        async with asyncio.timeout(CHILD_START_TIMEOUT_SECONDS):
            if await from_receiver.readexactly(1) != READY:
                raise RuntimeError("the floor's receiver process did not report ready")
        to_sender.write(GO)
        await to_sender.drain()

        async with asyncio.timeout(CHILD_START_TIMEOUT_SECONDS + count * gap * 10):
            for _ in range(count):
                header = await from_sender.readexactly(HEADER_BYTES)
                body = await from_sender.readexactly(int.from_bytes(header, "big"))
                to_receiver.write(header + body)
                await to_receiver.drain()
            header = await from_receiver.readexactly(HEADER_BYTES)
            result = json.loads(await from_receiver.readexactly(int.from_bytes(header, "big")))
        latencies: list[float] = result["latencies"]
        if len(latencies) != count:
            raise RuntimeError(f"the floor's receiver returned {len(latencies)} of {count}")
        return latencies
    finally:
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), CHILD_EXIT_TIMEOUT_SECONDS)
        sender_ours.close()  # no-ops when their stream writers closed them
        receiver_ours.close()
        # with their sockets closed, the children see EOF and exit at once
        _reap(children, CHILD_EXIT_TIMEOUT_SECONDS)


# ------------------------------------------------------------------ event-query floor
def bare_fetch_seconds(path: Path, sql: str, calls: int) -> list[float]:
    """Seconds of each of ``calls`` runs of ``sql`` on one read-only sqlite3 connection to
    ``path``, every row fetched as a tuple: no thread hop, no JSON, no models."""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            connection.execute(sql).fetchall()
            seconds.append(time.perf_counter() - start)
        return seconds
    finally:
        connection.close()


# ------------------------------------------------------------------ wake-up penalty
_WAKE_WORK_PAYLOAD = {"message_type": "ping", "data": {"i": 1, "text": "hello"}, "ids": [1, 2]}


def _wake_work() -> None:
    """A fixed piece of work of the runtime's kind: JSON, dicts, clock reads."""
    for _ in range(4):
        copy = json.loads(json.dumps(_WAKE_WORK_PAYLOAD))
        copy["at"] = datetime.now(UTC)
        {key: value for key, value in copy.items() if key != "ids"}


async def wake_penalty(samples: int, gap: float) -> tuple[float, float]:
    """Median seconds of :func:`_wake_work` run back to back (the loop turning but never
    waiting) and run right after each ``await asyncio.sleep(gap)``, ``samples`` of each,
    on the running loop."""
    hot: list[float] = []
    after_idle: list[float] = []
    for pause, timings in ((0.0, hot), (gap, after_idle)):
        for _ in range(samples):
            await asyncio.sleep(pause)
            start = time.perf_counter()
            _wake_work()
            timings.append(time.perf_counter() - start)
    return sorted(hot)[samples // 2], sorted(after_idle)[samples // 2]
