"""Building a runtime's plugin manager: built-ins, entry points, then the user's plugins.

Each :class:`~miminions.AgentRuntime` builds its own manager; nothing is global. Order:

1. the hookspecs;
2. names in ``disable=[...]`` are blocked, so nothing by that name registers later;
3. the built-in plugins, by short name (their providers are ``trylast``);
4. plugins from the ``miminions`` entry-point group, unless the environment variable
   ``MIMINIONS_DISABLE_PLUGIN_AUTOLOAD`` is set;
5. the plugins passed as ``AgentRuntime(plugins=[...])`` (one the entry points loaded
   already, the very same object, is not registered twice);
6. ``check_pending()``: an implementation matching no hook is an error.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any

import pluggy

from miminions.kernel import hookspecs
from miminions.kernel.errors import ConfigurationError, PluginError

ENTRY_POINT_GROUP = "miminions"
AUTOLOAD_ENV = "MIMINIONS_DISABLE_PLUGIN_AUTOLOAD"

# The one place the kernel names built-in plugins: short name -> module path.
BUILTIN_PLUGINS: dict[str, str] = {
    "priority_scheduling": "miminions.plugins.priority_scheduling",
    "asyncio_executor": "miminions.plugins.asyncio_executor",
    "inline_host": "miminions.plugins.inline_host",
    "process_host": "miminions.plugins.process_host",
    "memory_bus": "miminions.plugins.memory_bus",
    "sqlite_store": "miminions.plugins.sqlite_store",
    "logging_monitor": "miminions.plugins.logging_monitor",
}


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that rejects ``async def`` hook implementations at registration."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` after checking none of its hook implementations is async."""
        for attr_name in dir(plugin):
            if not attr_name.startswith("miminions_"):
                continue
            impl = getattr(plugin, attr_name, None)
            if inspect.iscoroutinefunction(impl) or inspect.isasyncgenfunction(impl):
                shown = name or self.get_canonical_name(plugin)
                raise PluginError(
                    f"plugin {shown!r}: hook implementation {attr_name} is 'async def'. "
                    "miminions hooks are synchronous; return an object with async methods "
                    "(a store, host, bus or executor) instead and the runtime will await them."
                )
        try:
            return super().register(plugin, name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"cannot register plugin {name or plugin!r}: {exc}") from exc

    def plugin_names(self) -> list[str]:
        """Names of the registered plugins, in registration order."""
        return [name for name, plugin in self.list_name_plugin() if plugin is not None]

    def hooks_of(self, name: str) -> list[str]:
        """Names of the hooks the plugin registered as ``name`` implements."""
        plugin = self.get_plugin(name)
        if plugin is None:
            return []
        return sorted(caller.name for caller in self.get_hookcallers(plugin) or [])


def build_plugin_manager(
    plugins: Sequence[object] = (), disable: Iterable[str] = ()
) -> PluginManager:
    """Build and validate the plugin manager of one runtime (see the module docstring)."""
    pm = PluginManager()
    disabled = list(disable)
    for name in disabled:
        pm.set_blocked(name)
    for name, module_path in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module_path), name)
    known = set(BUILTIN_PLUGINS)
    if not os.environ.get(AUTOLOAD_ENV):
        known |= _load_entry_points(pm)
    for plugin in plugins:
        name = _plugin_name(plugin)
        known.add(name)
        if pm.is_blocked(name):
            continue
        if pm.is_registered(plugin):
            continue  # e.g. an extra passed by hand that its entry point loaded already
        if pm.get_plugin(name) is not None:
            raise PluginError(f"a plugin named {name!r} is registered already")
        pm.register(plugin, name)
    unknown = [name for name in disabled if name not in known]
    if unknown:
        raise ConfigurationError(
            f"cannot disable unknown plugin(s) {unknown}; known plugins: {sorted(known)}"
        )
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


def _load_entry_points(pm: PluginManager) -> set[str]:
    names = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.add(ep.name)
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} from entry point {ep.value!r} failed to load: {exc!r}; "
                f"uninstall it, or disable it with disable=[{ep.name!r}] or "
                f"{AUTOLOAD_ENV}=1"
            ) from exc
        pm.register(plugin, ep.name)
    return names


def _plugin_name(plugin: object) -> str:
    name = getattr(plugin, "miminions_plugin_name", None) or getattr(plugin, "__name__", None)
    if isinstance(name, str):
        return name
    return type(plugin).__name__


def first_result(pm: PluginManager, hook_name: str, what: str, **kwargs: Any) -> Any:
    """Call a firstresult ``make_*`` hook; raise naming the plugins asked if none answered."""
    hook = getattr(pm.hook, hook_name)
    result = hook(**kwargs)
    if result is None:
        asked = [impl.plugin_name for impl in hook.get_hookimpls()]
        raise PluginError(
            f"no plugin provided {what} ({hook_name}); plugins consulted: {asked or 'none'}. "
            "Re-enable the built-in or pass a plugin that implements it."
        )
    return result
