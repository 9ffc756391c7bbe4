"""The built-in event loop: asyncio's own, with timers that fire on time on Linux.

On Linux asyncio waits for I/O and for its next timer in one ``epoll_wait``, which counts
whole milliseconds and rounds a wait up: a timer due in 9.3 ms fires after 10 ms or more. A
loop whose timers are spread over time (agents sleeping, timeouts, time-to-live deadlines)
pays that on every wake-up: ten coroutines sleeping 10 ms in turn lost 7-8 % of their time
to it (docs/benchmarks.md, P-05). The selector here waits a fraction of a millisecond with
``select()`` on the epoll descriptor itself, which counts microseconds and wakes as soon as
epoll has an event, then collects the events without waiting; whole milliseconds still go
to ``epoll_wait`` alone.

:func:`miminions.run`, ``miminions demo`` and the ``process`` host's workers run on this
loop unless another plugin answers ``miminions_loop_factory`` first (the ``uvloop`` extra
does). A runtime started inside a loop made elsewhere keeps that loop.
"""

from __future__ import annotations

import asyncio
import select
import selectors
import warnings
from collections.abc import Callable

from miminions.kernel.hookspecs import hookimpl
from miminions.kernel.models import RuntimeConfig

_Ready = list[tuple[selectors.SelectorKey, int]]


class _PreciseEpollSelector(selectors.EpollSelector):
    """An epoll selector whose waits are not rounded up to whole milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self._precise = True  # off for good if select() cannot take the descriptor

    def select(self, timeout: float | None = None) -> _Ready:
        """Wait at most ``timeout`` seconds (None: until an event) and return the ready
        keys, as :meth:`selectors.EpollSelector.select` does."""
        if self._precise and timeout is not None and timeout > 0 and (timeout * 1000) % 1:
            try:
                select.select([self.fileno()], [], [], timeout)
            except ValueError:  # a descriptor beyond select()'s FD_SETSIZE
                self._precise = False
            else:
                timeout = 0
        return super().select(timeout)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new asyncio event loop; on Linux, one whose timers are not rounded up to whole
    milliseconds (see the module). An event loop policy set by the program (such as
    ``uvloop.install()``) is obeyed: its loop is made instead."""
    with warnings.catch_warnings():  # policies are deprecated from Python 3.14 on
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
        default = type(policy) is asyncio.DefaultEventLoopPolicy
    if not default or not hasattr(selectors, "EpollSelector"):  # kqueue counts finer already
        return policy.new_event_loop()
    return asyncio.SelectorEventLoop(_PreciseEpollSelector())


@hookimpl(trylast=True)  # built-in: any other loop plugin (uvloop) wins
def miminions_loop_factory(config: RuntimeConfig) -> Callable[[], asyncio.AbstractEventLoop]:
    """Provide asyncio's loop with precise timers (:func:`new_event_loop`)."""
    return new_event_loop
