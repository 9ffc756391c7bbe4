"""The one error hierarchy of miminions.

Every error the runtime raises on purpose is a :class:`MiminionsError`. Where a standard
exception already names the category, our error also derives from it (an unknown id is a
``ValueError``, a missing extra an ``ImportError``, a wait that ran out a ``TimeoutError``),
so callers can catch either. Messages say what was wrong and what to do instead.
"""

from __future__ import annotations

import asyncio
import reprlib


class MiminionsError(Exception):
    """Base class of every error raised by miminions."""


class ConfigurationError(MiminionsError, ValueError):
    """The runtime or a plugin was configured in a way that cannot work."""


class PluginError(MiminionsError):
    """A plugin could not be registered or no plugin provided a required mechanism."""


class MissingExtraError(MiminionsError, ImportError):
    """An optional feature needs a package that is not installed.

    The message names the import that failed and the ``pip install 'miminions[extra]'``
    command that brings it.
    """

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module!r} is not installed; it is needed by the miminions {extra!r} extra. "
            f"Install it with: pip install 'miminions[{extra}]'",
            name=module,
        )


class ValidationError(MiminionsError, ValueError):
    """An argument or payload was rejected before anything was changed."""


class NotFoundError(MiminionsError, ValueError):
    """An id (task, agent, dead letter, ...) names nothing the runtime knows."""


class AlreadyExistsError(MiminionsError, ValueError):
    """Something with that name or id is already registered."""


class InvalidStateError(MiminionsError):
    """The call is not allowed in the current lifecycle state of its target."""


class RuntimeNotRunningError(InvalidStateError):
    """The runtime was not started yet, or was stopped already."""


class QueueFullError(MiminionsError):
    """A queue or mailbox is at its configured capacity; nothing was added."""


class DependencyCycleError(ValidationError):
    """Adding the task would create a cycle in the dependency graph."""


class ResourceLimitExceeded(MiminionsError):
    """An agent went over one of its resource limits and was stopped."""


class ResourceLimitWarning(MiminionsError):
    """An agent crossed a soft memory or CPU limit (handed to its ``on_error``, task None):
    shed load before the hard limit stops it."""


class TaskTimeoutError(MiminionsError, TimeoutError):
    """A task ran longer than its timeout."""


class TaskCancelledError(MiminionsError):
    """A task was cancelled while it ran; raised into the agent's code path only."""


class WaitTimeoutError(MiminionsError, TimeoutError):
    """Waiting for a task or an agent ran out of time; the awaited thing goes on."""


class MessageTooLargeError(ValidationError):
    """A message payload is larger than the runtime's cap."""


class AgentExitError(MiminionsError):
    """Agent code raised ``SystemExit`` (``sys.exit()``, an argument parser giving up) or,
    in its thread, ``KeyboardInterrupt``: its call fails with this error instead of the
    program ending. ``remote_type`` names what was raised, so a task's ``error_message``
    reads ``"SystemExit: 2"``, as for a process agent."""

    def __init__(self, message: str = "", remote_type: str = "SystemExit") -> None:
        super().__init__(message)
        self.remote_type = remote_type


class FrameTooLargeError(ValidationError):
    """Data too big for one frame between the runtime and a process agent's worker (64 MB:
    a task's input or result, a checkpoint, a message, the answer to a context call)."""


class AgentHookError(MiminionsError):
    """An agent's lifecycle hook (``on_pause``, ``on_resume``, ...) raised; the agent is
    failed. The hook's own exception is the ``__cause__``."""


class HookTimeoutError(AgentHookError):
    """A lifecycle hook ran past the time it was given (not an error it raised)."""


class AgentCrashedError(MiminionsError):
    """The agent hosting a task died while running it (its worker process exited, was
    killed, or stopped answering); or died under a pause or resume (a crash: the restart
    policy deals with it)."""


class HostEndedError(AgentCrashedError):
    """An agent host's agent died under a pause or resume (its worker process ended). A
    host raising it also reports the crash (``report_host_failure``): the kernel leaves the
    agent to that crash handling (restart policy) instead of failing it for a hook error."""


class TaskNotStartedError(MiminionsError):
    """A host gives a task back before its agent began it (it waited in the agent's prefetch
    window when the agent crashed): the task is re-queued without using up an attempt."""


class RemoteAgentError(MiminionsError):
    """An exception raised by agent code in a worker process, rebuilt in the runtime.

    ``remote_type`` is the name of the original exception class, ``remote_traceback`` its
    formatted traceback in the worker; ``str()`` is its message.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


#: What the runtime contains when a plugin's synchronous hook raises it: any error, and the
#: ``CancelledError`` a plugin gets from ``.result()`` of a cancelled task of its own (a
#: ``BaseException``: ``except Exception`` would let it into the runtime's bookkeeping). A
#: synchronous call cannot be cancelled from outside, so it is never the runtime's own.
PLUGIN_ERRORS: tuple[type[BaseException], ...] = (Exception, asyncio.CancelledError)


class _Shown(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # past Python's limit on turning an int into digits
            return f"<an integer of {x.bit_length()} bits>"


_SHOWN = _Shown()
_SHOWN.maxlevel = 3
_SHOWN.maxstring = _SHOWN.maxother = 200
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 8


def shown(value: object) -> str:
    """``repr(value)`` for an error message about a value a caller passed, bounded in depth
    and length: a deeply nested or huge value passed by mistake must not make building the
    message fail (``RecursionError``) or flood it."""
    return _SHOWN.repr(value)


__all__ = [
    "AgentCrashedError",
    "AgentExitError",
    "AgentHookError",
    "AlreadyExistsError",
    "ConfigurationError",
    "DependencyCycleError",
    "FrameTooLargeError",
    "HookTimeoutError",
    "HostEndedError",
    "InvalidStateError",
    "MessageTooLargeError",
    "MiminionsError",
    "MissingExtraError",
    "NotFoundError",
    "PluginError",
    "QueueFullError",
    "RemoteAgentError",
    "ResourceLimitExceeded",
    "ResourceLimitWarning",
    "RuntimeNotRunningError",
    "TaskCancelledError",
    "TaskNotStartedError",
    "TaskTimeoutError",
    "ValidationError",
    "WaitTimeoutError",
]
