"""Guards that keep docs/ in step with the code (datasette's discipline, E-05).

Every hook has a reference section, every public name is mentioned, every limit and
configuration field is described, every event type is listed, and the quickstart's code
at least compiles.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import miminions
from miminions import EventType, ResourceLimits, RuntimeConfig
from miminions.kernel import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def all_docs() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(DOCS.glob("*.md")))


HOOKS = sorted(
    name
    for name, obj in vars(hookspecs).items()
    if name.startswith("miminions_") and inspect.isfunction(obj)
)
PUBLIC_NAMES = sorted(
    name
    for name in miminions.__all__
    if inspect.isclass(getattr(miminions, name)) or inspect.isfunction(getattr(miminions, name))
)


def test_hooks_found() -> None:
    assert "miminions_event" in HOOKS
    assert "AgentRuntime" in PUBLIC_NAMES


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    """Each hookspec has a ``### miminions_<name>`` reference section in docs/plugins.md."""
    headings = re.findall(r"^### (miminions_\w+)\s*$", read("plugins.md"), re.MULTILINE)
    assert hook in headings, f"docs/plugins.md has no '### {hook}' section"


def test_no_stale_hook_sections() -> None:
    """Every ``### miminions_*`` section in docs/plugins.md names a hook that exists."""
    headings = re.findall(r"^### (miminions_\w+)\s*$", read("plugins.md"), re.MULTILINE)
    assert sorted(set(headings) - set(HOOKS)) == []


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_is_documented(name: str) -> None:
    """Each public class or function of ``miminions.__all__`` is mentioned in docs/."""
    assert re.search(rf"\b{re.escape(name)}\b", all_docs()), f"{name} is not mentioned in docs/"


@pytest.mark.parametrize(
    "field",
    sorted({*ResourceLimits.model_fields, *RuntimeConfig.model_fields}),
)
def test_every_limit_and_config_field_is_documented(field: str) -> None:
    """Each field of ResourceLimits and RuntimeConfig appears in docs/operations.md (F-08)."""
    assert f"`{field}`" in read("operations.md"), f"{field} is not described in operations.md"


@pytest.mark.parametrize("event_type", [event_type.value for event_type in EventType])
def test_every_event_type_is_documented(event_type: str) -> None:
    """Each EventType value appears in docs/concepts.md (F-12)."""
    assert f"`{event_type}`" in read("concepts.md"), f"{event_type} is not in concepts.md"


def test_quickstart_has_python_blocks() -> None:
    assert len(PYTHON_BLOCK.findall(read("quickstart.md"))) >= 3


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCK.findall(read("quickstart.md")))))
def test_quickstart_code_compiles(index: int) -> None:
    """Each python block of docs/quickstart.md compiles (top-level ``await`` allowed, as in
    ``python -m asyncio``)."""
    source = PYTHON_BLOCK.findall(read("quickstart.md"))[index]
    compile(
        source, f"docs/quickstart.md block {index}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
