"""The thread an agent's synchronous code runs in: one daemon thread, one call at a time.

``ThreadPoolExecutor`` would do the same, but the interpreter joins its threads at exit,
so one synchronous agent call that never returns (a deadlock, an endless loop in a
library) kept the whole program from exiting after its runtime had stopped. Such a call
cannot be interrupted, only abandoned; a daemon thread lets the program end anyway.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
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
        # Calls run by a call of the thread that waits (see wait_serving); how many wait.
        self._meanwhile: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._waiting = 0
        #: An executor for calls that may run while the thread's call waits: the agent's
        #: lifecycle hooks (see :meth:`wait_serving`).
        self.meanwhile: Executor = _Meanwhile(self)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Queue ``fn(*args, **kwargs)``; the future resolves with its result or error."""
        return self._submit(fn, args, kwargs, meanwhile=False)

    def _submit(
        self, fn: Callable[..., _T], args: Any, kwargs: Any, *, meanwhile: bool
    ) -> Future[_T]:
        with self._lock:
            if self._shut_down:
                raise RuntimeError(f"agent thread {self._name!r} is shut down")
            future: Future[_T] = Future()
            if meanwhile:
                # Run by the thread's call waiting in wait_serving, now or once it waits
                # (a task that reaches its safe point after the hook came); else by the
                # thread after the call it runs (woken for it).
                self._meanwhile.put((future, fn, args, kwargs))
                if not self._waiting:
                    self._calls.put(_WAKE)
            else:
                self._calls.put((future, fn, args, kwargs))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            return future

    def wait_serving(self, outcome: Future[Any], timeout: float | None) -> bool:
        """In this thread, by the call it runs: wait up to ``timeout`` seconds for
        ``outcome`` (a context call carried out on the agent's loop, ``call_sync``), and run
        the calls given to :attr:`meanwhile` meanwhile, here, one at a time. Whether
        ``outcome`` is done.

        A sync task halted at a safe point waits for the resume that its agent's sync
        ``on_resume`` (or, first, ``on_pause``) must make: queued behind it, the hook waited
        for good. Run here, it runs in the agent's own thread while the task's code is
        stopped, and the task goes on only once the hook returned: never two calls of the
        agent at once.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not outcome.done():
            # wakes the wait (left over if the wait timed out first: dropped later)
            outcome.add_done_callback(lambda _: self._meanwhile.put(None))
        with self.waiting():
            while not outcome.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    call = self._meanwhile.get(timeout=left)
                except queue.Empty:
                    break
                if call is not None:
                    self._run(call)
        return outcome.done()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count the calling code (in this thread) as waiting for a context call, from
        before the call is handed to the loop (which may at once halt it and submit a hook
        to :attr:`meanwhile`) until it returns (re-entrant)."""
        with self._lock:
            self._waiting += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1
                if not self._waiting and not self._meanwhile.empty():
                    self._calls.put(_WAKE)  # any given as the wait ended run after the call

    @property
    def busy(self) -> bool:
        """Whether a call runs in the thread now (one the caller gave up on, perhaps)."""
        return self._running > 0

    def drop_queued(self) -> None:
        """Cancel the calls not begun yet; the one running (if any) goes on."""
        with self._lock:
            self._cancel_queued()

    def _cancel_queued(self) -> None:
        for calls in (self._calls, self._meanwhile):
            while True:
                try:
                    call = calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None and call is not _WAKE:
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
        _CURRENT.thread = self
        while True:
            call = self._calls.get()
            if call is None:
                return
            if call is _WAKE:
                self._run_meanwhile()
            else:
                self._run(call)
            del call

    def _run_meanwhile(self) -> None:
        """Run the calls given to :attr:`meanwhile` that no waiting call ran."""
        while True:
            try:
                call = self._meanwhile.get_nowait()
            except queue.Empty:
                return
            if call is not None:
                self._run(call)

    def _run(self, call: _Call) -> None:
        future, fn, args, kwargs = call
        self._running += 1  # before the call may start: a release never misses it
        if not future.set_running_or_notify_cancel():
            self._running -= 1
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._running -= 1
            future.set_exception(exc)
            # The traceback holds this frame: without its references to the call, a cycle
            # would keep the error, and all the agent's code held, until a collection.
            del exc, future, fn, args, kwargs, call
        else:
            self._running -= 1
            future.set_result(result)


class _Meanwhile(Executor):
    """:attr:`AgentThread.meanwhile`: runs a call in the thread's waiting call if there is
    one, else queues it as :meth:`AgentThread.submit` does."""

    def __init__(self, thread: AgentThread) -> None:
        self._thread = thread

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` in the agent's thread as soon as it may."""
        return self._thread._submit(fn, args, kwargs, meanwhile=True)


#: Put in the thread's queue to have it run the calls waiting in its meanwhile queue.
_WAKE: Any = (None, None, None, None)

#: The agent thread this thread is, if it is one.
_CURRENT = threading.local()


def current_agent_thread() -> AgentThread | None:
    """The :class:`AgentThread` the calling code runs in, if any."""
    thread: AgentThread | None = getattr(_CURRENT, "thread", None)
    return thread
