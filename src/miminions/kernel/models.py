"""Data models shared by the kernel, the plugins and users (pydantic v2).

Everything stored or sent between processes is one of these models or plain JSON. Enums are
``str`` enums with lower-case values, so ``TaskStatus.COMPLETED == "completed"`` and the
stored form is readable in any SQLite browser.

The kernel builds instances on hot paths with ``model_construct`` after validating the user's
arguments itself; data read back from a store or received from another process goes through
full validation (``model_validate``).
"""

from __future__ import annotations

import copy
import enum
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from miminions.kernel.jsonutil import copy_json

JSONObject = dict[str, Any]

#: The longest duration accepted anywhere (settings, timeouts, TTLs): 100 years. Deadlines
#: are datetimes (a TTL's ``expires_at``) and loop times; far beyond this they overflow, and
#: "never" is spelled None.
MAX_SECONDS = 100 * 365 * 24 * 3600.0
#: A duration setting: finite, 0 to 100 years (infinity and NaN are refused, not taken as
#: "never": that is None where a setting allows it).
#: Numbers are strict, as everywhere a number is given: an int or a float (``True`` or
#: ``"5"`` are refused, not converted: ``max_memory_per_agent_mb=True`` was a 1 MB limit).
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False, strict=True)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False, strict=True)]
#: A positive finite amount (cost, load).
PositiveAmount = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
#: The largest count anywhere (SQLite's and most metrics systems' largest integer).
MAX_COUNT = 2**63 - 1
#: A count or size limit: a positive int (True, "5" or 5.0 are refused, not converted), at
#: most :data:`MAX_COUNT` (a bigger one cannot even be exported as a metric).
Count = Annotated[int, Field(gt=0, le=MAX_COUNT, strict=True)]
#: A memory size in megabytes: positive, at most 2**30 MB (a pebibyte).
Megabytes = Annotated[float, Field(gt=0, le=2**30, allow_inf_nan=False, strict=True)]

_M = TypeVar("_M", bound=BaseModel)
_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}


def fast_construct(cls: type[_M], values: dict[str, Any]) -> _M:
    """Build a model from trusted, complete ``values`` without validation.

    For hot paths where the kernel has already checked every value: like
    ``model_construct`` but without its per-field bookkeeping. ``values`` must name every
    field; the dict is used as the instance's ``__dict__`` (not copied). ``cls`` must not
    define ``__new__`` (pydantic models do not; a test checks the project's).
    """
    # object.__new__ directly: looking ``__new__`` up through the model's metaclass costs
    # more than the rest of the instance's creation (a sixth of this function).
    obj = _new_object(cls)
    _set_object_attr(obj, "__dict__", values)
    # Every field is set, so pydantic's later ``fields_set.add(name)`` never changes this set:
    # one set per class can be shared instead of building one per instance.
    fields_set = _ALL_FIELDS.get(cls)
    if fields_set is None or len(fields_set) != len(values):
        fields_set = _ALL_FIELDS[cls] = set(values)
    _set_fields_set(obj, fields_set)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


# BaseModel's slots, set through their descriptors: a quarter cheaper than
# ``object.__setattr__`` on paths that build thousands of models (event queries, dispatch).
def _slot_setter(name: str) -> Callable[[object, Any], None]:
    return cast(Callable[[object, Any], None], vars(BaseModel)[name].__set__)


_new_object = object.__new__
_set_object_attr = object.__setattr__
_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


def fast_copy(model: _M) -> _M:
    """A shallow copy of a model without pydantic's generic copy machinery."""
    return fast_construct(type(model), dict(model.__dict__))


class Priority(enum.IntEnum):
    """Named priority levels. Any integer 0..100 is valid; 0 is the most urgent."""

    HIGH = 0
    MEDIUM = 50
    LOW = 100


MIN_PRIORITY = 0
MAX_PRIORITY = 100


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. The last three are terminal."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in _TERMINAL_TASK_STATUSES


_TERMINAL_TASK_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class AgentStatus(enum.StrEnum):
    """Where an agent is in its life (see ``kernel/supervisor.py`` for the transitions)."""

    REGISTERED = "registered"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Severity(enum.StrEnum):
    """Severity of an event, ordered from least to most severe."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class EventType(enum.StrEnum):
    """Every kind of event the runtime records."""

    RUNTIME_STARTED = "runtime_started"
    RUNTIME_STOPPED = "runtime_stopped"
    RUNTIME_RECOVERED = "runtime_recovered"
    AGENT_REGISTERED = "agent_registered"
    AGENT_QUEUED = "agent_queued"
    AGENT_STARTING = "agent_starting"
    AGENT_STARTED = "agent_started"
    AGENT_PAUSED = "agent_paused"
    AGENT_RESUMED = "agent_resumed"
    AGENT_STOPPING = "agent_stopping"
    AGENT_STOPPED = "agent_stopped"
    AGENT_FAILED = "agent_failed"
    AGENT_ERROR = "agent_error"
    AGENT_RESTARTING = "agent_restarting"
    AGENT_KILLED = "agent_killed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    WORKERS_REAPED = "workers_reaped"
    TASK_ENQUEUED = "task_enqueued"
    TASK_STARTED = "task_started"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    TASK_TIMEOUT = "task_timeout"
    TASK_RETRY_SCHEDULED = "task_retry_scheduled"
    TASK_CANCELLED = "task_cancelled"
    TASK_REQUEUED = "task_requeued"
    TASK_DEAD_LETTERED = "task_dead_lettered"
    QUEUE_PAUSED = "queue_paused"
    QUEUE_RESUMED = "queue_resumed"
    MESSAGE_SENT = "message_sent"
    MESSAGE_RECEIVED = "message_received"
    MESSAGE_EXPIRED = "message_expired"
    RESOURCE_LIMIT_WARNING = "resource_limit_warning"
    RESOURCE_LIMIT_EXCEEDED = "resource_limit_exceeded"


class Task(BaseModel):
    """A unit of work: what to do (``name``, ``input_data``) and everything that happened to it.

    ``agent_id`` / ``group`` say where it may run (neither: any agent);
    ``assigned_agent_id`` is the agent that ran it last. ``effective_priority``,
    ``queue_position`` and ``estimated_wait_seconds`` are filled in by status queries.
    """

    model_config = ConfigDict(extra="forbid")

    task_id: str
    name: str
    priority: int = Field(default=Priority.MEDIUM, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    status: TaskStatus = TaskStatus.PENDING
    input_data: JSONObject = Field(default_factory=dict)
    output_data: Any = None
    error_message: str | None = None
    agent_id: str | None = None
    group: str | None = None
    assigned_agent_id: str | None = None
    dependencies: list[str] = Field(default_factory=list)
    retry_count: int = Field(default=0, ge=0)
    max_retries: int = Field(default=0, ge=0)
    timeout_seconds: PositiveSeconds | None = None
    idempotency_key: str | None = None
    checkpoint: Any = None
    dead_lettered: bool = False
    #: The trace the task belongs to: text headers (W3C ``traceparent``, ...) a tracing
    #: plugin put there, stored and handed to the agent untouched; None without one.
    trace_context: dict[str, str] | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    effective_priority: int | None = None
    queue_position: int | None = None
    estimated_wait_seconds: float | None = None


_TASK_JSON_FIELDS = ("input_data", "output_data", "dependencies", "checkpoint", "trace_context")


def task_snapshot(task: Task) -> Task:
    """A copy of ``task`` that shares no mutable value with it (its JSON values are copied
    too): what the runtime hands to callers and to agents sharing its memory, so that none
    of them changes the runtime's task through what it was given."""
    return own_json_values(fast_copy(task))


def own_json_values(task: Task) -> Task:
    """Give ``task`` (a copy, e.g. from :func:`fast_copy`) copies of its JSON values, in
    place, and return it."""
    fields = task.__dict__
    for name in _TASK_JSON_FIELDS:
        value = fields[name]
        if value is not None:
            fields[name] = copy_json(value)
    return task


class UsageBudget(BaseModel):
    """A budget of self-reported usage (``context.report_usage``): when ``tokens`` or
    ``cost`` is reached the agent (or group) is paused; None is unlimited."""

    model_config = ConfigDict(extra="forbid")

    tokens: Count | None = None
    cost: PositiveAmount | None = None


def check_storage_path(value: object) -> str:
    """A database path as a string: a non-empty ``str`` or path object without NUL; an
    empty one would be a private temporary database, lost when the runtime stops
    (``":memory:"`` says that on purpose). Raises ValueError saying what to pass."""
    try:
        path = os.fspath(value)  # type: ignore[call-overload]
    except TypeError:
        path = None
    if not isinstance(path, str):
        raise ValueError(
            f"storage_path must be a str or a path (os.PathLike[str]), got {type(value).__name__}"
        )
    if not path:
        raise ValueError(
            "storage_path is empty: give a database file (':memory:' for a throwaway "
            "database, lost when the runtime stops)"
        )
    if "\0" in path:
        raise ValueError("storage_path contains a NUL character, which no file name can hold")
    return path


class ResourceLimits(BaseModel):
    """Limits for the whole runtime (``AgentRuntime(limits=...)``) or one agent.

    ``None`` means unlimited. Of per-agent limits given to ``register_agent``, the fields set
    explicitly override the runtime's for that agent; the agent-count, queue, mailbox and
    load limits only apply runtime-wide.

    Memory (resident set size) and CPU time are watched for ``process`` agents: crossing a
    ``soft_*`` limit records a RESOURCE_LIMIT_WARNING and calls the agent's ``on_error`` so
    it can shed load; crossing a hard limit stops its worker with RESOURCE_LIMIT_EXCEEDED
    and fails its task with :class:`~miminions.ResourceLimitExceeded`. While the machine's
    load average per CPU is above ``max_load_per_cpu``, agent starts wait. An agent whose
    self-reported usage reaches ``usage_budget`` is paused (F-27).
    """

    model_config = ConfigDict(extra="forbid")

    max_concurrent_agents: Count = 10
    max_memory_per_agent_mb: Megabytes | None = None
    soft_memory_per_agent_mb: Megabytes | None = None
    max_cpu_time_per_agent_seconds: PositiveSeconds | None = None
    soft_cpu_time_per_agent_seconds: PositiveSeconds | None = None
    max_load_per_cpu: PositiveAmount | None = None
    usage_budget: UsageBudget | None = None

    @model_validator(mode="after")
    def _soft_under_hard(self, info: ValidationInfo) -> ResourceLimits:
        """A soft limit above its hard one could never warn: the hard one stops it first.
        Limits read back from a database (validation context ``{"stored": True}``) were
        accepted when given, and still are: the database must open."""
        if isinstance(info.context, dict) and info.context.get("stored"):
            return self
        for name, soft, hard in (
            ("memory_per_agent_mb", self.soft_memory_per_agent_mb, self.max_memory_per_agent_mb),
            (
                "cpu_time_per_agent_seconds",
                self.soft_cpu_time_per_agent_seconds,
                self.max_cpu_time_per_agent_seconds,
            ),
        ):
            if soft is not None and hard is not None and soft > hard:
                raise ValueError(
                    f"soft_{name} ({soft:g}) is above max_{name} ({hard:g}): the warning "
                    "could never come before the stop"
                )
        return self

    def overridden_by(self, own: ResourceLimits | None) -> ResourceLimits:
        """These (runtime-wide) limits with the fields ``own`` (an agent's) set explicitly."""
        if own is None or not own.model_fields_set:
            return self
        return self.model_copy(update={name: getattr(own, name) for name in own.model_fields_set})

    max_task_queue_size: Count | None = None
    message_queue_max_size: Count = 1000
    task_timeout_seconds: PositiveSeconds | None = 300.0


class RestartPolicy(BaseModel):
    """How a crashed agent is restarted: at most ``max_restarts`` within ``window_seconds``,
    the *n*-th after ``backoff_base_seconds * 2 ** (n - 1)`` (capped at
    ``backoff_max_seconds``). Past that the agent stays ``failed`` with the reason."""

    model_config = ConfigDict(extra="forbid")

    max_restarts: Annotated[NonNegativeInt, Field(le=MAX_COUNT)] = 3
    window_seconds: PositiveSeconds = 60.0
    backoff_base_seconds: Seconds = 0.5
    backoff_max_seconds: Seconds = 30.0


class ProcessSettings(BaseModel):
    """Settings of ``process`` isolation (agents in worker processes).

    ``start_method``: ``forkserver`` (default where available) or ``spawn``. A worker that
    does not answer a heartbeat within ``heartbeat_timeout_seconds`` is killed and counts as
    crashed; so is one whose task does not stop within ``cancel_grace_seconds`` of being
    cancelled or timing out. A worker that does not exit ``stop_grace_seconds`` after
    ``on_stop`` gets SIGTERM, then SIGKILL after the same grace. Memory and CPU are sampled
    every ``usage_interval_seconds``. ``preload`` names modules the forkserver imports once
    so each worker start skips importing them (one whose top-level package cannot be
    found fails the runtime's start). ``prefetch``: the most tasks a busy agent's
    worker may be handed at once when no free agent can take them and more tasks wait than
    the other agents will take when they finish; it runs them one after another, and the
    next ones travel while the current one runs instead of one round trip per task. The
    window holds the task being run and the next, and more only while they fit in about
    5 ms of the agent's average run time: short tasks travel in batches, while a more
    urgent task never waits behind more than one long one taken ahead of it. A task
    handed over ahead of time is ``running`` (taken by that agent) with no ``started_at``
    yet; its start, its TASK_STARTED event and its timeout count from when the agent begins
    it. Such tasks go back to the queue when the agent pauses or stops, and without using
    up an attempt when its worker dies; one the worker had already begun (as the task
    ahead ended, before the runtime knew) and ran to its end is completed instead, its
    result kept, so that it does not run twice. 1 turns prefetching off.
    """

    model_config = ConfigDict(extra="forbid")

    start_method: str | None = None
    heartbeat_interval_seconds: PositiveSeconds = 1.0
    heartbeat_timeout_seconds: PositiveSeconds = 10.0
    cancel_grace_seconds: Seconds = 1.0
    stop_grace_seconds: Seconds = 2.0
    usage_interval_seconds: PositiveSeconds = 0.2
    preload: list[str] = Field(default_factory=list)
    prefetch: Count = 16


class RuntimeConfig(BaseModel):
    """Everything an :class:`~miminions.AgentRuntime` is configured with.

    ``aging_seconds_per_level``: a pending task gains one level of priority for every that
    many seconds it has been ready, so LOW work cannot starve. ``retry_backoff_*``: the
    delay before retry *n* is ``base * 2 ** (n - 1)`` capped at ``max``. An agent whose
    ``on_start`` takes longer than ``agent_start_timeout_seconds`` is failed.
    ``plugin_options`` is free-form configuration for third-party plugins, keyed by plugin.
    """

    model_config = ConfigDict(extra="forbid")

    storage_path: str = "miminions.db"
    limits: ResourceLimits = Field(default_factory=ResourceLimits)

    @field_validator("storage_path")
    @classmethod
    def _a_database_path(cls, value: str) -> str:
        return check_storage_path(value)

    aging_seconds_per_level: PositiveSeconds = 1.0
    retry_backoff_base_seconds: Seconds = 0.5
    retry_backoff_max_seconds: Seconds = 60.0
    shutdown_timeout_seconds: Seconds = 10.0
    agent_start_timeout_seconds: PositiveSeconds = 60.0
    default_isolation: str = "process"
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    group_budgets: dict[str, UsageBudget] = Field(default_factory=dict)
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    record_task_events: bool = True
    plugin_options: dict[str, JSONObject] = Field(default_factory=dict)


class AgentSpec(BaseModel):
    """How an agent was registered: enough to build (or rebuild) its host.

    ``target`` is the import path (``module:qualname``) of the agent class or function when
    it has one, so a worker process can import it instead of receiving pickled code.
    """

    model_config = ConfigDict(extra="forbid")

    agent_id: str
    name: str
    group: str | None = None
    isolation: str = "inline"
    kind: str = "class"
    target: str | None = None
    config: JSONObject = Field(default_factory=dict)
    limits: ResourceLimits | None = None


class AgentInstance(BaseModel):
    """The live status of one agent, as status queries report it.

    ``tasks_completed`` / ``tasks_failed`` count task *attempts* this agent ran in this
    runtime: an attempt that failed and was retried elsewhere counts as failed here.
    """

    model_config = ConfigDict(extra="forbid")

    agent_id: str
    name: str
    group: str | None = None
    status: AgentStatus = AgentStatus.REGISTERED
    status_reason: str | None = None
    isolation: str = "inline"
    process_id: int | None = None
    task_id: str | None = None
    restart_count: int = 0
    error_message: str | None = None
    tasks_completed: int = 0
    tasks_failed: int = 0
    tokens_used: int = 0
    cost_used: float = 0.0
    registered_at: datetime
    started_at: datetime | None = None


_READ_ONLY = (
    "an event's details are read-only (events are shared records of the log); "
    "change a copy: copy.deepcopy(event.details)"
)


class ReadOnlyDict(dict[str, Any]):
    """A dict that refuses changes: the ``details`` of the events a store hands out (with
    :func:`frozen_json`, the dicts and lists inside them too).

    A store may give the same :class:`Event` to every query that asks for it (the SQLite
    store keeps its newest events in memory), so a caller's change would show in every later
    answer. ``copy.deepcopy``, pickling and ``model_dump`` give plain, changeable dicts and
    lists all the way down; ``dict(d)``, ``d.copy()`` and ``copy.copy`` copy the top level
    only (what is inside stays read-only).
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(_READ_ONLY)

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        copied: dict[str, Any] = _plain_copy(self, lambda leaf: copy.deepcopy(leaf, memo))
        return copied

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (_plain_copy(self),)


class ReadOnlyList(list[Any]):
    """A list that refuses changes: a JSON array inside the details of an event a store
    hands out (see :class:`ReadOnlyDict`). Copies behave as that class's do."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(_READ_ONLY)

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        copied: list[Any] = _plain_copy(self, lambda leaf: copy.deepcopy(leaf, memo))
        return copied

    def __reduce__(self) -> tuple[type[list[Any]], tuple[list[Any]]]:
        return list, (_plain_copy(self),)


_JSON_SCALARS = (str, int, float, bool, type(None))


def _plain_copy(value: Any, copy_leaf: Callable[[Any], Any] | None = None) -> Any:
    """A copy of read-only details (see :func:`frozen_json`) whose dicts and lists are plain
    ones, walked with a stack of its own, so that read-only levels (each would cost Python
    frames) do not make copying or pickling deep details fail sooner than for plain ones.
    A container met twice (shared, or a cycle in details built by hand) is copied once;
    values other than JSON scalars go through ``copy_leaf`` when given, else are shared."""
    copies: dict[int, Any] = {}

    def fresh(item: Any) -> Any:
        copied = dict(item) if isinstance(item, dict) else list(item)
        copies[id(item)] = copied
        stack.append(copied)
        return copied

    stack: list[Any] = []
    root = fresh(value)
    while stack:
        container = stack.pop()
        pairs = container.items() if type(container) is dict else enumerate(container)
        for key, item in pairs:
            if isinstance(item, dict | list):
                known = copies.get(id(item))
                container[key] = known if known is not None else fresh(item)
            elif copy_leaf is not None and not isinstance(item, _JSON_SCALARS):
                container[key] = copy_leaf(item)
    return root


def frozen_json(value: Any) -> Any:
    """``value``, a JSON value nobody else holds (just parsed), with every dict in it made a
    :class:`ReadOnlyDict` and every list a :class:`ReadOnlyList`. Walks with a stack of its
    own, not with recursion: no depth limit."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return value
    if kind is dict and not any(type(v) is dict or type(v) is list for v in value.values()):
        return ReadOnlyDict(value)  # the usual details: flat
    frozen: dict[int, Any] = {}  # id of a container -> its read-only copy
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, children_done = stack.pop()
        items = node.values() if type(node) is dict else node
        if not children_done:
            stack.append((node, True))
            stack.extend((v, False) for v in items if type(v) is dict or type(v) is list)
            continue
        if type(node) is dict:
            frozen[id(node)] = ReadOnlyDict({k: frozen.get(id(v), v) for k, v in node.items()})
        else:
            frozen[id(node)] = ReadOnlyList([frozen.get(id(v), v) for v in node])
    return frozen[id(value)]


class Event(BaseModel):
    """One entry of the event log: a read-only record (the model is frozen).

    Events read from a store may be shared between callers: their ``details`` are a
    :class:`ReadOnlyDict` (copy it to change it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: int | None = None
    timestamp: datetime
    event_type: EventType
    severity: Severity = Severity.INFO
    agent_id: str | None = None
    task_id: str | None = None
    details: JSONObject = Field(default_factory=dict)


class EventRecord(NamedTuple):
    """An event as the runtime hands it to the store (``Store.put_event``): an
    :class:`Event` without its id, stamped in Unix seconds.

    A plain tuple rather than a model because every task makes three events, and building a
    model for each one cost a fifth of the runtime's time per task: the store makes the
    row it needs, and :meth:`to_event` makes the model for whoever wants one.
    """

    timestamp: float
    event_type: EventType
    severity: Severity
    agent_id: str | None
    task_id: str | None
    details: JSONObject

    def to_event(self, event_id: int | None = None) -> Event:
        """The :class:`Event` this record stands for (``details`` is shared, not copied)."""
        return fast_construct(
            Event,
            {
                "event_id": event_id,
                "timestamp": datetime.fromtimestamp(self.timestamp, UTC),
                "event_type": self.event_type,
                "severity": self.severity,
                "agent_id": self.agent_id,
                "task_id": self.task_id,
                "details": self.details,
            },
        )


class AgentMessage(BaseModel):
    """One message between agents (or from the runtime, ``sender_id`` None).

    ``recipient_id`` is the agent whose mailbox holds it (None: the runtime, for a reply to
    ``rt.request``); a multicast, broadcast or topic message is one message per recipient
    with the same ``message_type`` and ``data``.
    ``correlation_id`` links a reply to its request (it is the request's ``message_id``);
    ``created_at`` is when it was sent (made and handed to the bus: delivery latencies count
    from there); ``expires_at`` ends a message nobody received in time (its TTL);
    ``ttl_remaining_seconds`` holds the TTL left while the recipient is paused.
    """

    model_config = ConfigDict(extra="forbid")

    message_id: str
    sender_id: str | None = None
    recipient_id: str | None
    message_type: str
    data: Any = None
    topic: str | None = None
    correlation_id: str | None = None
    is_reply: bool = False
    created_at: datetime
    expires_at: datetime | None = None
    #: While the recipient is paused: the TTL left (``expires_at`` is then None); it counts
    #: again from the resume, also after a runtime restart.
    ttl_remaining_seconds: float | None = None
    #: The trace the message belongs to (see ``Task.trace_context``): the sender's, which a
    #: tracing plugin may rewrite to its send span as the runtime relays the message.
    trace_context: dict[str, str] | None = None


def message_to_json(message: AgentMessage) -> JSONObject:
    """``message`` as JSON (timestamps in ISO 8601), to store or send to a worker.

    Not ``model_dump``: pydantic's serializer gives up on data nested more than about 250
    levels deep, which a payload may be (it is checked as ``json`` encodes it), and a
    message accepted at the send must not be lost on its way. ``data`` is copied.
    """
    fields = dict(message.__dict__)
    fields["data"] = copy_json(fields["data"])
    for key in ("created_at", "expires_at"):
        value = fields[key]
        if value is not None:
            fields[key] = value.isoformat()
    if fields["trace_context"] is not None:
        fields["trace_context"] = dict(fields["trace_context"])
    return fields


class DeadLetter(BaseModel):
    """Something that could not be done and was set aside for a person to look at (F-28)."""

    model_config = ConfigDict(extra="forbid")

    dead_letter_id: str
    kind: str
    ref_id: str
    reason: str
    payload: JSONObject = Field(default_factory=dict)
    created_at: datetime
    requeued_at: datetime | None = None


class HoldKind(enum.StrEnum):
    """Why a task is not running yet (see :meth:`AgentRuntime.explain`)."""

    DEPENDENCY = "dependency"
    QUEUE_PAUSED = "queue_paused"
    AGENT_PAUSED = "agent_paused"
    NO_AGENT = "no_agent"
    AGENTS_BUSY = "agents_busy"
    CONCURRENCY_LIMIT = "concurrency_limit"
    RETRY_BACKOFF = "retry_backoff"
    TASKS_AHEAD = "tasks_ahead"
    RUNTIME_STOPPED = "runtime_stopped"


class HoldReason(BaseModel):
    """One thing that holds a task back, with the ids involved."""

    kind: HoldKind
    message: str
    related_ids: list[str] = Field(default_factory=list)


class TaskExplanation(BaseModel):
    """The answer to "why isn't it running?" for one task (F-24)."""

    task_id: str
    status: TaskStatus
    priority: int
    effective_priority: int
    reasons: list[HoldReason] = Field(default_factory=list)
    queue_position: int | None = None
    estimated_wait_seconds: float | None = None

    @property
    def summary(self) -> str:
        """One readable sentence per reason, or what the task is doing."""
        if not self.reasons:
            return f"task {self.task_id} is {self.status.value}"
        return "; ".join(reason.message for reason in self.reasons)


class QueueStatus(BaseModel):
    """Counts of the task queue. ``pending_by_priority`` counts pending tasks (ready, or
    waiting out a retry backoff) per base priority."""

    total: int
    pending: int
    blocked: int
    running: int
    completed: int
    failed: int
    cancelled: int
    paused: bool
    dead_letters: int
    pending_by_priority: dict[int, int] = Field(default_factory=dict)
    max_size: int | None = None


class Capacity(BaseModel):
    """Usage, limits and free room of the runtime."""

    max_concurrent_agents: int
    active_agents: int
    free_agent_slots: int
    queued_agent_starts: int
    max_task_queue_size: int | None
    queued_tasks: int
    free_task_slots: int | None
    message_queue_max_size: int


class Metrics(BaseModel):
    """Runtime-wide counters and timings since this runtime started."""

    uptime_seconds: float
    tasks_submitted: int
    tasks_completed: int
    tasks_failed: int
    tasks_cancelled: int
    tasks_retried: int
    task_duration_mean_seconds: float | None
    task_duration_p95_seconds: float | None
    agents_by_status: dict[str, int]
    events_recorded: int
    messages_sent: int = 0
    messages_delivered: int = 0
    message_latency_mean_seconds: float | None = None
    message_latency_p95_seconds: float | None = None


__all__ = [
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "AgentInstance",
    "AgentMessage",
    "AgentSpec",
    "AgentStatus",
    "Capacity",
    "DeadLetter",
    "Event",
    "EventType",
    "HoldKind",
    "HoldReason",
    "JSONObject",
    "Metrics",
    "Priority",
    "ProcessSettings",
    "QueueStatus",
    "ReadOnlyDict",
    "ReadOnlyList",
    "ResourceLimits",
    "RestartPolicy",
    "RuntimeConfig",
    "Severity",
    "Task",
    "TaskExplanation",
    "TaskStatus",
    "UsageBudget",
    "frozen_json",
]
