"""The OpenTelemetry sample of docs/extras.md, run as written (its exporter swapped for an
in-memory one and its database for a temporary file): the application's span is recorded
and the submit's span is its child (the sample's ``trace.get_tracer`` used the global
provider, which it never set: the application's span was a non-recording one, and the
submit began a trace of its own; nor did the sample register an agent to run the task)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from tests.support.runtime import ROOT


def _sample() -> str:
    text = (ROOT / "docs" / "extras.md").read_text(encoding="utf-8")
    block = re.search(
        r"```python\n(from opentelemetry\.sdk\.trace import TracerProvider\n.*?)```", text, re.S
    )
    assert block is not None, "the sample of docs/extras.md's otel section"
    return block.group(1)


async def test_the_otel_sample_links_the_submit_to_the_applications_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    sample = _sample()
    assert "BatchSpanProcessor(ConsoleSpanExporter())" in sample
    assert 'AgentRuntime("miminions.db")' in sample
    sample = sample.replace(
        "BatchSpanProcessor(ConsoleSpanExporter())", "SimpleSpanProcessor(EXPORTER)"
    )
    sample = sample.replace('AgentRuntime("miminions.db")', "AgentRuntime(DB)")
    imports, _, body = sample.partition("\n\n\nasync def summarize")
    body = "async def summarize" + body
    functions, _, script = body.partition("\n\n\nprovider = ")
    code = (
        imports
        + "\n\n"
        + functions
        + "\n\n\nasync def main():\n"
        + textwrap.indent("provider = " + script, "    ")
    )
    namespace: dict[str, Any] = {
        "EXPORTER": exporter,
        "DB": str(tmp_path / "miminions.db"),
        "SimpleSpanProcessor": SimpleSpanProcessor,
    }
    exec(compile(code, "docs/extras.md", "exec"), namespace)
    await namespace["main"]()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert "handle request" in spans, sorted(spans)
    submit = spans["submit tasks"]
    assert submit.parent is not None
    assert submit.parent.span_id == spans["handle request"].context.span_id
