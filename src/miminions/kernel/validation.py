"""Checking user-facing arguments: one helper per kind of value, with clear errors.

Every public call validates with these before changing anything, so a rejected call leaves
no trace (R-04).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from miminions.kernel.errors import ValidationError, shown
from miminions.kernel.interfaces import EventQuery
from miminions.kernel.models import MAX_SECONDS, EventType, Severity

_E = TypeVar("_E")


def check_utf8(text: str, what: str) -> int:
    """Raise ValidationError unless ``text`` can be encoded as UTF-8; return its size in bytes.

    Everything the runtime stores or sends to a worker is UTF-8, and a Python string may
    hold lone surrogates that have no UTF-8 form: ``os.fsdecode`` and ``errors=
    "surrogateescape"`` turn undecodable bytes into them (``"report-\\udcff.txt"``). Such
    a string must be rejected when it is passed in, before anything changed, not when the
    store writes it. ASCII text (the common case) is known to be valid without encoding.
    """
    if text.isascii():  # O(1): CPython keeps the flag on the string
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start]
        raise ValidationError(
            f"{what} cannot be encoded as UTF-8: it contains the lone surrogate {bad!r} "
            "(what os.fsdecode or errors='surrogateescape' make of undecodable bytes); "
            "decode the bytes with errors='replace', or pass them base64-encoded"
        ) from None


#: The longest name of a group, topic or message type (it travels with every message).
MAX_NAME = 256


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is True or False; anything else (a string such as "no", None, 0) is
    a ValidationError rather than read by its truth."""
    if not isinstance(value, bool):
        raise ValidationError(f"{what} must be True or False, got {shown(value)}")
    return value


def check_name(value: Any, what: str) -> None:
    """Raise unless ``value`` is a non-empty string of at most MAX_NAME characters that
    can be stored (a group, topic or message type name)."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ValidationError(f"{what} must be a non-empty string of at most {MAX_NAME} characters")
    check_utf8(value, what)


def escape_non_utf8(text: str) -> str:
    """``text`` with every character that has no UTF-8 form (a lone surrogate) escaped as
    ``\\udcff``. For text that must be stored or sent whatever it holds — error messages
    and tracebacks, which quote the bad input they complain about."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode()


def check_seconds(
    value: Any, what: str = "timeout_seconds", *, allow_none: bool = True, positive: bool = False
) -> float | None:
    """A duration in seconds: a real number >= 0 (> 0 with ``positive``), or None when allowed."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if not ok or value < 0 or (positive and value == 0):
        kind = "a positive number of seconds" if positive else "a number of seconds >= 0"
        also = " or None" if allow_none else ""
        raise ValidationError(f"{what} must be {kind}{also}, got {shown(value)}")
    if value > MAX_SECONDS:  # infinity too
        also = "; use None for no limit" if allow_none else ""
        raise ValidationError(
            f"{what} must be at most {MAX_SECONDS:,.0f} seconds (100 years), "
            f"got {shown(value)}{also}"
        )
    return float(value)


def check_limit(value: Any, what: str = "limit") -> int | None:
    """A positive integer count, or None for no limit."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValidationError(f"{what} must be a positive integer or None, got {shown(value)}")
    return value


def parse_enum(enum_type: type[_E], value: Any, what: str) -> _E | None:
    """``value`` as a member of ``enum_type`` (by member or value); None stays None."""
    if value is None or isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)  # type: ignore[call-arg]
    except ValueError:
        choices = ", ".join(str(member.value) for member in enum_type)  # type: ignore[attr-defined]
        raise ValidationError(f"{what} {shown(value)} is not one of: {choices}") from None


def build_event_query(
    event_type: EventType | str | Sequence[EventType | str] | None = None,
    agent_id: str | None = None,
    task_id: str | None = None,
    severity: Severity | str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = 100,
    newest: bool = False,
    after_id: int | None = None,
) -> EventQuery:
    """Turn user-facing event filters into an :class:`EventQuery`, with clear errors.

    :raises ValidationError: a filter of the wrong type or value (an id that is not a
        string, or one with no UTF-8 form, which no stored event can hold).
    """
    types: list[EventType] | None = None
    if event_type is not None:
        if isinstance(event_type, str | EventType):
            raw: list[Any] = [event_type]
        elif isinstance(event_type, Iterable) and not isinstance(event_type, bytes | Mapping):
            raw = list(event_type)
        else:
            raise ValidationError(
                "event_type must be an EventType, its value, a list of them or None, got "
                f"{shown(event_type)}"
            )
        types = [_require(parse_enum(EventType, item, "event_type")) for item in raw]
    for name, ident in (("agent_id", agent_id), ("task_id", task_id)):
        if ident is None:
            continue
        if not isinstance(ident, str):
            raise ValidationError(f"{name} must be a string (one id) or None, got {shown(ident)}")
        check_utf8(ident, name)
    check_flag(newest, "newest")
    for name, value in (("since", since), ("until", until)):
        if value is not None and not isinstance(value, datetime):
            raise ValidationError(f"{name} must be a datetime")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    check_limit(limit)
    if after_id is not None and (
        isinstance(after_id, bool) or not isinstance(after_id, int) or not 0 <= after_id < 2**63
    ):
        raise ValidationError(
            "after_id must be an event id (an integer from 0 to 2**63 - 1) or None, got "
            f"{shown(after_id)}"
        )
    return EventQuery(
        event_types=types,
        agent_id=agent_id,
        task_id=task_id,
        min_severity=parse_enum(Severity, severity, "severity"),
        since=since,
        until=until,
        limit=limit,
        newest=newest,
        after_id=after_id,
    )


def _require(value: _E | None) -> _E:
    if value is None:
        raise ValidationError("None is not an event type")
    return value
