"""Event log export formats: ``jsonl`` (one event per line), ``csv`` and ``json`` (an array).

Every format carries the same fields; ``details`` is a JSON object (a JSON string in csv).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from miminions.kernel.models import Event

EXPORT_FORMATS = frozenset({"jsonl", "csv", "json"})
FIELDS = ("event_id", "timestamp", "event_type", "severity", "agent_id", "task_id", "details")


def event_record(event: Event) -> dict[str, Any]:
    """The JSON-ready form of one event (ISO-8601 timestamp, enum values as strings)."""
    return event.model_dump(mode="json")


def dump_events(events: Iterable[Event], out: IO[str], format: str) -> None:
    """Write ``events`` to the open text stream ``out`` in ``format``."""
    if format == "jsonl":
        for event in events:
            out.write(json.dumps(event_record(event), separators=(",", ":")) + "\n")
    elif format == "json":
        json.dump([event_record(event) for event in events], out, indent=2)
        out.write("\n")
    elif format == "csv":
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        for event in events:
            row = event_record(event)
            row["details"] = json.dumps(row["details"], separators=(",", ":"))
            writer.writerow(row)
    else:
        raise ValueError(f"unknown export format {format!r}; use one of {sorted(EXPORT_FORMATS)}")


def is_database_file(path: str | os.PathLike[str], database: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names ``database`` or one of the files SQLite and the store keep
    beside it (``-wal``, ``-shm``, ``-lock``), by any of their names: writing an export
    there would destroy what it was read from."""
    real = os.path.realpath(database)  # the -wal and -shm files are beside the real file
    return any(
        os.path.realpath(path) == real + suffix or _same_file(path, real + suffix)
        for suffix in ("", "-wal", "-shm", "-lock")
    )


def _same_file(a: str | os.PathLike[str], b: str) -> bool:
    """True when ``a`` and ``b`` name the same existing file (any of its names)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_events(path: Path, events: Iterable[Event], format: str) -> None:
    """Write ``events`` to the file ``path`` in ``format`` (overwriting it)."""
    with path.open("w", encoding="utf-8", newline="") as out:
        dump_events(events, out, format)
