"""Guards that keep docs/ in step with the code (datasette's discipline, E-05).

Every hook has a reference section whose signature matches its hookspec, every public name
is mentioned, every limit and configuration field is described, every event type is listed,
the status models' fields are listed exactly, every built-in plugin and CLI command is named,
references to ``miminions.<Name>`` resolve, and every Python snippet at least compiles.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

import miminions
from miminions import (
    AgentInstance,
    Capacity,
    EventQuery,
    EventType,
    Metrics,
    QueueStatus,
    ResourceLimits,
    RuntimeConfig,
    StoredAgent,
    Task,
)
from miminions.cli import build_parser
from miminions.kernel import hookspecs
from miminions.kernel.plugins import BUILTIN_PLUGINS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
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
# Everything ``from miminions import *`` gives: classes, functions, the JSONObject alias, the
# pluggy markers and __version__.
PUBLIC_NAMES = sorted(miminions.__all__)
# Pages with Python snippets that must compile (top-level ``await`` allowed).
SNIPPET_FILES = [*sorted(path.name for path in DOCS.glob("*.md")), "README.md"]


def snippets(name: str) -> list[str]:
    path = ROOT / name if name == "README.md" else DOCS / name
    return PYTHON_BLOCK.findall(path.read_text(encoding="utf-8"))


def test_hooks_found() -> None:
    assert "miminions_event" in HOOKS
    assert "AgentRuntime" in PUBLIC_NAMES
    assert "run" in PUBLIC_NAMES


# --------------------------------------------------------------------------- hooks
def hook_sections() -> dict[str, str]:
    """``{hook name: text of its ### section}`` of docs/plugins.md."""
    text = read("plugins.md")
    parts = re.split(r"^### (miminions_\w+)\s*$", text, flags=re.MULTILINE)
    sections = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sections[name] = re.split(r"^##? ", body, maxsplit=1, flags=re.MULTILINE)[0]
    return sections


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    """Each hookspec has a ``### miminions_<name>`` reference section in docs/plugins.md."""
    assert hook in hook_sections(), f"docs/plugins.md has no '### {hook}' section"


def test_no_stale_hook_sections() -> None:
    """Every ``### miminions_*`` section in docs/plugins.md names a hook that exists."""
    assert sorted(set(hook_sections()) - set(HOOKS)) == []


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_signature_matches_hookspec(hook: str) -> None:
    """The signature shown first in a hook's section has the hookspec's arguments, in order."""
    blocks = PYTHON_BLOCK.findall(hook_sections().get(hook, ""))
    assert blocks, f"the '### {hook}' section shows no signature"
    shown = ast.parse(blocks[0]).body[0]
    assert isinstance(shown, ast.FunctionDef)
    assert shown.name == hook
    documented = [arg.arg for arg in shown.args.args]
    actual = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert documented == actual


# --------------------------------------------------------------------------- public names
def is_mentioned(name: str, text: str) -> bool:
    """CamelCase names are distinctive; a lower-case one (``run``, ``hookimpl``) must be
    written ``miminions.<name>`` or imported ``from miminions import``."""
    if name[0].isupper():
        return re.search(rf"\b{re.escape(name)}\b", text) is not None
    qualified = rf"\bmiminions\.{re.escape(name)}\b"
    imported = rf"^\s*from miminions import [^\n]*\b{re.escape(name)}\b"
    return re.search(f"{qualified}|{imported}", text, re.MULTILINE) is not None


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_is_documented(name: str) -> None:
    """Each name of ``miminions.__all__`` is mentioned in docs/."""
    assert is_mentioned(name, all_docs()), f"{name} is not mentioned in docs/"


def test_qualified_names_exist() -> None:
    """Every ``miminions.<CamelCase>`` written in docs/ or README.md is a public name."""
    text = all_docs() + (ROOT / "README.md").read_text(encoding="utf-8")
    referenced = set(re.findall(r"\bmiminions\.([A-Z]\w*)", text))
    assert sorted(referenced - set(miminions.__all__)) == []


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "field",
    sorted({*ResourceLimits.model_fields, *RuntimeConfig.model_fields}),
)
def test_every_limit_and_config_field_is_documented(field: str) -> None:
    """Each field of ResourceLimits and RuntimeConfig appears in docs/operations.md (F-08)."""
    assert f"`{field}`" in read("operations.md"), f"{field} is not described in operations.md"


@pytest.mark.parametrize(
    ("model", "table_heading"),
    [(RuntimeConfig, "### RuntimeConfig"), (ResourceLimits, "### ResourceLimits")],
)
def test_config_tables_list_exactly_the_fields(model: type[BaseModel], table_heading: str) -> None:
    """The field tables of operations.md have one row per field, and no row for a field
    that does not exist."""
    section = read("operations.md").split(table_heading, 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)
    assert sorted(rows) == sorted(model.model_fields)


# --------------------------------------------------------------------------- status models
@pytest.mark.parametrize(
    ("model", "call"),
    [
        (Capacity, "rt.get_capacity()"),
        (QueueStatus, "rt.get_queue_status()"),
        (Metrics, "rt.get_metrics()"),
    ],
)
def test_status_models_list_exactly_their_fields(model: type[BaseModel], call: str) -> None:
    """operations.md lists every field of Capacity, QueueStatus and Metrics — and only those
    (a removed field must leave the docs too)."""
    text = read("operations.md")
    start = text.index(f"`{call}` → `{model.__name__}`:")
    bullet = re.split(r"\n- |\n\n", text[start:], maxsplit=1)[0]
    listed = set(re.findall(r"`(\w+)`", bullet.split(":", 1)[1]))
    fields = set(model.model_fields)
    if model is Metrics:  # "the message fields stay at zero until messaging arrives"
        fields = {f for f in fields if not f.startswith("message")}
    assert listed == fields


@pytest.mark.parametrize(
    ("model", "page"),
    [
        (Task, "concepts.md"),
        (AgentInstance, "concepts.md"),
        (EventQuery, "plugins.md"),
        (StoredAgent, "plugins.md"),
    ],
)
def test_model_fields_are_documented(model: type[BaseModel], page: str) -> None:
    """Every field of the models users read is named on the page that describes them."""
    text = read(page)
    missing = [field for field in model.model_fields if f"`{field}`" not in text]
    assert missing == [], f"{model.__name__} fields missing from {page}: {missing}"


# --------------------------------------------------------------------------- events
@pytest.mark.parametrize("event_type", [event_type.value for event_type in EventType])
def test_every_event_type_is_documented(event_type: str) -> None:
    """Each EventType value appears in docs/concepts.md (F-12)."""
    assert f"`{event_type}`" in read("concepts.md"), f"{event_type} is not in concepts.md"


def test_event_table_has_no_stale_rows() -> None:
    """Every row of the event-type table in concepts.md names an existing event type."""
    section = read("concepts.md").split("### Event types", 1)[1].split("\n## ", 1)[0]
    section = section.split("|---", 1)[1]  # the rows after the header
    rows = re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)
    assert sorted(rows) == sorted(event_type.value for event_type in EventType)


# --------------------------------------------------------------------------- plugins, CLI
@pytest.mark.parametrize("plugin", sorted(BUILTIN_PLUGINS))
def test_every_builtin_plugin_is_named(plugin: str) -> None:
    """The loading order in plugins.md names every built-in plugin (they can be disabled)."""
    assert f"`{plugin}`" in read("plugins.md")


def cli_commands() -> list[str]:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    return sorted(subparsers.choices)


@pytest.mark.parametrize("command", cli_commands())
def test_every_cli_command_is_documented(command: str) -> None:
    """The command-line table of quickstart.md has a row for every subcommand."""
    assert f"| `miminions {command}` |" in read("quickstart.md")


def test_no_stale_cli_rows() -> None:
    rows = re.findall(r"^\| `miminions (\w+)` \|", read("quickstart.md"), re.MULTILINE)
    assert sorted(rows) == cli_commands()


# --------------------------------------------------------------------------- snippets
def test_quickstart_has_python_blocks() -> None:
    assert len(snippets("quickstart.md")) >= 3


@pytest.mark.parametrize(
    ("page", "index"),
    [(page, index) for page in SNIPPET_FILES for index in range(len(snippets(page)))],
)
def test_snippets_compile(page: str, index: int) -> None:
    """Each python block of docs/*.md and README.md compiles (top-level ``await`` and
    ``async with`` allowed, as in ``python -m asyncio``)."""
    compile(
        snippets(page)[index],
        f"{page} block {index}",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
    )
