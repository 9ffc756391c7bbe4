"""``import miminions`` is lazy (PEP 562): the public names resolve on first use, to the
very objects the package's declared imports name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import miminions
from tests.support.interpreter import run_python

INIT = Path(miminions.__file__)


def declared_imports() -> list[tuple[str, str, str]]:
    """``(public name, module, name there)`` of each import in ``miminions/__init__.py``."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    return [
        (alias.asname or alias.name, node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("miminions")
        for alias in node.names
    ]


def test_every_public_name_is_declared() -> None:
    declared = {public for public, _, _ in declared_imports()}
    assert sorted(set(miminions.__all__) - declared) == ["__version__"]


@pytest.mark.parametrize(("public", "module", "name"), declared_imports())
def test_a_public_name_is_the_declared_object(public: str, module: str, name: str) -> None:
    assert getattr(miminions, public) is getattr(importlib.import_module(module), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = miminions.Nope


def test_importing_the_package_loads_no_kernel_module() -> None:
    code = (
        "import sys, miminions; "
        "print(sorted(m for m in sys.modules if m.startswith('miminions.kernel')))"
    )
    assert run_python(code).strip() == "[]"


def test_agent_code_does_not_load_the_runtime() -> None:
    """A worker process imports the agent's module, which imports ``BaseAgent`` and ``Task``
    from miminions: that must not load the runtime and the plugin machinery, which the
    forkserver has not preloaded (each worker would import them anew, slowing its start)."""
    code = (
        "import sys; from miminions import AgentMessage, BaseAgent, Task, TaskStatus; "
        "print(sorted(m for m in ('pluggy', 'miminions.kernel.runtime') if m in sys.modules))"
    )
    assert run_python(code).strip() == "[]"
