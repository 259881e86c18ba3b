"""pytest plugin (entry point ``hexbus``): fixtures for testing code that uses hexbus.

Loaded automatically once hexbus is installed. Fixtures:

- ``event_bus``: a started ``InMemoryEventBus`` (await mode: handlers have finished when
  ``publish`` returns), stopped after the test.
- ``recording_bus``: a running ``RecordingEventBus`` (records, does not dispatch).
- ``rabbitmq_url``, ``kafka_bootstrap_servers``, ``postgres_url``, ``unique_name``,
  ``make_unique_name``: from ``hexbus.testing.brokers``, registered as a plugin of its
  own when it imports (it needs nothing beyond pytest, but a broken or partial install
  must not stop the memory fixtures from loading).
- ``sqlite_url``, ``postgres_database_url``, ``database_url`` (a database of the test's
  own; the last runs a test on SQLite and on PostgreSQL): from
  ``hexbus.testing.databases``, registered the same way.
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
_DATABASES = "hexbus.testing.databases"


def _optional_plugins() -> list[str]:
    """The broker and database fixture modules that exist and import.

    Registered through ``pytest_plugins`` (not re-imported fixture functions) so that a
    conftest that also names it (``tests/integration/conftest.py``) does not define the
    session-scoped broker fixtures twice: pytest registers a plugin module once by name.
    """
    plugins = []
    for name in (_BROKERS, _DATABASES):
        if importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:  # optional deps missing: memory fixtures still work
            logger.debug("hexbus fixtures of %s unavailable: %s", name, exc)
            continue
        plugins.append(name)
    return plugins


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
