"""``TelemetryCapture``: OpenTelemetry SDK providers with in-memory exporters, for tests.

Why in ``hexbus.testing``: asserting on the spans and metrics a bus reports needs the same
few lines in every test module (a tracer provider with an in-memory span exporter, a
meter provider with an in-memory reader, reading data points back by name); services
testing their own hexbus tracing need them too. Requires ``opentelemetry-sdk`` (a test
dependency; hexbus itself needs only the API at run time)::

    capture = TelemetryCapture()
    capture.instrument(bus)                    # this bus reports to these providers only
    ...
    [span] = capture.spans("process ")
    assert capture.total("messaging.client.sent.messages") == 3
    capture.close()
"""

from __future__ import annotations

from typing import Any

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError as exc:  # pragma: no cover - depends on the installed packages
    raise ImportError(
        "hexbus.testing.telemetry needs the OpenTelemetry SDK: pip install opentelemetry-sdk"
    ) from exc

from hexbus.infrastructure.telemetry import instrument

__all__ = ["TelemetryCapture"]


class TelemetryCapture:
    """An SDK tracer and meter provider, each with an in-memory exporter / reader."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def instrument(self, bus: Any) -> Any:
        """Report ``bus``'s spans and metrics here; returns its instrumentation."""
        return instrument(
            bus, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def spans(self, name_prefix: str = "") -> list[ReadableSpan]:
        """Finished spans whose name starts with ``name_prefix``, by start time."""
        found = [s for s in self.exporter.get_finished_spans() if s.name.startswith(name_prefix)]
        return sorted(found, key=lambda s: s.start_time or 0)

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name → its data points (all scopes, all resources), collected now."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` (empty when it reported nothing)."""
        return self.metrics().get(name, [])

    def total(self, name: str, **attributes: Any) -> float:
        """Sum of a counter's points (histograms: of their counts) matching ``attributes``."""
        total = 0.0
        for point in self.points(name):
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                value: Any = getattr(point, "value", None)
                total += value if value else getattr(point, "count", 0)
        return total

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
