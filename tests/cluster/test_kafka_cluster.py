"""Kafka on a 3-node cluster: replication factor 3, ``min.insync.replicas=2``.

- The topics hexbus creates are replicated on all three brokers with
  ``min.insync.replicas=2`` set on the topic (an ``acks=all`` ack = two copies at least).
- The broker leading the partition in use stops while 10,000 events of 50 keys stream
  (one publish at a time per key, each after the previous one's ack): every acked event
  is handled by the consumer process, which keeps going, and each key's events are
  handled in publish order (first occurrences; at-least-once may repeat one). One
  partition, so that every event of the stream crosses the leader change.
- Two of three brokers down: a publish fails within ``HEXBUS_PUBLISH_TIMEOUT`` with a
  ``PublishError`` that says why, and everything acked before the outage is delivered
  after it.
- A bootstrap list with a bad host still connects (through the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from clusters import Cluster, all_acknowledged_handled

from hexbus import EventBus, load_settings
from hexbus.domain.errors import PublishError
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.kafka import KafkaEventBus
from hexbus.testing import ConsumerProcesses, FaultEvent, eventually

pytestmark = pytest.mark.integration

OVERRIDES: dict[str, Any] = {"metadata_max_age_ms": 1000, "session_timeout_ms": 6000}
KEYS = 50
PER_KEY = 200  # 10,000 events
#: Seconds between one key's events: ~1,000 events/s in all, so the stream spans the stop.
PACE = 0.05
STREAM_PUBLISH_TIMEOUT = 5.0
OUTAGE_PUBLISH_TIMEOUT = 3.0
RECOVERY_TIMEOUT = 180.0
NODES = ["kafka-1", "kafka-2", "kafka-3"]


@dataclass
class Namespace:
    """One test's topic prefix and service name on the cluster; its buses and clean-up."""

    cluster: Cluster
    service: str
    partitions: int = 3
    buses: list[EventBus] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.service}."

    @property
    def topic(self) -> str:
        return self.prefix + FaultEvent.event_type

    def env(self, bootstrap: str | None = None) -> dict[str, str]:
        return {
            "HEXBUS_ADAPTER": "kafka",
            "HEXBUS_SERVICE_NAME": self.service,
            "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": bootstrap or self.cluster.kafka_bootstrap_servers,
            "HEXBUS_KAFKA_TOPIC_PREFIX": self.prefix,
            "HEXBUS_KAFKA_PARTITIONS": str(self.partitions),
            "HEXBUS_KAFKA_REPLICATION_FACTOR": "3",
            "HEXBUS_MAX_ATTEMPTS": "3",
            "HEXBUS_RETRY_DELAYS": "0.05,0.1",
            "HEXBUS_DRAIN_TIMEOUT": "10",
        }

    def build(self, *, bootstrap: str | None = None, publish_timeout: float = 10.0) -> EventBus:
        fields = {k.removeprefix("HEXBUS_").lower(): v for k, v in self.env(bootstrap).items()}
        bus = build_bus(load_settings(**fields, publish_timeout=publish_timeout), **OVERRIDES)
        self.buses.append(bus)
        return bus

    async def cleanup(self) -> None:
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.stop(), 60)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.cluster.kafka_bootstrap_servers)
        try:
            await asyncio.wait_for(admin.start(), 15)
            topics = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if topics:
                await asyncio.wait_for(admin.delete_topics(topics), 30)
        except Exception:  # clean-up must not hide the test's result
            pass
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


@pytest.fixture
async def ns(kafka_cluster: Cluster, unique_name: str) -> AsyncIterator[Namespace]:
    namespace = Namespace(kafka_cluster, unique_name)
    try:
        yield namespace
    finally:
        await namespace.cleanup()


async def _publish_in_key_order(
    bus: EventBus, events: list[FaultEvent], acked: set[str], failures: Counter[str]
) -> None:
    """Publish one key's events one by one, each after the previous one was acked
    (``PublishError``: send the same event again). The order a service keeps per key."""
    for event in events:
        while True:
            try:
                await bus.publish(event, key=event.key)
            except PublishError:
                failures[event.key] += 1
                await asyncio.sleep(0.1)
                continue
            acked.add(str(event.event_id))
            break
        await asyncio.sleep(PACE)


# -- the leader of the partitions in use stops mid-stream ------------------------------------


async def test_leader_stop_mid_stream_loses_no_acked_event_and_keeps_key_order(
    ns: Namespace, kafka_cluster: Cluster, tmp_path: Path, measured: Callable[[str], None]
) -> None:
    cluster = kafka_cluster
    ns.partitions = 1
    with ConsumerProcesses(tmp_path, env=ns.env(), overrides=OVERRIDES) as spawner:
        # The consumer creates the topic (replicated, see below) and joins its group.
        consumer = await spawner.spawn("consumer", FaultEvent)
        placement = await cluster.kafka_topic(ns.topic)
        assert sorted(placement) == [0], placement
        assert placement[0]["replicas"] == NODES, placement
        assert placement[0]["isr"] == NODES, placement
        assert (await cluster.kafka_topic_config(ns.topic)).get("min.insync.replicas") == "2"
        victim = placement[0]["leader"]
        assert victim in NODES, placement

        publisher = ns.build(publish_timeout=STREAM_PUBLISH_TIMEOUT)
        by_key = {
            f"aggregate-{k}": [FaultEvent(seq=s, key=f"aggregate-{k}") for s in range(PER_KEY)]
            for k in range(KEYS)
        }
        sent = {str(e.event_id): e for events in by_key.values() for e in events}
        acked: set[str] = set()
        failures: Counter[str] = Counter()
        await publisher.start()
        try:
            publishing = asyncio.gather(
                *(_publish_in_key_order(publisher, evs, acked, failures) for evs in by_key.values())
            )
            try:
                await eventually(
                    lambda: len(acked) >= 2_000 or publishing.done(),
                    timeout=RECOVERY_TIMEOUT,
                    message=lambda: f"2,000 acked before the stop ({len(acked)})",
                )
                assert not publishing.done(), "the stream ended before the leader stopped"
                handled_at_stop = len(set(consumer.handled()))
                stop_took = await cluster.stop(victim)
                acked_at_stop = len(acked)
                moved = await cluster.kafka_topic(ns.topic)
                began = time.monotonic()
                await asyncio.wait_for(asyncio.shield(publishing), 300)
                rest_took = time.monotonic() - began
            finally:
                if not publishing.done():
                    publishing.cancel()
                    await asyncio.gather(publishing, return_exceptions=True)
        finally:
            await publisher.stop()
        assert acked == set(sent)
        assert acked_at_stop < len(sent), "the stop did not hit the stream"
        assert moved[0]["leader"] in set(NODES) - {victim}, moved

        handled = await all_acknowledged_handled(
            consumer, acked, handled_at_stop, timeout=RECOVERY_TIMEOUT
        )
        # Per key, the first handling of each event follows the publish order.
        first_seen: dict[str, list[int]] = defaultdict(list)
        seen: set[str] = set()
        for event_id in handled:
            if event_id in seen:
                continue
            seen.add(event_id)
            event = sent[event_id]
            first_seen[event.key].append(event.seq)
        for key, seqs in first_seen.items():
            assert seqs == list(range(PER_KEY)), (key, seqs)
        start_took = await cluster.start(victim)

        async def back_in_sync() -> bool:
            placed = await cluster.kafka_topic(ns.topic)
            return all(p["isr"] == NODES for p in placed.values())

        await eventually(back_in_sync, timeout=60, interval=0.5, message=f"{victim} in sync")
    measured(
        f"kafka leader {victim} of the partition in use stopped after "
        f"{acked_at_stop} acked (stop {stop_took:.1f}s); the remaining "
        f"{len(sent) - acked_at_stop} in {rest_took:.1f}s; {sum(failures.values())} "
        f"publishes failed and were sent again; {len(handled) - len(set(handled))} "
        f"deliveries repeated; restart {start_took:.1f}s"
    )


# -- a majority of the brokers down -------------------------------------------------------------


async def test_majority_down_publish_fails_in_time_and_nothing_acked_is_lost(
    ns: Namespace, kafka_cluster: Cluster, measured: Callable[[str], None]
) -> None:
    cluster = kafka_cluster
    handled: list[str] = []

    async def record(event: FaultEvent) -> None:
        handled.append(str(event.event_id))

    publisher = ns.build(publish_timeout=OUTAGE_PUBLISH_TIMEOUT)
    before = [FaultEvent(seq=i, key=f"aggregate-{i % 10}") for i in range(1_000)]
    async with publisher:
        await publisher.publish_many(before)  # creates the topic; acked when it returns
        acked = {str(e.event_id) for e in before}
        down = ["kafka-3", "kafka-2"]
        stop_took = await cluster.stop(*down)
        try:
            outage = FaultEvent(seq=-1, key="aggregate-0")
            began = time.monotonic()
            with pytest.raises(PublishError) as info:
                # Hang guard only; the publish timeout is what must end it.
                await asyncio.wait_for(
                    publisher.publish(outage, key=outage.key), OUTAGE_PUBLISH_TIMEOUT * 3
                )
            took = time.monotonic() - began
            message = str(info.value)
            assert str(outage.event_id) in message
            assert ns.topic in message
            assert any(
                why in message
                for why in ("NotEnoughReplicas", "not enough in-sync replicas", "no leader")
            ), message
        finally:
            start_took = await cluster.start(*reversed(down))

    consumer = ns.build()
    consumer.subscribe(FaultEvent, record, name="recorder")
    async with consumer:
        await eventually(
            lambda: acked <= set(handled),
            timeout=RECOVERY_TIMEOUT,
            interval=0.2,
            message=lambda: f"{len(acked - set(handled))} of 1,000 acked events missing",
        )
    measured(
        f"kafka with 2 of 3 brokers down (stop {stop_took:.1f}s): PublishError after "
        f"{took:.2f}s (publish_timeout {OUTAGE_PUBLISH_TIMEOUT}s): {message}\n"
        f"the failed event was stored anyway: {str(outage.event_id) in handled}; "
        f"restart {start_took:.1f}s"
    )


# -- bad input: a bootstrap list with a bad host ---------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_bootstrap_list_with_a_bad_host_connects_through_the_others(
    ns: Namespace,
    kafka_cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
    measured: Callable[[str], None],
) -> None:
    bad = f"127.0.0.1:{_closed_port()}"
    handled: list[str] = []

    async def record(event: FaultEvent) -> None:
        handled.append(str(event.event_id))

    caplog.set_level(logging.WARNING)
    bus = ns.build(bootstrap=f"{bad},{kafka_cluster.kafka_bootstrap_servers}")
    assert isinstance(bus, KafkaEventBus)
    bus.subscribe(FaultEvent, record, name="recorder")
    async with bus:
        await bus.wait_ready(60)
        event = FaultEvent(seq=1, key="k")
        await bus.publish(event, key="k")
        await eventually(lambda: handled == [str(event.event_id)], timeout=60)
    # aiokafka tries the bootstrap hosts in random order; each failed one is logged by
    # name ('Unable connect to "host:port"'), and the bad one is the only one that fails.
    failed = [r.getMessage() for r in caplog.records if "Unable connect to" in r.getMessage()]
    assert all(f'"{bad}"' in message for message in failed), failed
    measured(f"kafka bootstrap with {bad} first: the clients tried it {len(failed)} time(s)")
