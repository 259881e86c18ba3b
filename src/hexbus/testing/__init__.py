"""Test helpers for hexbus users and adapter authors.

- ``RecordingEventBus``: the ``EventBus`` port for unit tests of application code, no
  transport; records what was published (``assert_published``).
- ``EventBusContract`` + ``Capabilities``: the adapter contract suite every transport
  passes; subclass it to test your own adapter.
- ``EventBusFaultSuite`` + ``FaultCapabilities``: the fault scenarios (broker restart,
  consumer SIGKILL, poison handler, undecodable records, ``stop()`` with handlers in
  flight) every broker adapter passes; ``ConsumerProcesses`` spawns the consumer
  processes they kill; ``restart_test_broker`` restarts this session's broker in
  place (its container, or a native broker of ``scripts/brokers.py``);
  ``stop_test_broker`` / ``start_test_broker`` and ``broker_outage(kind, port,
  at_least=15)`` take it away for a while (the outbox relay's outage test);
  ``broker_stall(kind, port)`` freezes it (connections open, nothing answered: the
  publish-timeout tests).
- The database fixtures (``hexbus.testing.databases``): ``sqlite_url``,
  ``postgres_database_url`` (a fresh PostgreSQL database per test) and ``database_url``
  (both), for code on the outbox and inbox.
- ``eventually``: wait for an asynchronous condition with a deadline.
- ``TelemetryCapture`` (``hexbus.testing.telemetry``, needs ``opentelemetry-sdk``): SDK
  providers with in-memory exporters, to assert on the spans and metrics a bus reports.
- The pytest plugin (``hexbus.testing.plugin``, loaded automatically) adds the fixtures
  ``event_bus``, ``recording_bus`` and the broker fixtures of ``hexbus.testing.brokers``.

The suite names are imported lazily: ``hexbus.testing.contract`` and
``hexbus.testing.faults`` register their ``contract.*`` / ``faults.*`` event types in the
process-wide registry, and the pytest plugin (which imports this package in every test
session of every hexbus user) must not add them to an application's event catalogue
unless a suite is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hexbus.testing.recording import PublishedRecord, RecordingEventBus
from hexbus.testing.waiting import eventually

if TYPE_CHECKING:
    from hexbus.testing.contract import BusFactory, Capabilities, EventBusContract, Probe
    from hexbus.testing.faults import (
        EventBusFaultSuite,
        FaultBusFactory,
        FaultCapabilities,
        FaultEvent,
        Undecodable,
        broker_outage,
        broker_stall,
        publish_until_acked,
        require_native_broker,
        require_restartable_broker,
        restart_native_broker,
        restart_test_broker,
        start_test_broker,
        stop_test_broker,
    )
    from hexbus.testing.processes import ChildProcess, ConsumerProcess, ConsumerProcesses
    from hexbus.testing.telemetry import TelemetryCapture

__all__ = [
    "BusFactory",
    "Capabilities",
    "ChildProcess",
    "ConsumerProcess",
    "ConsumerProcesses",
    "EventBusContract",
    "EventBusFaultSuite",
    "FaultBusFactory",
    "FaultCapabilities",
    "FaultEvent",
    "Probe",
    "PublishedRecord",
    "RecordingEventBus",
    "TelemetryCapture",
    "Undecodable",
    "broker_outage",
    "broker_stall",
    "eventually",
    "publish_until_acked",
    "require_native_broker",
    "require_restartable_broker",
    "restart_native_broker",
    "restart_test_broker",
    "start_test_broker",
    "stop_test_broker",
]

#: Lazily imported name -> the module defining it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("BusFactory", "Capabilities", "EventBusContract", "Probe"), "hexbus.testing.contract"
    ),
    **dict.fromkeys(
        (
            "EventBusFaultSuite",
            "FaultBusFactory",
            "FaultCapabilities",
            "FaultEvent",
            "Undecodable",
            "broker_outage",
            "broker_stall",
            "publish_until_acked",
            "require_native_broker",
            "require_restartable_broker",
            "restart_test_broker",
            "restart_native_broker",
            "start_test_broker",
            "stop_test_broker",
        ),
        "hexbus.testing.faults",
    ),
    **dict.fromkeys(
        ("ChildProcess", "ConsumerProcess", "ConsumerProcesses"), "hexbus.testing.processes"
    ),
    "TelemetryCapture": "hexbus.testing.telemetry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
