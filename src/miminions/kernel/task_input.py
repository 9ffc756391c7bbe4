"""What goes into a task: the request model, id generation, JSON checks, error text."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from miminions.kernel.errors import ValidationError
from miminions.kernel.ids import time_ordered_id, time_ordered_ids
from miminions.kernel.jsonutil import make_encoder
from miminions.kernel.models import JSONObject
from miminions.kernel.validation import check_utf8, escape_non_utf8

_encode = make_encoder(allow_nan=False)

MAX_RETRIES = 10_000
MIB = 1024 * 1024


class TaskRequest(BaseModel):
    """One task of a :meth:`AgentRuntime.submit_tasks` batch.

    ``task_id`` is optional; give one when other tasks of the same batch depend on it.
    Numbers are strict, as in :meth:`AgentRuntime.submit_task`: ``priority="5"``,
    ``5.0`` or ``True`` are rejected, not converted.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    input_data: JSONObject | None = None
    priority: StrictInt = 50
    dependencies: list[str] = Field(default_factory=list)
    timeout_seconds: StrictFloat | StrictInt | None = None
    max_retries: StrictInt = 0
    agent_id: str | None = None
    group: str | None = None
    idempotency_key: str | None = None
    task_id: str | None = None


#: How errors name what ``on_pause`` returned (it must be JSON: it is stored).
PAUSE_STATE = "the state on_pause returned"
#: How deep a JSON value may nest (lists and objects in one another). The JSON decoder
#: spends a level of the interpreter's recursion limit (1000) per level: this leaves the
#: code reading a value back, copying or sending it hundreds of frames of its own (a value
#: a little shallower than the limit, accepted at a shallow call depth, could not be
#: loaded by the next start: RecursionError).
MAX_JSON_DEPTH = 640


def to_json_value(
    value: Any,
    what: str,
    *,
    max_bytes: int | None = None,
    too_large: type[ValidationError] = ValidationError,
) -> Any:
    """Return an independent JSON copy of ``value``; raise ValidationError if it is not JSON
    or holds a string the store cannot write (not encodable as UTF-8: see
    :func:`~miminions.kernel.validation.check_utf8`), and ``too_large`` if its JSON is more
    than ``max_bytes`` bytes of UTF-8 (as it is stored and sent)."""
    if value is None or (type(value) is dict and not value):
        return {} if value is not None else None
    try:
        text = _encode(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bools, None): {exc}"
        ) from None
    except RecursionError:
        raise _too_deep(what) from None
    # (Counting brackets is one C-speed pass; only a value with that many containers, or
    # strings holding brackets, is walked.)
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        check_depth(value, what)
    size = check_utf8(text, what)  # keys and values alike: the encoder keeps non-ASCII as is
    if max_bytes is not None and size > max_bytes:
        raise too_large(
            f"{what} is {size:,} bytes as JSON; the limit is {max_bytes:,} "
            f"({max_bytes / MIB:g} MB): pass a reference (a file path, a URL) instead"
        )
    copy = json.loads(text)
    # The encoder writes an int, float, bool or None key as a string, silently: the copy
    # would differ from the value ({3: x} -> {"3": x}), or lose a value to a clashing
    # key. Comparing the two is one C-speed pass; only a difference is looked into (a
    # tuple, which the copy holds as a list, differs harmlessly).
    try:
        same = copy == value
    except RecursionError:  # nested deeper than the comparison goes: walk it instead
        same = False
    if not same:
        refuse_non_string_keys(value, what)
    return copy


def check_depth(value: Any, what: str) -> None:
    """Raise ValidationError if ``value`` nests deeper than :data:`MAX_JSON_DEPTH`."""
    if not isinstance(value, dict | list | tuple):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(what)
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1))


def _too_deep(what: str) -> ValidationError:
    return ValidationError(
        f"{what} nests lists and objects more than {MAX_JSON_DEPTH} levels deep; flatten it"
    )


def refuse_non_string_keys(value: Any, what: str) -> None:
    """Raise ValidationError naming the first dict key in ``value`` that is not a string."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValidationError(
                        f"{what} must be JSON: its keys must be strings, but it has the key "
                        f"{key!r} ({type(key).__name__}); write it as a string"
                    )
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def new_task_id() -> str:
    """A new task id: unique and roughly time-ordered (see :mod:`miminions.kernel.ids`)."""
    return time_ordered_id()


def new_task_ids(count: int) -> list[str]:
    """``count`` new task ids at once (see :func:`miminions.kernel.ids.time_ordered_ids`)."""
    return time_ordered_ids(count)


def error_text(error: BaseException) -> str:
    """``str(error)``, storable (escaped as :func:`escape_non_utf8` does), and never raising:
    an exception whose ``__str__`` fails reads as ``<str() failed: ...>`` (an agent's error
    is reported, not turned into a second one that leaves its caller waiting)."""
    try:
        text = str(error)
    except Exception as exc:
        text = f"<str() failed: {type(exc).__name__}>"
    return escape_non_utf8(text)


def describe_error(error: BaseException) -> str:
    """A one-line description of an exception for ``Task.error_message``."""
    # stored with the task, whatever bad input the message quotes
    text = error_text(error)
    # an error raised in a worker process reads the same as one raised inline
    name = getattr(error, "remote_type", None) or type(error).__name__
    return f"{name}: {text}" if text else name


__all__ = [
    "MAX_RETRIES",
    "TaskRequest",
    "describe_error",
    "error_text",
    "new_task_id",
    "new_task_ids",
    "refuse_non_string_keys",
    "to_json_value",
]
