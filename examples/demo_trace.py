"""Run ``hexbus demo`` with the OpenTelemetry SDK and print one of its traces as a table.

``python examples/demo_trace.py [--trace N]`` (needs ``opentelemetry-sdk``). The SDK's
tracer provider is installed globally *before* the demo's container builds its bus, so
``HEXBUS_OTEL=auto`` (the default) switches tracing on, as it would in a service. Spans go
to an ``InMemorySpanExporter``; the table is what docs/architecture/observability.md shows.
``HEXBUS_ADAPTER=rabbitmq`` or ``kafka`` runs the same story over a broker.
"""

from __future__ import annotations

import argparse
import asyncio
import io
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from hexbus.demo.container import DemoContainer
from hexbus.demo.scenario import run_demo

_SHOWN = (
    "messaging.system",
    "messaging.destination.name",
    "messaging.consumer.group.name",
    "hexbus.delivery.attempt",
    "error.type",
)


def _short(value: int | None, digits: int) -> str:
    return "-" if value is None else format(value, f"0{digits}x")[-8:]


def table(spans: list[ReadableSpan]) -> str:
    """A markdown table of one trace's spans, in start order, indented by depth."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}

    def depth(span: ReadableSpan) -> int:
        level, parent = 0, span.parent
        while parent is not None and parent.span_id in by_id:
            level += 1
            parent = by_id[parent.span_id].parent
        return level

    rows = [
        "| span | kind | span id | parent | links to | event id | conversation | "
        "attributes | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        attrs: dict[str, Any] = dict(span.attributes or {})
        shown = ", ".join(f"`{k}={attrs[k]}`" for k in _SHOWN if k in attrs)
        links = ", ".join(_short(link.context.span_id, 16) for link in span.links) or "-"
        context = span.context
        rows.append(
            f"| {'  ' * depth(span)}{'↳ ' if depth(span) else ''}`{span.name}` "
            f"| {span.kind.name} "
            f"| {_short(context.span_id if context else None, 16)} "
            f"| {_short(span.parent.span_id if span.parent else None, 16)} "
            f"| {links} "
            f"| …{str(attrs.get('messaging.message.id', '-'))[-8:]} "
            f"| …{str(attrs.get('messaging.message.conversation_id', '-'))[-8:]} "
            f"| {shown} | {span.status.status_code.name} |"
        )
    return "\n".join(rows)


async def main_async(index: int) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    await run_demo(DemoContainer(), Console(file=io.StringIO()))
    spans = list(exporter.get_finished_spans())
    traces: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.context is not None:
            traces.setdefault(span.context.trace_id, []).append(span)
    ordered = sorted(traces.values(), key=lambda group: min(s.start_time or 0 for s in group))
    chosen = ordered[index]
    first = min(chosen, key=lambda s: s.start_time or 0)
    print(f"{len(spans)} spans in {len(traces)} traces; trace #{index}: "
          f"{_short(first.context.trace_id if first.context else None, 32)} "
          f"({len(chosen)} spans)\n")
    print(table(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trace", type=int, default=0, help="which trace (in start order)")
    asyncio.run(main_async(parser.parse_args().trace))


if __name__ == "__main__":
    main()
