"""miminions: run many AI agents side by side on one machine.

A durable priority queue of dependent tasks, agents you can start, pause, resume and stop,
resource limits and a full event log, on an embedded SQLite file. Everything that is a
mechanism (scheduling, isolation, storage, monitoring) is a pluggy plugin.

    async with AgentRuntime("miminions.db") as rt:
        agent_id = await rt.register_agent("echo", EchoAgent)
        await rt.start_agent(agent_id)
        task = await rt.wait_for_task(await rt.submit_task("echo", {"text": "hi"}))
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from miminions.kernel.agent import AgentContext, AgentProtocol, BaseAgent
    from miminions.kernel.errors import (
        AgentCrashedError,
        AgentExitError,
        AgentHookError,
        AlreadyExistsError,
        ConfigurationError,
        DependencyCycleError,
        FrameTooLargeError,
        InvalidStateError,
        MessageTooLargeError,
        MiminionsError,
        MissingExtraError,
        NotFoundError,
        PluginError,
        QueueFullError,
        RemoteAgentError,
        ResourceLimitExceeded,
        ResourceLimitWarning,
        RuntimeNotRunningError,
        TaskCancelledError,
        TaskNotStartedError,
        TaskTimeoutError,
        ValidationError,
        WaitTimeoutError,
    )
    from miminions.kernel.hookspecs import accepts_events, hookimpl, hookspec
    from miminions.kernel.interfaces import AgentHost, EventQuery, Executor, Store, StoredAgent
    from miminions.kernel.models import (
        AgentInstance,
        AgentMessage,
        AgentSpec,
        AgentStatus,
        Capacity,
        DeadLetter,
        Event,
        EventRecord,
        EventType,
        HoldKind,
        HoldReason,
        JSONObject,
        Metrics,
        Priority,
        ProcessSettings,
        QueueStatus,
        ResourceLimits,
        RestartPolicy,
        RuntimeConfig,
        Severity,
        Task,
        TaskExplanation,
        TaskStatus,
        UsageBudget,
    )
    from miminions.kernel.run import run
    from miminions.kernel.runtime import AgentRuntime
    from miminions.kernel.task_input import TaskRequest

__version__ = "0.1.0"

# A library does not configure logging; applications decide where events go.
logging.getLogger("miminions").addHandler(logging.NullHandler())

# The public names are loaded on first use, not on ``import miminions``: the kernel's models
# take a third of a second to build, and the pytest plugin (``miminions.testing``) is
# imported by every pytest run of an environment where miminions is installed, used or not.
# The modules that define the names above, searched in this order: what agent code needs
# (and a worker process has preloaded) first, the runtime and the plugin machinery last.
_SOURCES = (
    "miminions.kernel.errors",
    "miminions.kernel.models",
    "miminions.kernel.agent",
    "miminions.kernel.task_input",
    "miminions.kernel.interfaces",
    "miminions.kernel.hookspecs",
    "miminions.kernel.run",
    "miminions.kernel.runtime",
)


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562), importing only the modules up to the one
    that defines it: a worker process that imports ``BaseAgent`` does not load the runtime."""
    if name not in __all__:
        raise AttributeError(f"module 'miminions' has no attribute {name!r}")
    for source in _SOURCES:
        module = importlib.import_module(source)
        if hasattr(module, name):
            value = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'miminions' has no attribute {name!r}")  # pragma: no cover


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AgentContext",
    "AgentCrashedError",
    "AgentExitError",
    "AgentHookError",
    "AgentHost",
    "AgentInstance",
    "AgentMessage",
    "AgentProtocol",
    "AgentRuntime",
    "AgentSpec",
    "AgentStatus",
    "AlreadyExistsError",
    "BaseAgent",
    "Capacity",
    "ConfigurationError",
    "DeadLetter",
    "DependencyCycleError",
    "Event",
    "EventQuery",
    "EventRecord",
    "EventType",
    "Executor",
    "FrameTooLargeError",
    "HoldKind",
    "HoldReason",
    "InvalidStateError",
    "JSONObject",
    "MessageTooLargeError",
    "Metrics",
    "MiminionsError",
    "MissingExtraError",
    "NotFoundError",
    "PluginError",
    "Priority",
    "ProcessSettings",
    "QueueFullError",
    "QueueStatus",
    "RemoteAgentError",
    "ResourceLimitExceeded",
    "ResourceLimitWarning",
    "ResourceLimits",
    "RestartPolicy",
    "RuntimeConfig",
    "RuntimeNotRunningError",
    "Severity",
    "Store",
    "StoredAgent",
    "Task",
    "TaskCancelledError",
    "TaskExplanation",
    "TaskNotStartedError",
    "TaskRequest",
    "TaskStatus",
    "TaskTimeoutError",
    "UsageBudget",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
    "accepts_events",
    "hookimpl",
    "hookspec",
    "run",
]
