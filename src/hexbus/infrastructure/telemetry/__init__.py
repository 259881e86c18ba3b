"""OpenTelemetry spans and metrics for the publish and consume pipelines.

Requires the ``[otel]`` extra: only the OpenTelemetry API at run time; the application
configures the SDK (exporters, sampling) as it does for everything else it traces.
``docs/architecture/observability.md`` lists the spans, attributes and metrics.

Switching it on (``HEXBUS_OTEL``, read when the registry builds a bus):

- ``auto`` (default): on when ``opentelemetry`` is importable *and* a real (SDK) tracer
  or meter provider is installed globally when the bus is built; otherwise off, and the
  bus pays nothing (no wrapper, one ``is None`` test per delivery);
- ``on``: always, through the global providers (a provider installed later still
  receives the spans: the API's proxies forward to it); an error if the API is missing;
- ``off``: never.

Or per bus, with explicit providers (tests, several exporters)::

    from hexbus.infrastructure.telemetry import instrument
    instrument(bus, tracer_provider=provider, meter_provider=meter_provider)

This module imports OpenTelemetry only when asked to instrument, so building a bus
without the extra installed never fails here.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hexbus.domain.errors import ConfigurationError

if TYPE_CHECKING:
    from hexbus.application.observing import Instrumentation
    from hexbus.infrastructure.settings import HexbusSettings

__all__ = [
    "available",
    "configure",
    "instrument",
    "register_gauge",
    "sdk_configured",
    "trace_log_filter",
]

_MISSING = (
    "HEXBUS_OTEL=on needs the OpenTelemetry API; install the extra: pip install 'hexbus[otel]' "
    "(and an SDK/exporter, e.g. opentelemetry-sdk), or set HEXBUS_OTEL=auto or off"
)


def _otel() -> Any:
    """The OpenTelemetry implementation, imported on first use (it imports the API)."""
    return importlib.import_module("hexbus.infrastructure.telemetry.otel")


def available() -> bool:
    """Is the OpenTelemetry API importable (the ``[otel]`` extra)?"""
    return importlib.util.find_spec("opentelemetry") is not None


def sdk_configured() -> bool:
    """Has the application installed a real tracer or meter provider (not the API's no-op)?"""
    if not available():
        return False
    configured: bool = _otel().sdk_configured()
    return configured


def instrument(
    bus: Any, *, tracer_provider: Any = None, meter_provider: Any = None
) -> Instrumentation:
    """Report ``bus``'s spans and metrics to OpenTelemetry; returns the instrumentation.

    ``None`` providers mean the global ones. ``bus.instrument(None)`` switches it off.
    """
    if not available():
        raise ConfigurationError(_MISSING)
    telemetry: Instrumentation = _otel().Telemetry(
        bus, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    bus.instrument(telemetry)
    return telemetry


def configure(bus: Any, settings: HexbusSettings) -> Instrumentation | None:
    """Apply ``HEXBUS_OTEL`` to a freshly built bus (the registry's ``build_bus`` calls it)."""
    mode = settings.otel
    if mode == "off" or (mode == "auto" and not sdk_configured()):
        return None
    return instrument(bus)


def register_gauge(
    name: str,
    callback: Callable[[], float | int | Iterable[tuple[float | int, dict[str, Any]]]],
    *,
    unit: str = "",
    description: str = "",
    meter_provider: Any = None,
) -> Any:
    """An observable gauge read by ``callback`` at each collection (the outbox's stats).

    ``callback`` returns a number, or ``(value, attributes)`` pairs for several series;
    an exception in it is logged by the SDK and skips that collection. Returns the
    instrument, or ``None`` without the OpenTelemetry API (nothing to register with).
    """
    if not available():
        return None
    return _otel().register_gauge(
        name, callback, unit=unit, description=description, meter_provider=meter_provider
    )


def trace_log_filter() -> Any:
    """A ``logging.Filter`` that gives records the current span's ``trace_id`` / ``span_id``.

    Only for records that carry no ``trace_id`` of their own (the pipelines' records name
    the event's trace already). ``None`` without the OpenTelemetry API.
    """
    if not available():
        return None
    return _otel().TraceLogFilter()
