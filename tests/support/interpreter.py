"""Running a snippet in a fresh Python interpreter, for what one process cannot show:
what an import loads, or how a module behaves when a package was missing at import."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_python(code: str, *args: str) -> str:
    """Run ``code`` with ``python -c`` (``args`` in ``sys.argv[1:]``); return its standard
    output, failing the test with its standard error if it does not exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


_WITHOUT_PACKAGE = """
import asyncio, json, sys
package, plugin, path = sys.argv[1:4]
sys.modules[package] = None  # before miminions (and so the extra's module) is imported
from miminions import AgentRuntime, MissingExtraError, RuntimeConfig
from miminions.kernel.plugins import build_plugin_manager

pm = build_plugin_manager()
seen = {
    "plugins": pm.plugin_names(),
    "hooks": pm.hooks_of(plugin),
    "event": [impl.plugin_name for impl in pm.hook.miminions_event.get_hookimpls()],
    "trace": [impl.plugin_name for impl in pm.hook.miminions_trace_context.get_hookimpls()],
}

async def missing(config, export):
    try:
        async with AgentRuntime(path, config=config) as rt:
            if export:
                rt.export_prometheus_metrics()
    except MissingExtraError as exc:
        return str(exc)
    return None

seen["start"] = asyncio.run(missing(RuntimeConfig(plugin_options={plugin: {}}), False))
seen["export"] = asyncio.run(missing(RuntimeConfig(), True))
print(json.dumps(seen))
"""


def without_package(package: str, plugin: str, database: str) -> dict[str, Any]:
    """What a fresh interpreter in which ``package`` cannot be imported sees of the extra
    ``plugin``: the plugins loaded, the hooks ``plugin`` implements, the plugins listening
    to events and to the trace hook, and the ``MissingExtraError`` text (or None) of a start
    with a ``plugin_options[plugin]`` section ("start") and of
    ``export_prometheus_metrics()`` ("export"), on the database file ``database``."""
    seen: dict[str, Any] = json.loads(run_python(_WITHOUT_PACKAGE, package, plugin, database))
    return seen
