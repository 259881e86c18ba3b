"""The fault suite (``hexbus.testing.EventBusFaultSuite``) against real RabbitMQ and Kafka.

Both adapters run the same scenarios (broker restart mid-stream, consumer SIGKILL, a
member's work taken over, poison handler, undecodable records, ``stop()`` with handlers
in flight); what differs is declared in ``FaultCapabilities`` and the hooks. Buses of a
test share one namespace (exchange / topic prefix and service name) of their own, and
are built as a service builds them: ``build_bus(load_settings(...))`` from the same
``HEXBUS_*`` settings the consumer processes get. Kafka-only scenarios (per-key order
over 50 keys, a poison pill and undecodable records on one partition) follow the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from hexbus import EventBus, load_settings
from hexbus.domain.ports import DeadLetter
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.dead_letters import FAILURE_HEADERS, header_text
from hexbus.infrastructure.rabbitmq.topology import subscription_queues, work_queue_name
from hexbus.testing import (
    ConsumerProcesses,
    EventBusFaultSuite,
    FaultBusFactory,
    FaultCapabilities,
    FaultEvent,
    Undecodable,
    eventually,
)
from hexbus.testing.faults import (
    FAULT_SUBSCRIPTIONS,
    require_restartable_broker,
    restart_test_broker,
)

pytestmark = pytest.mark.integration

#: Short back-off (RabbitMQ tiers / Kafka in-process doubling from 0.05 s up to 0.1 s).
RETRY_DELAYS = (0.05, 0.1)


@dataclass
class Namespace:
    """One test's ``HEXBUS_*`` settings, shared by its buses and consumer processes."""

    env: dict[str, str]
    #: Adapter config fields that have no setting (passed to ``build_bus``).
    overrides: dict[str, Any]
    buses: list[EventBus] = field(default_factory=list)

    def build(
        self, *, drain_timeout: float | None = None, publish_timeout: float | None = None
    ) -> EventBus:
        fields: dict[str, Any] = {
            name.removeprefix("HEXBUS_").lower(): v for name, v in self.env.items()
        }
        if drain_timeout is not None:
            fields["drain_timeout"] = drain_timeout
        if publish_timeout is not None:
            fields["publish_timeout"] = publish_timeout
        bus = build_bus(load_settings(**fields), **self.overrides)
        self.buses.append(bus)
        return bus

    async def stop_buses(self) -> None:
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.stop(), 60)


def _common_env(unique: str, adapter: str) -> dict[str, str]:
    return {
        "HEXBUS_ADAPTER": adapter,
        "HEXBUS_SERVICE_NAME": unique,
        "HEXBUS_MAX_ATTEMPTS": "3",
        "HEXBUS_RETRY_DELAYS": ",".join(str(d) for d in RETRY_DELAYS),
        "HEXBUS_DRAIN_TIMEOUT": "10",
    }


class _Hooks(EventBusFaultSuite):
    """What both adapters' hooks share: the namespace, the factory, the processes."""

    @pytest.fixture
    def bus_factory(self, namespace: Namespace) -> FaultBusFactory:
        async def make(
            *, drain_timeout: float | None = None, publish_timeout: float | None = None
        ) -> EventBus:
            return namespace.build(drain_timeout=drain_timeout, publish_timeout=publish_timeout)

        return make

    @pytest.fixture
    def consumer_process(self, namespace: Namespace, tmp_path: Path) -> Iterator[ConsumerProcesses]:
        env, overrides = namespace.env, namespace.overrides
        with ConsumerProcesses(tmp_path, env=env, overrides=overrides) as spawner:
            yield spawner


# -- RabbitMQ ------------------------------------------------------------------------------


class TestRabbitMQFaults(_Hooks):
    capabilities = FaultCapabilities(
        broker_restart=True,
        durable=True,
        consumer_processes=True,
        undecodable=True,
        dead_letter=True,
        replay=True,
        concurrent_deliveries=True,
        # RabbitMQ (3.10, quorum queues) may apply acks sent just before a channel closes
        # after the close and requeue those messages: after stop() an event its handler
        # finished can come once more (at-least-once). Raw aio-pika does the same.
        acked_on_stop=False,
        max_attempts=3,
    )
    adapter_name = "rabbitmq"
    restart_publish_timeout = 3.0
    # Set by the ``namespace`` fixture (pytest runs it on the test's own instance).
    url: str
    port: int
    exchange: str
    ns: Namespace

    @pytest.fixture
    async def namespace(self, rabbitmq_url: str, unique_name: str) -> AsyncIterator[Namespace]:
        self.url = rabbitmq_url
        self.port = urlsplit(rabbitmq_url).port or 5672
        self.exchange = f"{unique_name}.events"
        self.ns = Namespace(
            {
                **_common_env(unique_name, "rabbitmq"),
                "HEXBUS_RABBITMQ_URL": rabbitmq_url,
                "HEXBUS_RABBITMQ_EXCHANGE": self.exchange,
            },
            {"reconnect_interval": 0.5},
        )
        try:
            yield self.ns
        finally:
            await self.ns.stop_buses()
            await self._delete_broker_objects(unique_name)

    async def _delete_broker_objects(self, service: str) -> None:
        """Every queue of the suite's subscriptions and the exchange (shared broker)."""
        connection = await aio_pika.connect(self.url)
        async with connection:
            for name in FAULT_SUBSCRIPTIONS:
                for queue in subscription_queues(work_queue_name(service, name), RETRY_DELAYS):
                    channel = await connection.channel()
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.queue_delete(queue)
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.close()
            channel = await connection.channel()
            await channel.exchange_delete(self.exchange)

    async def prepare_restart(self) -> None:
        await require_restartable_broker("rabbitmq", self.port)

    async def restart_broker(self) -> None:
        await restart_test_broker("rabbitmq", self.port)

    async def inject_undecodable(self, bus: EventBus, subscription: str) -> Sequence[Undecodable]:
        """Garbage bytes, an unknown type and invalid data, sent with raw aio-pika."""
        garbage = b"\x00\xff\xfe not a cloud event \x81"
        unknown_id, invalid_id = str(uuid.uuid4()), str(uuid.uuid4())

        def envelope(event_id: str, event_type: str) -> dict[str, Any]:
            return {
                "cloudEvents:specversion": "1.0",
                "cloudEvents:id": event_id,
                "cloudEvents:type": event_type,
                "cloudEvents:source": "a-foreign-service",
            }

        routing_key = FaultEvent.event_type
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(self.exchange)
            await exchange.publish(
                aio_pika.Message(garbage, message_id="garbage"), routing_key=routing_key
            )
            await exchange.publish(
                aio_pika.Message(
                    b'{"x": 1}',
                    headers=envelope(unknown_id, "faults.unknown"),
                    content_type="application/json",
                    message_id=unknown_id,
                ),
                routing_key=routing_key,
            )
            await exchange.publish(
                aio_pika.Message(
                    b'{"seq": "not a number"}',
                    headers=envelope(invalid_id, FaultEvent.event_type),
                    content_type="application/json",
                    message_id=invalid_id,
                ),
                routing_key=routing_key,
            )
        return [
            Undecodable(garbage, "malformed", event_id="garbage"),
            Undecodable(
                b'{"x": 1}', "unknown_type", event_id=unknown_id, error_contains="faults.unknown"
            ),
            Undecodable(b'{"seq": "not a number"}', "invalid_data", event_id=invalid_id),
        ]

    def check_dead_letter(self, letter: DeadLetter, event: FaultEvent) -> None:
        # The origin is the routing key it was published with (not the retry tier's).
        assert letter.origin == FaultEvent.event_type, letter.origin
        assert header_text(letter.headers.get("cloudEvents:id")) == str(event.event_id)
        assert header_text(letter.headers.get("cloudEvents:type")) == FaultEvent.event_type


# -- Kafka ---------------------------------------------------------------------------------

_ORIGIN = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)$")


def _origin(letter: DeadLetter) -> tuple[str, int, int]:
    """``topic[partition]@offset`` of a Kafka dead letter, parsed."""
    match = _ORIGIN.match(letter.origin or "")
    assert match is not None, f"not topic[partition]@offset: {letter.origin!r}"
    return match["topic"], int(match["partition"]), int(match["offset"])


async def _delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (best effort clean-up)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await asyncio.wait_for(admin.start(), 15)
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await asyncio.wait_for(admin.delete_topics(topics), 30)
    except Exception:  # clean-up must not hide the test's own result
        pass
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


class TestKafkaFaults(_Hooks):
    capabilities = FaultCapabilities(
        broker_restart=True,
        durable=True,
        consumer_processes=True,
        undecodable=True,
        dead_letter=True,
        # Through the subscription's replay topic (its group only), marked as replayed.
        replay=True,
        concurrent_deliveries=False,
        max_attempts=3,
    )
    adapter_name = "kafka"
    # Set by the ``namespace`` fixture (pytest runs it on the test's own instance).
    bootstrap: str
    port: int
    prefix: str
    ns: Namespace

    @pytest.fixture
    async def namespace(
        self, kafka_bootstrap_servers: str, unique_name: str
    ) -> AsyncIterator[Namespace]:
        self.bootstrap = kafka_bootstrap_servers
        self.port = int(kafka_bootstrap_servers.split(",", maxsplit=1)[0].rpartition(":")[2])
        self.prefix = f"{unique_name}."
        self.ns = Namespace(
            {
                **_common_env(unique_name, "kafka"),
                "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
                "HEXBUS_KAFKA_TOPIC_PREFIX": self.prefix,
            },
            {"metadata_max_age_ms": 1000, "session_timeout_ms": 6000},
        )
        try:
            yield self.ns
        finally:
            await self.ns.stop_buses()
            await _delete_topics(kafka_bootstrap_servers, self.prefix)

    def topic(self, event_type: type[FaultEvent]) -> str:
        """The topic of an event type: the namespace's prefix + its wire name."""
        return self.prefix + event_type.event_type

    async def prepare_restart(self) -> None:
        await require_restartable_broker("kafka", self.port)

    async def restart_broker(self) -> None:
        await restart_test_broker("kafka", self.port)

    async def _send_raw(self, records: Sequence[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
        """Write ``(value, headers)`` records to FaultEvent's topic, key ``k``, raw aiokafka."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for value, headers in records:
                await producer.send_and_wait(
                    self.topic(FaultEvent), value, key=b"k", headers=headers
                )
        finally:
            await producer.stop()

    @staticmethod
    def _envelope(event_id: str, event_type: str) -> list[tuple[str, bytes]]:
        return [
            ("ce_specversion", b"1.0"),
            ("ce_id", event_id.encode()),
            ("ce_type", event_type.encode()),
            ("ce_source", b"elsewhere"),
            ("content-type", b"application/json"),
        ]

    async def inject_undecodable(self, bus: EventBus, subscription: str) -> Sequence[Undecodable]:
        """Garbage bytes, an unknown type and invalid data, written with raw aiokafka to
        the partition (key ``k``) the suite's good events use."""
        garbage = b"\x00\xff this is not json"
        unknown_id, invalid_id = str(uuid.uuid4()), str(uuid.uuid4())
        await self._send_raw(
            [
                (garbage, []),
                (b'{"x": 1}', self._envelope(unknown_id, "faults.unknown")),
                (b'{"seq": "not a number"}', self._envelope(invalid_id, FaultEvent.event_type)),
            ]
        )
        return [
            Undecodable(garbage, "malformed"),
            Undecodable(
                b'{"x": 1}', "unknown_type", event_id=unknown_id, error_contains="faults.unknown"
            ),
            Undecodable(b'{"seq": "not a number"}', "invalid_data", event_id=invalid_id),
        ]

    def check_dead_letter(self, letter: DeadLetter, event: FaultEvent) -> None:
        topic, _, _ = _origin(letter)
        assert topic == self.topic(FaultEvent)
        assert header_text(letter.headers.get("ce_id")) == str(event.event_id)
        assert header_text(letter.headers.get("ce_type")) == FaultEvent.event_type

    async def _key_at(self, position: str | None) -> bytes | None:
        """The key of the record at ``topic[partition]@offset`` (read with raw aiokafka)."""
        match = _ORIGIN.match(position or "")
        assert match is not None, f"not topic[partition]@offset: {position!r}"
        partition = TopicPartition(match["topic"], int(match["partition"]))
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([partition])
            consumer.seek(partition, int(match["offset"]))
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        assert record.offset == int(match["offset"])
        return record.key

    # -- Kafka only ------------------------------------------------------------------------
    async def test_keyed_events_arrive_in_per_key_publish_order(
        self, bus_factory: FaultBusFactory
    ) -> None:
        """1,000 events over 50 keys, published concurrently per key, arrive in key order."""
        seen: dict[str, list[int]] = defaultdict(list)

        async def record(event: FaultEvent) -> None:
            seen[event.key].append(event.seq)
            await asyncio.sleep(0)  # let partitions interleave

        bus = await self.make_bus(bus_factory)
        bus.subscribe(FaultEvent, record, name="ordered")
        keys = [f"aggregate-{k}" for k in range(50)]

        async def publish_key(key: str) -> None:
            for seq in range(20):
                await bus.publish(FaultEvent(seq=seq, key=key), key=key)

        async with self.running(bus):
            await asyncio.gather(*(publish_key(k) for k in keys))
            await eventually(
                lambda: sum(len(v) for v in seen.values()) >= 1_000,
                timeout=60,
                message=lambda: f"{sum(len(v) for v in seen.values())} of 1000 handled",
            )
        assert set(seen) == set(keys)
        for key in keys:
            assert seen[key] == list(range(20)), (key, seen[key])

    async def test_poison_and_garbage_on_one_partition_keep_the_partition_going(
        self, bus_factory: FaultBusFactory
    ) -> None:
        """A poison pill, garbage and invalid data between good events of one key: each
        bad record is a dead letter pointing at its offset; the good ones are handled,
        in order, behind them."""
        handled: list[int] = []

        async def handler(event: FaultEvent) -> None:
            if event.seq == 13:
                raise ValueError("poison pill 13")
            handled.append(event.seq)

        bus = await self.make_bus(bus_factory)
        bus.subscribe(FaultEvent, handler, name="poisoned")
        junk = b"\x00\xff this is not json"
        bad_body = b'{"seq": "not a number"}'
        invalid_id = "0190f0f0-0000-7000-8000-000000000001"
        poison = FaultEvent(seq=13, key="k")
        letters: list[DeadLetter] = []

        async def three_letters() -> bool:
            letters[:] = await self.letters(bus, "poisoned")
            return len(letters) >= 3

        async with self.running(bus):
            await bus.publish(FaultEvent(seq=12, key="k"), key="k")
            await bus.publish(poison, key="k")
            await self._send_raw(
                [(junk, []), (bad_body, self._envelope(invalid_id, FaultEvent.event_type))]
            )
            await bus.publish(FaultEvent(seq=14, key="k"), key="k")
            await eventually(lambda: 14 in handled, timeout=30, message=lambda: f"{handled}")
            await eventually(three_letters, timeout=30, interval=0.2, message=lambda: f"{letters}")
            counters = self.counters(bus)
            assert counters is not None
            assert counters.dead_lettered == 3
        assert handled == [12, 14]
        # dead_letters() works on a stopped bus too.
        by_body = {x.body: x for x in await self.letters(bus, "poisoned")}
        assert len(by_body) == 3, by_body
        pill = by_body[self.original_body(poison)]
        assert pill.event_id == str(poison.event_id)
        assert pill.attempts == 3
        assert pill.reason == "handler_failed"
        assert "poison pill 13" in (pill.error or "")
        assert pill.handler == "poisoned"
        pill_topic, pill_partition, pill_offset = _origin(pill)
        assert pill_topic == self.topic(FaultEvent)
        assert header_text(pill.headers.get("ce_type")) == FaultEvent.event_type
        # The dead-letter record keeps the original key (so a replay keeps the partition).
        assert await self._key_at(pill.position) == b"k"
        garbage = by_body[junk]
        assert garbage.attempts == 1
        assert garbage.reason == "malformed"
        assert "DecodeError(malformed)" in (garbage.error or "")
        # The garbage record had no headers: all its dead letter carries is the failure.
        assert set(garbage.headers) <= set(FAILURE_HEADERS), garbage.headers
        invalid = by_body[bad_body]
        assert invalid.reason == "invalid_data"
        assert "DecodeError(invalid_data)" in (invalid.error or "")
        assert invalid.event_id == invalid_id
        # One partition (one key): junk right after the pill, the invalid record after it.
        assert _origin(garbage) == (pill_topic, pill_partition, pill_offset + 1)
        assert _origin(invalid) == (pill_topic, pill_partition, pill_offset + 2)
