"""pytest plugin (entry point ``hexbus``): fixtures for testing code that uses hexbus.

Loaded automatically once hexbus is installed. Fixtures:

- ``event_bus``: a started ``InMemoryEventBus`` (await mode: handlers have finished when
  ``publish`` returns), stopped after the test.
- ``recording_bus``: a running ``RecordingEventBus`` (records, does not dispatch).
- ``rabbitmq_url``, ``kafka_bootstrap_servers``, ``unique_name``, ``make_unique_name``:
  from ``hexbus.testing.brokers``, registered as a plugin of its own when it imports
  (it needs nothing beyond pytest, but a broken or partial install must not stop the
  memory fixtures from loading).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from hexbus.infrastructure.memory import InMemoryEventBus
from hexbus.testing.recording import RecordingEventBus

__all__ = ["event_bus", "recording_bus"]

logger = logging.getLogger("hexbus.testing")

_BROKERS = "hexbus.testing.brokers"


def _optional_plugins() -> list[str]:
    """``[brokers module]`` when it exists and imports, else ``[]``.

    Registered through ``pytest_plugins`` (not re-imported fixture functions) so that a
    conftest that also names it (``tests/integration/conftest.py``) does not define the
    session-scoped broker fixtures twice: pytest registers a plugin module once by name.
    """
    if importlib.util.find_spec(_BROKERS) is None:
        return []
    try:
        importlib.import_module(_BROKERS)
    except ImportError as exc:  # optional deps missing: memory fixtures still work
        logger.debug("hexbus broker fixtures unavailable: %s", exc)
        return []
    return [_BROKERS]


pytest_plugins = _optional_plugins()


def _async_fixture() -> Callable[..., Any]:
    """``pytest_asyncio.fixture`` when installed (works in strict mode too)."""
    try:
        module = importlib.import_module("pytest_asyncio")
    except ImportError:  # pragma: no cover - pytest-asyncio is in the dev extra
        return pytest.fixture
    fixture: Callable[..., Any] = module.fixture
    return fixture


@_async_fixture()
async def event_bus() -> AsyncIterator[InMemoryEventBus]:
    """A started in-memory bus (await mode), stopped (drained) after the test."""
    bus = InMemoryEventBus(mode="await")
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


@pytest.fixture
def recording_bus() -> RecordingEventBus:
    """A running ``RecordingEventBus``: inject it, act, then ``assert_published(...)``."""
    return RecordingEventBus()
