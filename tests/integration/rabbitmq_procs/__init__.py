"""RabbitMQ bus makers of the integration tests (what is left of ``rabbitmq_procs``).

The consumer subprocess and the fault tests that lived here moved to the shared fault
suite: ``hexbus.testing.faults`` (scenarios), ``hexbus.testing.processes`` (the one
consumer-process helper) and ``tests/integration/test_faults.py``. ``BusMaker`` and
``FaultEvent`` stay until the tests still importing them (contract, config, CLI) take
them from elsewhere; then this package goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from hexbus import DomainEvent
from hexbus.infrastructure.rabbitmq import RabbitMQConfig, RabbitMQEventBus

__all__ = ["BusMaker", "FaultEvent", "bus_maker"]


class FaultEvent(DomainEvent, event_type="rabbitmq.fault.event"):
    """An event of the RabbitMQ config tests; ``seq`` only helps reading failures."""

    seq: int


class BusMaker:
    """Builds ``RabbitMQEventBus``es sharing one test's unique exchange and service name.

    On clean-up every bus is stopped and every queue they declared and the exchange are
    deleted, so the shared broker does not fill up with test queues.
    """

    def __init__(self, url: str, unique: str) -> None:
        self.url = url
        self.exchange = f"{unique}.events"
        self.service = unique
        self.buses: list[RabbitMQEventBus] = []

    def config(self, **overrides: Any) -> RabbitMQConfig:
        values: dict[str, Any] = {
            "url": self.url,
            "exchange": self.exchange,
            "service_name": self.service,
            "max_attempts": 3,
            "retry_delays": (0.05, 0.1),
            "reconnect_interval": 0.5,
            "drain_timeout": 10.0,
        }
        values.update(overrides)
        return RabbitMQConfig(**values)

    def __call__(self, **overrides: Any) -> RabbitMQEventBus:
        bus = RabbitMQEventBus(self.config(**overrides))
        self.buses.append(bus)
        return bus

    async def cleanup(self) -> None:
        queues: set[str] = set()
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await bus.stop()
            queues |= bus.declared_queues
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            for name in sorted(queues):
                await channel.queue_delete(name)
            await channel.exchange_delete(self.exchange)


@pytest.fixture
async def bus_maker(rabbitmq_url: str, unique_name: str) -> AsyncIterator[BusMaker]:
    maker = BusMaker(rabbitmq_url, unique_name)
    try:
        yield maker
    finally:
        await maker.cleanup()
