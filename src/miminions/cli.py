"""The ``miminions`` command: run the demo, inspect a runtime database, list plugins (F-23).

    miminions demo [--db PATH] [--quiet] [--disable NAME ...]
    miminions status --db PATH
    miminions tasks --db PATH [--status S] [--limit N]
    miminions events --db PATH [--type T ...] [--agent ID] [--task ID] [--severity S]
                     [--since ISO] [--until ISO] [--limit N] [--format text|jsonl|csv|json]
                     [--output FILE]
    miminions top --db PATH [--interval SECONDS] [--once | --frames N] [--events N]
    miminions plugins [--disable NAME ...]

The read commands open the database read-only, so they are safe on a database a running
runtime is writing. Usage errors (a missing database, an unknown status, event type or
severity) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO, TypeVar

from miminions import AgentRuntime, __version__, run
from miminions.demo import (
    DEMO_CONFIG,
    cut_to_columns,
    display_width,
    format_summary,
    format_table,
    priority_label,
    run_demo,
    table_cell,
)
from miminions.kernel.errors import MiminionsError
from miminions.kernel.export import EXPORT_FORMATS, dump_events, is_database_file
from miminions.kernel.interfaces import EventQuery, StoredAgent
from miminions.kernel.models import Event, EventType, Severity, Task, TaskStatus
from miminions.kernel.ownership import unclean
from miminions.kernel.plugins import BUILTIN_PLUGINS, ENTRY_POINT_GROUP
from miminions.kernel.runtime import RUN_META_KEY, build_event_query, live_owner
from miminions.kernel.validation import check_utf8
from miminions.plugins.sqlite_store import SQLiteStore

PROG = "miminions"
DEFAULT_DB = "miminions.db"
RECENT_EVENTS = 10
TOP_INTERVAL_SECONDS = 2.0
TEXT_EVENTS_LIMIT = 50
DETAILS_WIDTH = 70
ERROR_WIDTH = 60
EXIT_USAGE = 2
#: Ids up to this long are shown whole in tables; longer ones by their tail.
SHORT_ID_WIDTH = 12
#: How many trailing characters of a longer id are shown (after ``..``).
SHORT_ID_TAIL = SHORT_ID_WIDTH - 2
# The latest of these says whether the queue is paused (the pause survives restarts).
_QUEUE_EVENTS = [EventType.QUEUE_PAUSED, EventType.QUEUE_RESUMED]

_T = TypeVar("_T")


class CliError(Exception):
    """A usage error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- small helpers
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _iso_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (e.g. 2025-05-01 or 2025-05-01T12:30:00Z)"
        ) from None


def _parse_status(value: str | None) -> TaskStatus | None:
    if value is None:
        return None
    try:
        return TaskStatus(value.lower())
    except ValueError:
        choices = ", ".join(status.value for status in TaskStatus)
        raise CliError(f"status {value!r} is not one of: {choices}") from None


def short_id(value: str | None) -> str:
    """An agent or task id cut to fit a table column, keeping the part that tells ids apart.

    Generated task ids begin with their creation time (14 hex digits of microseconds, see
    :func:`miminions.kernel.task_input.new_task_id`), so tasks created within seconds of
    each other share a long prefix and differ only in their random tail. An id longer than
    :data:`SHORT_ID_WIDTH` is therefore shown as ``..`` and its last
    :data:`SHORT_ID_TAIL` characters (a generated id's whole random part; any part of a
    random agent id), which can be searched for in the full ids ``miminions tasks`` lists.
    Shorter ids, such as ones the caller chose, are shown whole; no id is ``-``.
    """
    if not value:
        return "-"
    return value if len(value) <= SHORT_ID_WIDTH else ".." + value[-SHORT_ID_TAIL:]


def _clip(text: str, width: int) -> str:
    """``text`` as a table cell (see :func:`table_cell`), cut to ``width`` columns."""
    text = table_cell(text)  # escaped first, so the cut counts what is shown
    return text if display_width(text) <= width else cut_to_columns(text, width - 3) + "..."


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _print(text: str = "", out: TextIO | None = None) -> None:
    print(text, file=out or sys.stdout)


# --------------------------------------------------------------------------- database access
def check_database(db: str) -> Path:
    """The path of an existing database file; a missing one is a :class:`CliError`."""
    path = Path(db).expanduser()
    if not path.exists():
        raise CliError(
            f"database {db!r} does not exist (create one with: miminions demo --db {db})"
        )
    if not path.is_file():
        raise CliError(f"{db!r} is not a database file")
    return path


@contextlib.asynccontextmanager
async def open_database(path: Path) -> AsyncIterator[SQLiteStore]:
    """Open the database at ``path`` (checked by :func:`check_database`) read-only."""
    store = await SQLiteStore.open_readonly(str(path))
    try:
        yield store
    finally:
        await store.close()


def agent_names(agents: Sequence[StoredAgent]) -> dict[str, str]:
    """``{agent_id: name}`` of the stored agents."""
    return {agent.agent_id: agent.name for agent in agents}


def format_events(events: Sequence[Event], names: dict[str, str]) -> str:
    """Events as a text table (times in UTC, agents by name, task ids shortened)."""
    if not events:
        return "  (no events)"
    rows = [
        [
            event.event_id if event.event_id is not None else "-",
            _when(event.timestamp),
            event.event_type.value,
            event.severity.value,
            names.get(event.agent_id or "", short_id(event.agent_id)),
            short_id(event.task_id),
            _clip(
                json.dumps(event.details, separators=(",", ":"), ensure_ascii=False), DETAILS_WIDTH
            )
            if event.details
            else "",
        ]
        for event in events
    ]
    headers = ["id", "time (UTC)", "type", "severity", "agent", "task", "details"]
    return format_table(headers, rows)


# --------------------------------------------------------------------------- status
def runtime_running(meta: Any, store: SQLiteStore) -> bool:
    """Whether a runtime has the database open now.

    The database's lock tells (the run record, ``meta``, only where the lock cannot be
    asked): the record alone can mislead both ways. The pid of a runtime that crashed may
    belong to another process by now; the pid of a live runtime in another pid namespace
    (a container sharing the database through a volume) is not visible from here.
    """
    held = store.lock_held()
    if held is None:
        return live_owner(meta) is not None
    return held


def _runtime_line(meta: Any, running: bool) -> str:
    """Whether a runtime has the database open (``running``, from
    :func:`runtime_running`), told with the run record it keeps."""
    if not isinstance(meta, dict):
        return (
            "running (it has not recorded itself yet)"
            if running
            else "no runtime has run on this database yet"
        )
    pid = meta.get("pid")
    if running and unclean(meta):
        seen = "" if live_owner(meta) is not None else ", a process not visible from here"
        return f"running (pid {pid}{seen}, started {_unix_time(meta.get('started_at'))} UTC)"
    if running:  # the lock is held, the record not rewritten yet: a runtime is starting
        return "running (starting)"
    if unclean(meta):
        return f"not running: pid {pid} did not stop cleanly; the next start recovers its work"
    return f"stopped cleanly at {_unix_time(meta.get('stopped_at'))} UTC"


def _queue_line(last: Sequence[Event]) -> str:
    """Whether the live runtime's queue is paused, from its latest queue event."""
    if last and last[-1].event_type is EventType.QUEUE_PAUSED:
        return f"paused since {_when(last[-1].timestamp)} UTC: no new task is handed out"
    return "handing out tasks"


def _unix_time(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _when(datetime.fromtimestamp(value, UTC))
    return "?"


def format_agents(agents: Sequence[StoredAgent]) -> str:
    """Stored agents as a text table."""
    if not agents:
        return "  (no agents)"
    rows = [
        [
            agent.name,
            agent.spec.group or "-",
            agent.status.value,
            agent.spec.isolation,
            agent.agent_id,
        ]
        for agent in agents
    ]
    return format_table(["name", "group", "status", "isolation", "id"], rows)


def format_counts(counts: dict[str, int]) -> str:
    """Task counts for every status (zeros included) and the total, as a two-line table."""
    headers = [status.value for status in TaskStatus] + ["total"]
    row = [counts.get(status.value, 0) for status in TaskStatus] + [sum(counts.values())]
    return format_table(headers, [row])


async def _status(path: Path, out: TextIO) -> int:
    async with open_database(path) as store:
        meta = await store.get_meta(RUN_META_KEY)
        agents = await store.load_agents()
        counts = await store.count_tasks_by_status()
        letters = [d for d in await store.load_dead_letters() if d.requeued_at is None]
        recent = await store.query_events(build_event_query(limit=RECENT_EVENTS, newest=True))
        queue = await store.query_events(build_event_query(_QUEUE_EVENTS, limit=1, newest=True))
        running = runtime_running(meta, store)
    _print(f"Database  {path}", out)
    _print(f"Runtime   {_runtime_line(meta, running)}", out)
    if running:
        _print(f"Queue     {_queue_line(queue)}", out)
    _print(f"\nAgents ({len(agents)})", out)
    _print(format_agents(agents), out)
    _print("\nTasks", out)
    _print(format_counts(counts), out)
    _print(f"  dead letters waiting: {len(letters)}", out)
    _print(f"\nRecent events (last {RECENT_EVENTS})", out)
    _print(format_events(recent, agent_names(agents)), out)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``miminions status``: agents, task counts and recent events of a database."""
    return asyncio.run(_status(check_database(args.db), sys.stdout))


# --------------------------------------------------------------------------- tasks
def _attempts(task: Task) -> int:
    """Attempts made: the retries used, plus the current attempt once it has begun. A
    pending task waiting out a retry's backoff has not begun that retry (its ``started_at``
    is still the failed attempt's)."""
    begun = task.started_at is not None and task.status is not TaskStatus.PENDING
    return task.retry_count + (1 if begun else 0)


def format_tasks(tasks: Sequence[Task], names: dict[str, str]) -> str:
    """Tasks as a text table."""
    if not tasks:
        return "  (no tasks)"
    rows = [
        [
            task.task_id,
            task.name,
            priority_label(task.priority),
            task.status.value,
            _attempts(task),
            names.get(task.assigned_agent_id or "", short_id(task.assigned_agent_id)),
            _clip(task.error_message, ERROR_WIDTH) if task.error_message else "",
        ]
        for task in tasks
    ]
    headers = ["id", "name", "priority", "status", "attempts", "agent", "error"]
    return format_table(headers, rows)


async def _tasks(path: Path, status: TaskStatus | None, limit: int, out: TextIO) -> int:
    async with open_database(path) as store:
        tasks = await store.list_tasks(None if status is None else status.value, limit)
        names = agent_names(await store.load_agents())
    shown = f" with status {status.value}" if status is not None else ""
    _print(f"Tasks{shown}, newest first (at most {limit})", out)
    _print(format_tasks(tasks, names), out)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """``miminions tasks``: a table of stored tasks."""
    status = _parse_status(args.status)
    return asyncio.run(_tasks(check_database(args.db), status, args.limit, sys.stdout))


# --------------------------------------------------------------------------- events
def _resolve_agent(value: str | None, agents: Sequence[StoredAgent]) -> str | None:
    """An agent given by name becomes its id; anything else is taken as an id."""
    if value is None:
        return None
    by_name = {agent.name: agent.agent_id for agent in agents}
    return by_name.get(value, value)


async def _read_events(
    path: Path, query: EventQuery, agent: str | None
) -> tuple[list[Event], list[StoredAgent]]:
    async with open_database(path) as store:
        agents = await store.load_agents()
        agent_id = _resolve_agent(agent, agents)
        if agent_id is not None:
            query = query.model_copy(update={"agent_id": agent_id})
        return await store.query_events(query), agents


@contextlib.contextmanager
def _output(path: str | None, database: Path) -> Iterator[TextIO]:
    """The file at ``path`` (created or overwritten), or stdout.

    Never one of ``database``'s own files (a read command must not destroy what it
    reads). An error writing it (a full disk) is a one-line error naming it.
    """
    if path is None:
        yield sys.stdout
        return
    if is_database_file(path, database):
        raise CliError(f"--output {path!r} is the database {str(database)!r} or one of its files")
    try:
        handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None
    try:
        with handle:
            yield handle
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def cmd_events(args: argparse.Namespace) -> int:
    """``miminions events``: query the event log; print a table or export it."""
    fmt: str = args.format
    limit = args.limit if args.limit is not None else (TEXT_EVENTS_LIMIT if fmt == "text" else None)
    # Filters are checked first: a bad value is a usage error whatever the database.
    # Names in any case, as --status of tasks takes them (TASK_FAILED, WARNING).
    types = None if args.types is None else [name.lower() for name in args.types]
    severity = None if args.severity is None else args.severity.lower()
    query = build_event_query(
        types, None, args.task, severity, args.since, args.until, limit, newest=True
    )
    if args.agent is not None:
        check_utf8(args.agent, "--agent")  # a name or an id: compared with stored text
    path = check_database(args.db)
    events, agents = asyncio.run(_read_events(path, query, args.agent))
    with _output(args.output, path) as out:
        if fmt == "text":
            _print(format_events(events, agent_names(agents)), out)
        else:
            dump_events(events, out, fmt)
    if args.output is not None:
        _print(f"wrote {len(events)} event(s) to {args.output} ({fmt})", sys.stderr)
    return 0


# --------------------------------------------------------------------------- top
def cmd_top(args: argparse.Namespace) -> int:
    """``miminions top``: a live, refreshing view of a runtime database; Ctrl-C exits 0
    (SIGTERM or SIGHUP: 128 + the signal's number, the terminal given back all the same)."""
    # Imported here: miminions.top builds on this module's database helpers.
    from miminions.top import run_top

    frames: int | None = 1 if args.once else args.frames
    return run_top(
        check_database(args.db), interval=args.interval, frames=frames, events=args.events
    )


# --------------------------------------------------------------------------- plugins
def _plugin_source(name: str, from_entry_points: set[str]) -> str:
    if name in BUILTIN_PLUGINS:
        return "built-in"
    if name in from_entry_points:
        return "entry point"
    return "other"


def cmd_plugins(args: argparse.Namespace) -> int:
    """``miminions plugins``: the plugins a runtime would load and the hooks each implements."""
    disabled: list[str] = args.disable
    # Built the way AgentRuntime builds it, with the same checks: disabling a plugin that
    # nothing replaces (e.g. the store) is the same one-line error here as there.
    pm = AgentRuntime(disable=disabled).plugin_manager
    from_entry_points = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    rows = [
        [name, _plugin_source(name, from_entry_points), ", ".join(pm.hooks_of(name)) or "-"]
        for name in pm.plugin_names()
    ]
    _print(f"Plugins ({len(rows)} loaded)")
    _print(format_table(["name", "source", "hooks"], rows))
    if disabled:
        _print(f"\nDisabled: {', '.join(disabled)}")
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """``miminions demo``: run the built-in workload; exit 0 when every task completed."""
    db = Path(args.db).expanduser().resolve()
    if not db.parent.is_dir():
        raise CliError(f"directory {str(db.parent)!r} does not exist")
    if db.exists() and not db.is_file():
        raise CliError(f"{str(db)!r} is not a database file")
    disable = list(args.disable)
    result = run(
        run_demo(db, out=sys.stdout, quiet=args.quiet, disable=disable),
        config=DEMO_CONFIG,
        disable=disable,
    )
    _print(format_summary(result))
    return 0 if result.ok else 1


# --------------------------------------------------------------------------- the parser
def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        required=True,
        metavar="PATH",
        help="the runtime's SQLite database (opened read-only; a live runtime may be using it)",
    )


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the built-in demo workload (a few seconds)",
        description=(
            "Run five in-process agents in two groups (research, writers) through a "
            "dependency graph of ten tasks with HIGH/MEDIUM/LOW priorities. One task fails "
            "once and is retried, a writer and the queue are paused and resumed, and "
            "explain() shows why a blocked task waits. Running it again on the same "
            "database is fine: the agents keep their ids and the summary covers this run."
        ),
    )
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH",
        help=f"database to write (created if missing; default: ./{DEFAULT_DB})",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only the summary, no live progress"
    )
    _add_disable(parser)
    parser.set_defaults(handler=cmd_demo)


def _add_status(commands: Any) -> None:
    parser = commands.add_parser(
        "status",
        help="show agents, task counts and recent events of a database",
        description=(
            "Show whether a runtime is using the database, every agent (name, group, status, "
            f"isolation), task counts by status and the {RECENT_EVENTS} most recent events."
        ),
    )
    _add_db(parser)
    parser.set_defaults(handler=cmd_status)


def _add_tasks(commands: Any) -> None:
    statuses = ", ".join(status.value for status in TaskStatus)
    parser = commands.add_parser(
        "tasks",
        help="list stored tasks, newest first",
        description="List stored tasks, newest first: id, name, priority, status, attempts, "
        "agent and last error.",
    )
    _add_db(parser)
    parser.add_argument("--status", metavar="S", help=f"only tasks in this status ({statuses})")
    parser.add_argument(
        "--limit",
        type=_positive_int,
        default=100,
        metavar="N",
        help="at most N tasks (default 100)",
    )
    parser.set_defaults(handler=cmd_tasks)


def _add_events(commands: Any) -> None:
    parser = commands.add_parser(
        "events",
        help="query or export the event log",
        description=(
            "Query the event log. Every given filter must match. 'text' prints a table of the "
            f"{TEXT_EVENTS_LIMIT} most recent matches unless --limit says otherwise; jsonl, "
            "csv and json export every match (or the --limit most recent), oldest first."
        ),
        epilog="event types: " + ", ".join(sorted(t.value for t in EventType)),
    )
    _add_db(parser)
    parser.add_argument(
        "--type",
        dest="types",
        nargs="+",
        action="extend",
        metavar="T",
        help="only these event types (e.g. task_failed agent_paused); may repeat",
    )
    parser.add_argument("--agent", metavar="ID", help="only events of this agent (id or name)")
    parser.add_argument("--task", metavar="ID", help="only events of this task (full id)")
    parser.add_argument(
        "--severity",
        metavar="S",
        help="minimum severity (" + ", ".join(s.value for s in Severity) + ")",
    )
    parser.add_argument(
        "--since",
        type=_iso_time,
        metavar="ISO",
        help="only events at or after this time (ISO-8601; without a zone it is UTC)",
    )
    parser.add_argument(
        "--until",
        type=_iso_time,
        metavar="ISO",
        help="only events at or before this time (ISO-8601; without a zone it is UTC)",
    )
    parser.add_argument(
        "--limit", type=_positive_int, metavar="N", help="only the N most recent matching events"
    )
    parser.add_argument(
        "--format",
        choices=["text", *sorted(EXPORT_FORMATS)],
        default="text",
        help="output format (default: text)",
    )
    parser.add_argument(
        "--output", metavar="FILE", help="write to FILE (overwritten) instead of stdout"
    )
    parser.set_defaults(handler=cmd_events)


def _add_top(commands: Any) -> None:
    parser = commands.add_parser(
        "top",
        help="watch a runtime database live: agents, queue, throughput, events",
        description=(
            "Show a live view of a runtime database, refreshed every --interval seconds: "
            "whether a runtime owns it, each agent's status and current task, unfinished "
            "tasks by priority and status, throughput (tasks completed per second between "
            "two refreshes) and the most recent events. The database is only read, so a "
            "live runtime is not slowed down. On a terminal the view is redrawn in place; "
            "otherwise frames are printed one after another. Ctrl-C exits."
        ),
    )
    _add_db(parser)
    parser.add_argument(
        "--interval",
        type=_positive_seconds,
        default=TOP_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between refreshes (default {TOP_INTERVAL_SECONDS:g})",
    )
    count = parser.add_mutually_exclusive_group()
    count.add_argument("--once", action="store_true", help="print one frame and exit")
    count.add_argument(
        "--frames", type=_positive_int, metavar="N", help="print N frames, then exit"
    )
    parser.add_argument(
        "--events",
        type=_positive_int,
        default=RECENT_EVENTS,
        metavar="N",
        help=f"show the N most recent events (default {RECENT_EVENTS})",
    )
    parser.set_defaults(handler=cmd_top)


def _add_plugins(commands: Any) -> None:
    parser = commands.add_parser(
        "plugins",
        help="list the plugins a runtime loads and their hooks",
        description=(
            "List the plugins an AgentRuntime would load: the built-ins and those from the "
            f"'{ENTRY_POINT_GROUP}' entry-point group, each with the hooks it implements."
        ),
    )
    _add_disable(parser)
    parser.set_defaults(handler=cmd_plugins)


def _add_disable(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disable",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="leave these plugins out, as AgentRuntime(disable=[...]) would; may repeat",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``miminions`` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run many AI agents side by side: run the demo, inspect or watch a "
        "runtime database (agents, queue, events), export events, list plugins.",
        epilog="Start with 'miminions demo', then 'miminions status --db miminions.db'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_demo, _add_status, _add_tasks, _add_events, _add_top, _add_plugins):
        add(commands)
    return parser


# --------------------------------------------------------------------------- entry point
def _fail(message: str) -> int:
    _print(f"{PROG}: error: {message}", sys.stderr)
    return EXIT_USAGE


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _print(str(code), sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``miminions`` command with ``argv`` (default: ``sys.argv[1:]``); return the
    exit status (0 success, 1 the demo had failures, 2 usage error, 130 interrupted)."""
    _reopen_closed_std_streams()
    _replace_unencodable_output()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own usage errors
        return _exit_code(exc.code)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = handler(args)
        if sys.stdout is not None:  # None: started with stdout closed (>&-)
            sys.stdout.flush()  # an output that cannot be written fails here, not at exit
        return code
    except (CliError, MiminionsError) as exc:
        return _fail(str(exc))
    except sqlite3.DatabaseError as exc:
        db = getattr(args, "db", "?")
        return _fail(f"cannot read database {db!r}: {exc} (is it a miminions database?)")
    except KeyboardInterrupt:
        _print("interrupted", sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        _silence_stdout()
        return 1
    except OSError as exc:  # writing the output: a full disk, an I/O error
        _silence_stdout()
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"cannot write the output{where}: {exc.strerror or exc}")
        return 1


def _reopen_closed_std_streams() -> None:
    """Point a closed standard descriptor (``>&-``: cron, a daemon) at /dev/null: Python has
    no ``sys.stdout`` then, and libuv (uvloop) aborts when a descriptor it opens takes one
    of those numbers."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115


def _replace_unencodable_output() -> None:
    """Write what the terminal's encoding cannot hold (a Latin-1 locale, a name in CJK) as
    backslash escapes instead of failing with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # not on captured output
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so flushing at exit does not raise BrokenPipeError again."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not a real file (captured output)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
