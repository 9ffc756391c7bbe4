"""JSON values (task input and results, key-value data, messages, states) nest at most
MAX_JSON_DEPTH levels: a fixed limit, not wherever the interpreter's recursion limit falls
at the call depth of the code handing them over."""

from __future__ import annotations

from typing import Any

import pytest

from miminions import ValidationError
from miminions.kernel.task_input import MAX_JSON_DEPTH, to_json_value


def nest(depth: int, leaf: Any = 1) -> Any:
    """A value ``depth`` lists deep around ``leaf``."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def at_call_depth(frames: int, value: Any) -> Any:
    """``to_json_value(value)`` called ``frames`` frames down."""
    if frames == 0:
        return to_json_value(value, "value")
    return at_call_depth(frames - 1, value)


@pytest.mark.parametrize("frames", [0, 250])
def test_a_value_at_the_limit_is_copied_hundreds_of_frames_down(frames: int) -> None:
    value = nest(MAX_JSON_DEPTH)
    assert at_call_depth(frames, value) == value


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 950, 5000])
def test_a_value_nested_deeper_is_refused(depth: int) -> None:
    """(At 950 levels the decoder ran out of depth with a raw RecursionError, not a
    ValidationError.)"""
    with pytest.raises(ValidationError, match=r"nests .*deep"):
        to_json_value(nest(depth), "value")


def test_objects_and_tuples_count_as_levels_too() -> None:
    value: Any = "leaf"
    for level in range(MAX_JSON_DEPTH + 1):
        value = {"k": value} if level % 2 else (value,)
    with pytest.raises(ValidationError, match="levels deep"):
        to_json_value(value, "value")


def test_many_brackets_are_not_depth() -> None:
    """Wide values and strings holding brackets are not refused."""
    wide = [[{"a": [1]}] for _ in range(1000)]
    assert to_json_value(wide, "value") == wide
    assert to_json_value({"text": "[" * 1000}, "value") == {"text": "[" * 1000}
    assert to_json_value("{" * 1000, "value") == "{" * 1000
