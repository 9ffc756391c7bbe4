"""The example third-party plugin package of docs/plugins.md, installed and run for real:
its modules and its entry point are taken from the page, so the page cannot go stale."""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from miminions import AgentRuntime, RuntimeConfig, TaskStatus
from miminions.kernel.plugins import AUTOLOAD_ENV
from tests.support import agents

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def package_section() -> list[tuple[str, str]]:
    """The ``(language, code)`` blocks of the page's "A third-party plugin package"."""
    text = PAGE.read_text(encoding="utf-8")
    start = text.index("## A third-party plugin package")
    end = text.index("\n## ", start + 1)
    return BLOCK.findall(text[start:end])


@pytest.fixture
def counter_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Install the page's package (its modules and its entry point) on ``sys.path``."""
    blocks = package_section()
    (pyproject,) = [code for language, code in blocks if language == "toml"]
    plugin, store = [code for language, code in blocks if language == "python"][:2]
    project = tomllib.loads(pyproject)["project"]
    ((name, target),) = project["entry-points"]["miminions"].items()
    site = tmp_path / "site"
    package = site / target
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(plugin)
    (package / "memory_store.py").write_text(store)
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[miminions]\n{name} = {target}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    yield name
    for module in [m for m in sys.modules if m == target or m.startswith(target + ".")]:
        del sys.modules[module]


async def test_the_documented_plugin_package_counts_and_stores(
    tmp_path: Path, counter_package: str
) -> None:
    config = RuntimeConfig(
        storage_path=str(tmp_path / "unused.db"),
        default_isolation="inline",
        plugin_options={counter_package: {"memory_store": True}},
    )
    async with AgentRuntime(config=config) as rt:
        assert counter_package in rt.plugin_manager.plugin_names()
        assert type(rt.store).__name__ == "MemoryStore"
        await rt.start_agent(await rt.register_agent("echo", agents.EchoAgent))
        task = await rt.wait_for_task(await rt.submit_task("t", {"x": 1}), 10)
        assert task.status is TaskStatus.COMPLETED
        events = await rt.query_events(task_id=task.task_id, limit=None)
        assert [e.event_type.value for e in events] == [
            "task_enqueued",
            "task_started",
            "task_completed",
        ]
    assert not (tmp_path / "unused.db").exists()  # the memory store answered, not SQLite
    from miminions_counter import counts  # type: ignore[import-not-found]

    assert counts["task_completed"] == 1
    assert counts["runtime_started"] == 1


async def test_without_its_option_the_package_only_counts(
    tmp_path: Path, counter_package: str
) -> None:
    config = RuntimeConfig(storage_path=str(tmp_path / "rt.db"), default_isolation="inline")
    async with AgentRuntime(config=config) as rt:
        assert type(rt.store).__name__ == "SQLiteStore"
    assert (tmp_path / "rt.db").exists()


async def test_the_documented_store_hands_out_read_only_events(
    tmp_path: Path, counter_package: str
) -> None:
    """The example store gives every query the same event objects, so it keeps their
    details read-only, as the store contract asks of such a store."""
    config = RuntimeConfig(
        storage_path=str(tmp_path / "unused.db"),
        default_isolation="inline",
        plugin_options={counter_package: {"memory_store": True}},
    )
    async with AgentRuntime(config=config) as rt:
        assert type(rt.store).__name__ == "MemoryStore"
        first = await rt.query_events(event_type="runtime_started", limit=1)
        second = await rt.query_events(event_type="runtime_started", limit=1)
        assert first[0] is second[0]
        with pytest.raises(TypeError, match="read-only"):
            first[0].details["pid"] = -1
