"""Kafka bus makers of the integration tests (what is left of ``kafka_procs``).

The consumer subprocess, the restart helpers and the fault tests that lived here moved
to the shared fault suite: ``hexbus.testing.faults``, ``hexbus.testing.processes`` and
``tests/integration/test_faults.py``. ``BusMaker`` stays until the tests still importing
it (CLI) take it from elsewhere; then this package goes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from hexbus.infrastructure.kafka import KafkaConfig, KafkaEventBus

__all__ = ["BusMaker", "bus_maker_for", "delete_topics"]


async def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (test clean-up)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await asyncio.wait_for(admin.start(), 15)
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await asyncio.wait_for(admin.delete_topics(topics), 30)
    except Exception:  # clean-up is best effort
        pass
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


class BusMaker:
    """Builds ``KafkaEventBus``es sharing one test's topic prefix and service name."""

    def __init__(self, bootstrap_servers: str, unique: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.prefix = f"{unique}."
        self.service = unique
        self.buses: list[KafkaEventBus] = []

    def config(self, **overrides: Any) -> KafkaConfig:
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "topic_prefix": self.prefix,
            "service_name": self.service,
            "max_attempts": 3,
            "retry_backoff": 0.05,
            "drain_timeout": 10.0,
            "metadata_max_age_ms": 1000,
            "session_timeout_ms": 6000,
        }
        values.update(overrides)
        return KafkaConfig(**values)

    def __call__(self, **overrides: Any) -> KafkaEventBus:
        bus = KafkaEventBus(self.config(**overrides))
        self.buses.append(bus)
        return bus

    async def cleanup(self) -> None:
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.stop(), 60)
        await delete_topics(self.bootstrap_servers, self.prefix)


@asynccontextmanager
async def bus_maker_for(bootstrap_servers: str, unique: str) -> AsyncIterator[BusMaker]:
    """A ``BusMaker`` whose buses are stopped and topics deleted on exit."""
    maker = BusMaker(bootstrap_servers, unique)
    try:
        yield maker
    finally:
        await maker.cleanup()
