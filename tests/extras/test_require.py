"""E-01: a missing optional package raises MissingExtraError with the pip command."""

from __future__ import annotations

import sys

import pytest

from miminions import MiminionsError, MissingExtraError
from miminions.extras import require


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """E-01: the error is a MiminionsError and an ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    with pytest.raises(MissingExtraError) as info:
        require("uvloop", "uvloop")
    error = info.value
    assert isinstance(error, MiminionsError)
    assert isinstance(error, ImportError)
    assert error.name == "uvloop"
    assert "pip install 'miminions[uvloop]'" in str(error)


def test_installed_package_is_returned() -> None:
    """E-01: an installed package is imported and returned."""
    assert require("json", "core").dumps([1]) == "[1]"
