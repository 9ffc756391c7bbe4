"""Building a runtime's plugin manager: built-ins, entry points, then the user's plugins.

Each :class:`~miminions.AgentRuntime` builds its own manager; nothing is global. Order:

1. the hookspecs;
2. names in ``disable=[...]`` are blocked, so nothing by that name registers later;
3. the built-in plugins, by short name (their providers are ``trylast``);
4. plugins from the ``miminions`` entry-point group, unless the environment variable
   ``MIMINIONS_DISABLE_PLUGIN_AUTOLOAD`` is set (their names still count as known to
   ``disable``); an entry point named like a built-in or like another entry point is an
   error;
5. the plugins passed as ``AgentRuntime(plugins=[...])`` (one the entry points loaded
   already, the very same object, is not registered twice);
6. ``check_pending()``: an implementation matching no hook is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, cast

import pluggy

from miminions.kernel import hookspecs
from miminions.kernel.errors import PLUGIN_ERRORS, ConfigurationError, PluginError

ENTRY_POINT_GROUP = "miminions"
AUTOLOAD_ENV = "MIMINIONS_DISABLE_PLUGIN_AUTOLOAD"

# The one place the kernel names built-in plugins: short name -> module path.
#: The hooks :meth:`PluginManager.call_each` calls: each implementation on its own.
CALLED_EACH = frozenset({"miminions_runtime_stopping", "miminions_runtime_stopped"})

BUILTIN_PLUGINS: dict[str, str] = {
    "priority_scheduling": "miminions.plugins.priority_scheduling",
    "asyncio_loop": "miminions.plugins.asyncio_loop",
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
            # The functions pluggy will take as implementations (whatever their attribute
            # name: ``@hookimpl(specname=...)`` maps any name to a hook), and functions
            # named like a hook, which are meant as one even without the marker.
            opts = self.parse_hookimpl_opts(plugin, attr_name)
            if opts is None and not attr_name.startswith("miminions_"):
                continue
            impl = getattr(plugin, attr_name, None)
            if opts is None and callable(impl) and not isinstance(impl, type):
                shown = name or self.get_canonical_name(plugin)
                raise PluginError(
                    f"plugin {shown!r}: {attr_name} is named like a hook but not marked as "
                    "one, so it would never be called; decorate it with @miminions.hookimpl "
                    "(or rename it, if it is no hook)"
                )
            hook_name = (opts.get("specname") if opts is not None else None) or attr_name
            if (
                opts is not None
                and (opts.get("wrapper") or opts.get("hookwrapper"))
                and hook_name in CALLED_EACH
            ):
                raise PluginError(
                    f"plugin {name or self.get_canonical_name(plugin)!r}: {hook_name} takes no "
                    "wrapper: each of its implementations is called on its own, so that one "
                    "that fails skips no other plugin's clean-up; implement it plainly "
                    "(tryfirst / trylast choose the order)"
                )
            if _is_async(impl):
                shown = name or self.get_canonical_name(plugin)
                what = attr_name if hook_name == attr_name else f"{attr_name} (of {hook_name})"
                raise PluginError(
                    f"plugin {shown!r}: hook implementation {what} is 'async def'. "
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

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, BaseException]]:
        """Call every implementation of the broadcast hook ``hook_name`` on its own, in
        pluggy's order, and return the ``(plugin name, error)`` of those that raised.

        pluggy stops a hook call at the first exception; for notifications whose
        implementations each release something of their own (:data:`CALLED_EACH`), one that
        fails must not keep the others from running. Those hooks take no wrappers
        (:meth:`register` refuses one), which would make them one call again.
        """
        errors: list[tuple[str, BaseException]] = []
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):  # pluggy's order
            try:
                refuse_coroutines(
                    impl.function(**{arg: kwargs[arg] for arg in impl.argnames}), hook_name
                )
            except PLUGIN_ERRORS as exc:
                errors.append((impl.plugin_name, exc))
        return errors


def refuse_coroutines(results: Any, hook_name: str) -> None:
    """Raise PluginError when a hook answered a coroutine (closing it): an ``async def``
    implementation behind a decorator that registration could not see through. Hooks are
    synchronous; nobody would ever await it. ``results`` is one answer or a list of them."""
    answers = results if isinstance(results, list) else [results]
    for answer in answers:
        if inspect.iscoroutine(answer):
            answer.close()
            raise PluginError(
                f"an implementation of {hook_name} answered a coroutine: it is an 'async def' "
                "behind a decorator. miminions hooks are synchronous; schedule the coroutine "
                "in the hook (loop.create_task) or make the hook a plain def"
            )


def loop_factory_of(pm: PluginManager, config: Any) -> Callable[[], Any] | None:
    """What the plugins answer ``miminions_loop_factory`` with: a function that makes an
    event loop, or None for asyncio's own. Anything else (a coroutine, a loop itself
    instead of the function that makes one) is a PluginError naming the plugins asked."""
    hook = pm.hook.miminions_loop_factory
    factory = hook(config=config)
    refuse_coroutines(factory, "miminions_loop_factory")
    if factory is not None and not callable(factory):
        asked = [impl.plugin_name for impl in hook.get_hookimpls()]
        raise PluginError(
            f"miminions_loop_factory answered a {type(factory).__name__}, not a function that "
            "makes an event loop (answer asyncio.new_event_loop, not asyncio.new_event_loop()); "
            f"plugins consulted: {asked}"
        )
    if inspect.iscoroutinefunction(factory) or inspect.isasyncgenfunction(factory):
        asked = [impl.plugin_name for impl in hook.get_hookimpls()]
        raise PluginError(
            f"miminions_loop_factory answered {factory!r}, an 'async def' function: the event "
            "loop is made before any loop runs, so it must be a plain function returning the "
            f"loop; plugins consulted: {asked}"
        )
    return cast(Callable[[], Any] | None, factory)


def _is_async(impl: Any) -> bool:
    """True for an ``async def`` (or async generator) function, also one behind an
    :func:`~miminions.kernel.hookspecs.accepts_events` filter (its wrapper is sync). Other
    decorators are taken at their word: a sync one may hand a coroutine to a task."""
    functions = (impl, hookspecs.unfiltered(impl)) if callable(impl) else (impl,)
    return any(
        inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
        for function in functions
    )


def installed(package: str) -> bool:
    """Whether the top-level ``package`` is installed, found without importing anything
    (an extra's plugin module asks this once, when it is imported, to leave out the hooks
    that would only pass without it).

    A name set to None in ``sys.modules`` counts as missing, as ``import`` sees it; so does
    one a meta-path finder refuses, or whose spec cannot be told (``find_spec`` raises
    ValueError for a module without one).
    """
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def build_plugin_manager(
    plugins: Iterable[object] = (), disable: Iterable[str] = ()
) -> PluginManager:
    """Build and validate the plugin manager of one runtime (see the module docstring)."""
    if isinstance(disable, str | bytes):  # list("uvloop") would be six one-letter names
        raise ConfigurationError("disable takes a list of plugin names, not a string")
    if plugins is None or disable is None:
        raise ConfigurationError("plugins and disable take lists (leave them out for none)")
    if isinstance(plugins, str | bytes):
        raise ConfigurationError("plugins takes a list of plugin objects, not a string")
    plugins = list(plugins)  # a generator is read once: here, and not again below
    for plugin in plugins:
        if isinstance(plugin, str | bytes):
            raise PluginError(
                f"plugin {plugin!r} is given by name: pass the plugin itself (the imported "
                "module or object), or install it with an entry point in the 'miminions' "
                "group, which loads it by itself"
            )
    pm = PluginManager()
    disabled = list(disable)
    for name in disabled:
        pm.set_blocked(name)
    for name, module_path in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module_path), name)
    known = set(BUILTIN_PLUGINS)
    if os.environ.get(AUTOLOAD_ENV):
        # Not loaded, but installed: disabling one is not a mistake (and keeps it out when
        # the variable is unset again).
        known |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    else:
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
    """Register the plugins of the entry-point group; return their names.

    Two plugins cannot share a name: an entry point named like a built-in or like another
    entry point raises PluginError naming both, since either choice would silently drop a
    plugin the user installed (a blocked name loads neither, so it is no clash).
    """
    seen: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        other = seen.setdefault(ep.name, ep)
        if pm.is_blocked(ep.name):
            continue
        if other is not ep:
            raise PluginError(
                f"two entry points are named {ep.name!r}: {_describe(other)} and "
                f"{_describe(ep)}; plugin names must be unique — uninstall one, or disable "
                f"both with disable=[{ep.name!r}] (the CLI: --disable {ep.name})"
            )
        if ep.name in BUILTIN_PLUGINS:
            raise PluginError(
                f"entry point {_describe(ep)} has the name of the built-in plugin "
                f"{ep.name!r} ({BUILTIN_PLUGINS[ep.name]}); plugin names must be unique — "
                "the package must use a name of its own"
            )
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} from entry point {ep.value!r} failed to load: {exc!r}; "
                f"uninstall it, or disable it with disable=[{ep.name!r}] (the CLI: --disable "
                f"{ep.name}) or {AUTOLOAD_ENV}=1"
            ) from exc
        pm.register(plugin, ep.name)
    return set(seen)


def _describe(ep: EntryPoint) -> str:
    """An entry point as its name, value and distribution, for error messages."""
    dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
    return f"{ep.name} = {ep.value!r} (from {dist})"


def _plugin_name(plugin: object) -> str:
    name = getattr(plugin, "miminions_plugin_name", None) or getattr(plugin, "__name__", None)
    if isinstance(name, str):
        return name
    return type(plugin).__name__


def first_result(
    pm: PluginManager, hook_name: str, what: str, protocol: type | None = None, **kwargs: Any
) -> Any:
    """Call a firstresult ``make_*`` hook; raise naming the plugins asked if none answered,
    or if the answer does not have what ``protocol`` (a ``runtime_checkable`` protocol of
    :mod:`miminions.kernel.interfaces`) requires."""
    hook = getattr(pm.hook, hook_name)
    result = hook(**kwargs)
    refuse_coroutines(result, hook_name)
    asked = [impl.plugin_name for impl in hook.get_hookimpls()]
    if result is None:
        raise PluginError(
            f"no plugin provided {what} ({hook_name}); plugins consulted: {asked or 'none'}. "
            "Re-enable the built-in or pass a plugin that implements it."
        )
    if protocol is not None:
        # hasattr, not isinstance: since Python 3.12 isinstance against a protocol ignores
        # __getattr__, through which wrappers (the otel extra's, the docs' TimedStore)
        # forward what they do not change.
        missing = sorted(name for name in _protocol_members(protocol) if not hasattr(result, name))
        if missing:
            raise PluginError(
                f"{hook_name} answered a {type(result).__name__}, which is not {what}: it has "
                f"no {', '.join(missing)} (see the {protocol.__name__} protocol); plugins "
                f"consulted: {asked}"
            )
    return result


def _protocol_members(protocol: type) -> set[str]:
    """The public methods and attributes a protocol class declares (its own and its
    protocol bases')."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base in (object, Protocol) or not getattr(base, "_is_protocol", False):
            continue
        names.update(name for name in vars(base) if not name.startswith("_"))
        names.update(
            name for name in getattr(base, "__annotations__", {}) if not name.startswith("_")
        )
    return names
