"""The miminions pytest plugin: a started runtime per test, and helpers to run agents.

Installed with miminions and loaded by pytest through the ``pytest11`` entry point, so a
project that uses miminions gets these without any setup (see ``docs/testing.md``):

- ``miminions_config`` — a :class:`~miminions.RuntimeConfig` for fast tests, its database
  in the test's ``tmp_path``, agents ``inline`` by default;
- ``miminions_plugins`` — the plugins the runtime is built with (none by default);
- ``miminions_disable`` — the names of the plugins the runtime is built without (none by
  default): a built-in to replace or an installed extra to leave out;
- ``miminions_runtime`` — an :class:`~miminions.AgentRuntime` started on that config and
  stopped after the test, which then checks that nothing was left running;
- ``@pytest.mark.miminions(**options)`` — per-test config overrides (``isolation="process"``,
  ``limits=...``, any ``RuntimeConfig`` field), ``plugins=[...]``, ``disable=[...]`` and
  ``check_leaks=False``;
- :class:`AgentHarness` and :func:`run_agent` — register and start an agent, give it tasks
  and await their outcomes within a bound, failing with the task's error, what holds it and
  the recent events;
- :func:`runtime_config` and :func:`wait_until` for tests that build their own runtimes or
  wait on state that has no event.

pytest loads this module in every project where miminions is installed, used or not, so
loading it must never fail and must cost next to nothing: pytest-asyncio, which the async
runtime fixture needs, is used only when it is installed, and the runtime itself (what
:mod:`miminions.testing_tools` needs) is imported only when a test uses a fixture or a
helper. The helpers are defined there and can be imported from here.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:  # loaded by pytest already when installed: importing it here costs nothing
    import pytest_asyncio

    _HAS_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - depends on the environment
    _HAS_PYTEST_ASYNCIO = False

if TYPE_CHECKING:
    from miminions import AgentRuntime, RuntimeConfig
    from miminions.testing_tools import (
        DEFAULT_TIMEOUT_SECONDS,
        TEST_CONFIG_DEFAULTS,
        AgentHarness,
        run_agent,
        runtime_config,
        started_runtime,
        wait_until,
    )

#: Options of the ``miminions`` marker that are not RuntimeConfig fields.
_RUNTIME_OPTIONS = frozenset({"plugins", "disable", "check_leaks"})


def _marker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The keyword arguments of every ``miminions`` marker on the test; the closest marker
    (the function's, then its class's, then its module's) wins per key."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("miminions"))):
        if marker.args:
            pytest.fail(
                "@pytest.mark.miminions takes keyword arguments only, e.g. "
                "@pytest.mark.miminions(isolation='process')",
                pytrace=False,
            )
        kwargs = dict(marker.kwargs)
        if "isolation" in kwargs and "default_isolation" not in kwargs:
            # One option under two names: a closer marker's either one wins.
            kwargs["default_isolation"] = kwargs.pop("isolation")
        if "default_isolation" in kwargs:
            options.pop("isolation", None)
        options.update(kwargs)
    return options


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``miminions`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        "miminions(**options): options of the miminions_config and miminions_runtime "
        "fixtures: RuntimeConfig fields (isolation= for default_isolation, limits=...), "
        "plugins=[...] for the runtime, disable=[...] for plugins it is built without, "
        "check_leaks=False to skip the teardown checks",
    )


@pytest.fixture
def miminions_config(request: pytest.FixtureRequest, tmp_path: Path) -> RuntimeConfig:
    """A :class:`~miminions.RuntimeConfig` for this test: :func:`runtime_config` on
    ``tmp_path / "miminions.db"`` with the ``miminions`` marker's config options.

    Redefine this fixture (in a ``conftest.py`` or a test module) to change it for many
    tests; it may request the original by its name to start from it.
    """
    from miminions.testing_tools import runtime_config

    options = _marker_options(request)
    overrides = {key: value for key, value in options.items() if key not in _RUNTIME_OPTIONS}
    try:
        return runtime_config(tmp_path / "miminions.db", **overrides)
    except TypeError as exc:
        problem = str(exc)  # failed outside the handler: its traceback adds nothing
    if problem.startswith("unknown"):
        problem += f"; runtime options: {sorted(_RUNTIME_OPTIONS)}"
    pytest.fail(f"@pytest.mark.miminions: {problem}", pytrace=False)


@pytest.fixture
def miminions_plugins(request: pytest.FixtureRequest) -> list[object]:
    """The plugins ``miminions_runtime`` is built with: the ``miminions`` marker's
    ``plugins=[...]``, or none. Redefine it to give every test of a scope a plugin."""
    plugins = _marker_options(request).get("plugins", ())
    if isinstance(plugins, (str, bytes)) or not isinstance(plugins, (list, tuple)):
        pytest.fail(
            f"@pytest.mark.miminions: plugins takes a list of plugins, e.g. "
            f"plugins=[{type(plugins).__name__}()], got {type(plugins).__name__}",
            pytrace=False,
        )
    return list(plugins)


@pytest.fixture
def miminions_disable(request: pytest.FixtureRequest) -> list[str]:
    """The names of the plugins ``miminions_runtime`` is built without (``disable=`` of
    :class:`~miminions.AgentRuntime`): the ``miminions`` marker's ``disable=[...]``, or
    none. Disable a built-in to replace it with a plugin of ``miminions_plugins``, or an
    installed extra to test without it. Redefine it to do so for every test of a scope."""
    disable = _marker_options(request).get("disable", ())
    if isinstance(disable, str):  # list("name") would disable one plugin per letter
        pytest.fail(
            f"@pytest.mark.miminions: disable takes a list of plugin names, "
            f"e.g. disable=[{disable!r}]",
            pytrace=False,
        )
    return list(disable)


# --------------------------------------------------------------------------- the runtime
def _async_fixture(function: Callable[..., Any]) -> Any:
    """Declare an async fixture. pytest-asyncio's decorator makes it work in both its
    "strict" and "auto" modes; without pytest-asyncio it is a plain pytest fixture that
    another async plugin may run (or pytest reports that nothing could)."""
    if _HAS_PYTEST_ASYNCIO:
        return pytest_asyncio.fixture(function)
    return pytest.fixture(function)  # pragma: no cover - depends on the environment


@_async_fixture
async def miminions_runtime(
    request: pytest.FixtureRequest,
    miminions_config: RuntimeConfig,
    miminions_plugins: list[object],
    miminions_disable: list[str],
) -> AsyncIterator[AgentRuntime]:
    """A started :class:`~miminions.AgentRuntime` on ``miminions_config`` with
    ``miminions_plugins`` and without the plugins named in ``miminions_disable``, stopped
    after the test (see :func:`started_runtime`: the teardown fails if anything was left
    running, unless the test is marked ``@pytest.mark.miminions(check_leaks=False)``).
    Needs pytest-asyncio."""
    from miminions.testing_tools import started_runtime

    _check_same_loop(request)
    check_leaks = bool(_marker_options(request).get("check_leaks", True))
    async with started_runtime(
        miminions_config, miminions_plugins, disable=miminions_disable, check_leaks=check_leaks
    ) as runtime:
        yield runtime


def __getattr__(name: str) -> Any:
    """The helpers live in :mod:`miminions.testing_tools`, imported on first use."""
    if name in __all__:
        return getattr(importlib.import_module("miminions.testing_tools"), name)
    raise AttributeError(f"module 'miminions.testing' has no attribute {name!r}")


__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "TEST_CONFIG_DEFAULTS",
    "AgentHarness",
    "run_agent",
    "runtime_config",
    "started_runtime",
    "wait_until",
]


def _check_same_loop(request: pytest.FixtureRequest) -> None:
    """Fail at once, saying why, when the test runs on another event loop than this
    fixture (whose loop scope is ``asyncio_default_fixture_loop_scope``): the runtime would
    refuse every call of the test as made from another thread."""
    if not _HAS_PYTEST_ASYNCIO:
        return  # pragma: no cover - depends on the environment
    marker = request.node.get_closest_marker("asyncio")
    given = marker.kwargs.get("loop_scope") if marker is not None else None
    test_scope = given or _ini(request, "asyncio_default_test_loop_scope") or "function"
    fixture_scope = _ini(request, "asyncio_default_fixture_loop_scope") or "function"
    if test_scope != fixture_scope:
        pytest.fail(
            f"the test runs on a {test_scope}-scoped event loop, the miminions_runtime "
            f"fixture on a {fixture_scope}-scoped one (asyncio_default_fixture_loop_scope): "
            "a runtime is used on the loop it was started on. Set "
            f"asyncio_default_fixture_loop_scope = {test_scope} in pytest's configuration, "
            "or run the test on a function-scoped loop",
            pytrace=False,
        )


def _ini(request: pytest.FixtureRequest, name: str) -> str | None:
    """pytest's ``name`` setting, None when unset or unknown (an older pytest-asyncio)."""
    try:
        value = request.config.getini(name)
    except ValueError:
        return None
    return str(value) if value else None
