"""The thread an agent's synchronous code runs in: one daemon thread, one call at a time.

``ThreadPoolExecutor`` would do the same, but the interpreter joins its threads at exit,
so one synchronous agent call that never returns (a deadlock, an endless loop in a
library) kept the whole program from exiting after its runtime had stopped. Such a call
cannot be interrupted, only abandoned; a daemon thread lets the program end anyway.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

_Call = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class AgentThread(Executor):
    """Runs submitted calls one after another in one daemon thread, started on first use.

    An :class:`~concurrent.futures.Executor`, so ``loop.run_in_executor`` accepts it.
    ``shutdown(wait=False)`` abandons a call in progress: its thread ends after it, or
    with the interpreter.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shut_down = False
        self._running = 0  # calls running now (0 or 1: one at a time)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Queue ``fn(*args, **kwargs)``; the future resolves with its result or error."""
        with self._lock:
            if self._shut_down:
                raise RuntimeError(f"agent thread {self._name!r} is shut down")
            future: Future[_T] = Future()
            self._calls.put((future, fn, args, kwargs))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            return future

    @property
    def busy(self) -> bool:
        """Whether a call runs in the thread now (one the caller gave up on, perhaps)."""
        return self._running > 0

    def drop_queued(self) -> None:
        """Cancel the calls not begun yet; the one running (if any) goes on."""
        with self._lock:
            self._cancel_queued()

    def _cancel_queued(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            if call is not None:
                call[0].cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; with ``cancel_futures`` drop those not begun; with ``wait``
        wait for the thread to finish what it runs."""
        with self._lock:
            self._shut_down = True
            if cancel_futures:
                self._cancel_queued()
            self._calls.put(None)
            thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            future, fn, args, kwargs = call
            self._running += 1  # before the call may start: a release never misses it
            if not future.set_running_or_notify_cancel():
                self._running -= 1
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._running -= 1
                future.set_exception(exc)
                del exc  # no reference cycle through the traceback
            else:
                self._running -= 1
                future.set_result(result)
            del call, future, fn, args, kwargs
