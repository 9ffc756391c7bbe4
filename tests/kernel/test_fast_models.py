"""The hot-path model builders (``fast_construct``, ``fast_copy``) give models that behave
exactly like validated ones."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ValidationError

from miminions.kernel import models, task_input
from miminions.kernel.models import Event, EventType, Severity, fast_construct, fast_copy

EVENT_VALUES = {
    "event_id": 7,
    "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    "event_type": EventType.TASK_COMPLETED,
    "severity": Severity.INFO,
    "agent_id": "agent-1",
    "task_id": "task-1",
    "details": {"duration_seconds": 0.5, "nested": {"k": [1, 2]}},
}


def _model_classes() -> list[type[BaseModel]]:
    return [
        cls
        for module in (models, task_input)
        for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, BaseModel) and cls is not BaseModel
    ]


@pytest.mark.parametrize("cls", _model_classes(), ids=lambda cls: cls.__name__)
def test_no_model_defines_new(cls: type[BaseModel]) -> None:
    """fast_construct creates instances with object.__new__: a model defining its own
    __new__ would be built without it."""
    assert cls.__new__ is object.__new__


def test_fast_construct_equals_validated_model() -> None:
    built = fast_construct(Event, dict(EVENT_VALUES))
    validated = Event.model_validate(EVENT_VALUES)

    assert built == validated
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_fields_set == set(Event.model_fields)
    assert built.model_dump(exclude_unset=True) == validated.model_dump()
    assert built.model_copy(update={"event_id": 8}).event_id == 8
    assert built.model_extra is None


class Note(BaseModel):
    """A model that may be changed (events are frozen)."""

    agent_id: str
    task_id: str
    details: dict[str, object]


NOTE_VALUES = {"agent_id": "agent-1", "task_id": "task-1", "details": {"nested": {"k": [1]}}}


def test_fast_construct_allows_setting_fields() -> None:
    built = fast_construct(Note, dict(NOTE_VALUES))
    built.agent_id = "agent-2"
    assert built.agent_id == "agent-2"
    assert Note.model_validate(built.model_dump()).agent_id == "agent-2"


def test_fast_construct_keeps_a_frozen_model_frozen() -> None:
    built = fast_construct(Event, dict(EVENT_VALUES))
    with pytest.raises(ValidationError, match="frozen"):
        built.agent_id = "agent-2"  # type: ignore[misc]  # frozen on purpose: it must refuse


def test_fast_copy_is_shallow_and_independent_at_the_top() -> None:
    original = fast_construct(Note, dict(NOTE_VALUES))
    copy = fast_copy(original)

    copy.task_id = "task-2"
    assert original.task_id == "task-1"
    assert copy == original.model_copy(update={"task_id": "task-2"})
    assert copy.details is original.details  # shallow: JSON values are shared
