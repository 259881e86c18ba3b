"""Test helpers for hexbus users and adapter authors.

- ``RecordingEventBus``: the ``EventBus`` port for unit tests of application code, no
  transport; records what was published (``assert_published``).
- ``EventBusContract`` + ``Capabilities``: the adapter contract suite every transport
  passes; subclass it to test your own adapter.
- ``eventually``: wait for an asynchronous condition with a deadline.
- The pytest plugin (``hexbus.testing.plugin``, loaded automatically) adds the fixtures
  ``event_bus``, ``recording_bus`` and the broker fixtures of ``hexbus.testing.brokers``.

The contract names are imported lazily: ``hexbus.testing.contract`` registers its
``contract.*`` event types in the process-wide registry, and the pytest plugin (which
imports this package in every test session of every hexbus user) must not add them to
an application's event catalogue unless the suite is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hexbus.testing.recording import PublishedRecord, RecordingEventBus
from hexbus.testing.waiting import eventually

if TYPE_CHECKING:
    from hexbus.testing.contract import BusFactory, Capabilities, EventBusContract, Probe

__all__ = [
    "BusFactory",
    "Capabilities",
    "EventBusContract",
    "Probe",
    "PublishedRecord",
    "RecordingEventBus",
    "eventually",
]

_LAZY = frozenset({"BusFactory", "Capabilities", "EventBusContract", "Probe"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("hexbus.testing.contract"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
