"""What tracing and metrics cost on the memory adapter's publish (one no-op handler).

Standalone: ``python benchmarks/bench_telemetry.py [--events N] [--repeats R]``.

Three buses measured interleaved in one process, medians of the repeats:

- ``off``: not instrumented (the default without an SDK: ``HEXBUS_OTEL=auto``);
- ``api only``: instrumented through the OpenTelemetry API with no SDK installed
  (``HEXBUS_OTEL=on`` before an SDK is configured): non-recording spans;
- ``sdk``: the SDK's ``TracerProvider`` (``SimpleSpanProcessor`` into an
  ``InMemorySpanExporter``, cleared between repeats) and a ``MeterProvider`` with an
  ``InMemoryMetricReader``: every publish records a send and a process span and four
  metric points. A real exporter adds its own cost (batching recommended).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hexbus import DomainEvent
from hexbus.infrastructure.memory import InMemoryEventBus
from hexbus.infrastructure.telemetry import instrument


class Measured(DomainEvent, event_type="bench.telemetry"):
    n: int


async def _noop(event: Measured) -> None:
    return None


async def _run(bus: Any, events: int) -> float:
    event = Measured(n=1)
    publish = bus.publish
    start = time.perf_counter()
    for _ in range(events):
        await publish(event)
    return (time.perf_counter() - start) / events * 1e6  # µs per publish


async def main_async(events: int, repeats: int) -> dict[str, float]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    buses: dict[str, Any] = {
        "off": InMemoryEventBus(),
        "api only": InMemoryEventBus(),
        "sdk": InMemoryEventBus(),
    }
    instrument(buses["api only"])
    instrument(buses["sdk"], tracer_provider=tracer_provider, meter_provider=meter_provider)
    results: dict[str, list[float]] = {name: [] for name in buses}
    for bus in buses.values():
        bus.subscribe(Measured, _noop)
        await bus.start()
    for _ in range(repeats):
        for name, bus in buses.items():
            exporter.clear()
            results[name].append(await _run(bus, events))
    for bus in buses.values():
        await bus.stop()
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    medians = asyncio.run(main_async(args.events, args.repeats))
    base = medians["off"]
    for name, value in medians.items():
        print(f"{name:>9}: {value:7.2f} µs/publish  ({value / base:5.1f}x off)")


if __name__ == "__main__":
    main()
