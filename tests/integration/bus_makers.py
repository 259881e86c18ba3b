"""Bus makers shared by the broker integration tests (contract, config, features, CLI).

Each builds buses sharing one test's namespace (RabbitMQ exchange and service name;
Kafka topic prefix and service name) and removes what they declared afterwards, so the
shared broker does not fill up with test queues and topics. The fixtures
``rabbit_bus_maker`` and ``kafka_bus_maker`` are in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aio_pika
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from hexbus import DomainEvent
from hexbus.infrastructure.kafka import KafkaConfig, KafkaEventBus
from hexbus.infrastructure.rabbitmq import RabbitMQConfig, RabbitMQEventBus

__all__ = ["KafkaBusMaker", "RabbitBusMaker", "RabbitTestEvent", "delete_topics", "read_topic"]


class RabbitTestEvent(DomainEvent, event_type="rabbitmq.fault.event"):
    """An event of the RabbitMQ integration tests; ``seq`` only helps reading failures."""

    seq: int


class RabbitBusMaker:
    """Builds ``RabbitMQEventBus``es sharing one test's unique exchange and service name."""

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


class KafkaBusMaker:
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
            "retry_delays": (0.05,),
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


async def read_topic(
    bootstrap_servers: str, topic: str, partitions: int, count: int = 0, timeout: float = 15.0
) -> list[Any]:
    """Every record on ``topic`` (at least ``count``), read from the beginning without a
    group up to the end offsets, in partition and offset order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    out: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        total = count
        while time.monotonic() < deadline:
            if len(out) >= total:  # anything beyond ``count`` already there is read too
                total = max(count, sum((await consumer.end_offsets(tps)).values()))
                if len(out) >= total:
                    break
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    assert total == len(out), (total, len(out))
    out.sort(key=lambda r: (r.partition, r.offset))
    return out
