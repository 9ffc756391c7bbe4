"""Process agents defined in the program's main module, run the other two ordinary ways:
``python -m package.module`` (the worker loaded the module by path, outside its package:
its relative imports failed, and the error advised the main guard it had) and
``python -m asyncio`` (an agent typed there got that wrong error too, not the one saying
to use isolation='inline')."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RUN_PY = textwrap.dedent(
    """
    import asyncio

    from miminions import AgentRuntime, BaseAgent

    from .settings import PREFIX


    class Echo(BaseAgent):
        async def execute_task(self, task):
            return {"echo": PREFIX + task.input_data["text"]}


    async def main():
        async with AgentRuntime(":memory:") as rt:
            agent = await rt.start_agent(await rt.register_agent("echo", Echo))
            print("STATUS", agent.status.value, agent.error_message)
            if agent.status.value == "running":
                task = await rt.wait_for_task(
                    await rt.submit_task("e", {"text": "hi"}), timeout_seconds=30
                )
                print("RESULT", task.output_data)


    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_process_agent_in_a_module_run_with_dash_m(tmp_path: Path) -> None:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text('PREFIX = "echo: "\n')
    (package / "run.py").write_text(RUN_PY)
    result = subprocess.run(
        [sys.executable, "-m", "myapp.run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = result.stdout + result.stderr
    assert "STATUS running" in out, out
    assert "RESULT {'echo': 'echo: hi'}" in out, out


def test_agent_typed_into_python_dash_m_asyncio_gets_the_interactive_error(
    tmp_path: Path,
) -> None:
    session = (
        "from miminions import AgentRuntime, BaseAgent\n"
        'rt = AgentRuntime(":memory:")\n'
        "await rt.start()\n"
        "class Typed(BaseAgent):\n"
        "    async def execute_task(self, task): return {}\n"
        "\n"
        "try:\n"
        '    await rt.register_agent("typed", Typed)\n'
        "except Exception as exc:\n"
        '    print("ERROR", type(exc).__name__, exc)\n'
        "\n"
        "await rt.stop()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "asyncio"],
        input=session,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = result.stdout + result.stderr
    assert "ERROR ValidationError" in out, out  # refused as it registers
    assert "isolation='inline'" in out, out
    assert "asyncio/__main__.py" not in out, out
