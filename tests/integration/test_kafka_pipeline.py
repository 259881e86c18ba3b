"""The Kafka adapter on the shared publish and consume pipelines, against a real Kafka.

- admission: bad metadata is refused even when a middleware drops the event;
- unknown event types are dead-lettered (``unknown_type``), never skipped silently,
  while a registered type of another subscription on a shared topic is skipped;
- a dead letter after ``max_attempts`` failures: every field of the record, the retry
  delays (``retry_delays[n - 1]`` after attempt ``n``, the last repeating) and stale
  failure headers replaced;
- capabilities (``DeadLetterReader``, ``DeadLetterReplayer``, ``LagReporter``,
  ``SubscriptionAdmin``, ``Readiness``), ``delete_subscription`` (dead-letter, replay
  and marker topics) and ``wait_ready`` with ``auto_offset_reset="latest"``;
- pattern subscriptions read their own replay topic, never hexbus's topics of others.

Replay and lag end to end (with the CLI): ``test_replay_lag.py``.

Each test has its own topic prefix and service name; waits are deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from bus_makers import KafkaBusMaker, read_topic

from hexbus import DomainEvent, EventBus, current_context
from hexbus.application.handlers import SubscriptionTable
from hexbus.domain.errors import InvalidMetadataError
from hexbus.domain.events import EventRegistry
from hexbus.domain.ports import (
    DeadLetter,
    DeadLetterReader,
    DeadLetterReplayer,
    LagReporter,
    Readiness,
    SubscriptionAdmin,
)
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.dead_letters import FAILURE_HEADERS
from hexbus.infrastructure.kafka import KafkaEventBus
from hexbus.infrastructure.kafka.marshal import encode_record
from hexbus.infrastructure.kafka.topology import subscription_topics
from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration

SHARED = "kafkapipe.shared"


class PipeEvent(DomainEvent, event_type="kafkapipe.event"):
    seq: int


class PipeWanted(DomainEvent, event_type="kafkapipe.wanted"):
    kafka_topic: ClassVar[str] = SHARED
    seq: int


class PipeOther(DomainEvent, event_type="kafkapipe.other"):
    kafka_topic: ClassVar[str] = SHARED
    seq: int


#: The shared bus maker (``tests/integration/bus_makers.py``), under this module's name.
Buses = KafkaBusMaker


@pytest.fixture
def buses(kafka_bus_maker: KafkaBusMaker) -> KafkaBusMaker:
    return kafka_bus_maker


@contextlib.asynccontextmanager
async def admin_client(bootstrap_servers: str) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await asyncio.wait_for(admin.start(), 15)
    try:
        yield admin
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def list_topics(bootstrap_servers: str) -> set[str]:
    async with admin_client(bootstrap_servers) as admin:
        return set(await asyncio.wait_for(admin.list_topics(), 15))


async def produce_raw(
    bootstrap_servers: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> list[Any]:
    """Write (key, value, headers) records with aiokafka itself; their RecordMetadata."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await asyncio.wait_for(producer.start(), 15)
    try:
        return [
            await asyncio.wait_for(
                producer.send_and_wait(topic, value, key=key, headers=headers), 15
            )
            for key, value, headers in records
        ]
    finally:
        await producer.stop()


async def wait_dead_letters(
    bus: KafkaEventBus, name: str, count: int, timeout: float = 30.0
) -> list[DeadLetter]:
    letters: list[DeadLetter] = []

    async def arrived() -> bool:
        letters[:] = await bus.dead_letters(name)
        return len(letters) >= count

    await eventually(arrived, timeout=timeout, interval=0.2, message=lambda: f"{letters}")
    return letters


# -- publish: admission ---------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_bad_metadata_is_refused_even_when_middleware_drops_the_event(
    buses: Buses,
) -> None:
    bus = buses(partitions=1)
    dropped: list[str] = []

    def drop(event: DomainEvent) -> None:
        dropped.append(event.event_type)

    bus.add_middleware(drop)
    async with bus:
        with pytest.raises(InvalidMetadataError, match="'ip'"):
            await bus.publish(PipeEvent(seq=1), metadata={"ip": 1})  # type: ignore[dict-item]
        # Refused before the middleware ran; a valid publish is then dropped quietly.
        assert dropped == []
        await bus.publish(PipeEvent(seq=2), metadata={"ip": "10.0.0.1"})
        assert dropped == [PipeEvent.event_type]
        await bus.publish_many([PipeEvent(seq=3)])
        assert dropped == [PipeEvent.event_type] * 2
    assert bus.stats.published == 0
    assert bus.topic_for(PipeEvent) not in await list_topics(buses.bootstrap_servers)


# -- consume: unknown types ---------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_unknown_type_is_dead_lettered_and_the_consumer_carries_on(
    buses: Buses, kafka_bootstrap_servers: str
) -> None:
    seen: list[int] = []

    async def handle(event: PipeWanted) -> None:
        seen.append(event.seq)

    bus = buses(partitions=1)
    bus.subscribe(PipeWanted, handle, name="wanted")
    topic = bus.topic_for(PipeWanted)
    assert topic == buses.prefix + SHARED == bus.topic_for(PipeOther)
    async with bus:
        await bus.wait_ready(30)
        await bus.publish(PipeWanted(seq=1), key="k")
        await eventually(lambda: seen == [1], timeout=20, message=lambda: f"seen={seen}")

        other_headers, other_value = encode_record(
            CloudEventCodec(source="elsewhere"), PipeOther(seq=99)
        )
        unknown_headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", b"unknown-1"),
            ("ce_source", b"elsewhere"),
            ("ce_type", b"unknown.type.xyz"),
            ("content-type", b"application/json"),
        ]
        _, unknown = await produce_raw(
            kafka_bootstrap_servers,
            topic,
            [
                # A registered type this subscription does not want: a shared topic.
                (b"k", other_value, other_headers),
                # A type nobody registered: must not vanish.
                (b"k", b'{"x": 1}', unknown_headers),
            ],
        )
        # Published after both (one partition): seen only if the consumer carried on.
        await bus.publish(PipeWanted(seq=2), key="k")
        await eventually(lambda: seen == [1, 2], timeout=20, message=lambda: f"seen={seen}")
        letters = await wait_dead_letters(bus, "wanted", 1)
    assert seen == [1, 2]
    assert len(letters) == 1, letters  # the PipeOther record was skipped, not dead-lettered
    letter = letters[0]
    assert letter.reason == "unknown_type"
    assert letter.subscription == "wanted"
    assert letter.handler == "wanted"
    assert letter.event_id == "unknown-1"
    assert letter.event_type == "unknown.type.xyz"
    assert letter.attempts == 1
    assert letter.error is not None and "unknown.type.xyz" in letter.error
    assert letter.origin == f"{topic}[{unknown.partition}]@{unknown.offset}"
    assert letter.position == f"{bus.dlq_topic('wanted')}[0]@0"
    assert letter.body == b'{"x": 1}'
    assert bus.stats.dead_lettered == 1
    assert bus.stats.handled == 2


# -- consume: a dead letter after max_attempts ---------------------------------------------
@pytest.mark.timeout(90)
async def test_dead_letter_after_max_attempts_carries_the_failure_record(
    buses: Buses, kafka_bootstrap_servers: str
) -> None:
    attempts_at: list[float] = []

    async def fail(event: PipeEvent) -> None:
        attempts_at.append(time.monotonic())
        raise RuntimeError(f"boom {event.seq}")

    bus = buses(partitions=1, max_attempts=4, retry_delays=(0.1, 0.5))
    bus.subscribe(PipeEvent, fail, name="failing")
    topic = bus.topic_for(PipeEvent)
    dlq = bus.dlq_topic("failing")
    event = PipeEvent(seq=7)
    headers, value = encode_record(bus.codec, event, {"tenant": "acme"})
    # Left over from an earlier dead-lettering: replaced, never duplicated.
    stale = [("x-hexbus-reason", b"stale"), ("x-hexbus-attempts", b"99")]
    async with bus:
        await bus.wait_ready(30)
        (sent,) = await produce_raw(
            kafka_bootstrap_servers, topic, [(b"order-1", value, headers + stale)]
        )
        letters = await wait_dead_letters(bus, "failing", 1)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.subscription == "failing"
    assert letter.reason == "handler_failed"
    assert letter.attempts == 4
    assert letter.handler == "failing"
    assert letter.error == "RuntimeError: boom 7"
    assert letter.origin == f"{topic}[{sent.partition}]@{sent.offset}"
    assert letter.position == f"{dlq}[0]@0"
    assert letter.event_id == str(event.event_id)
    assert letter.event_type == PipeEvent.event_type
    assert letter.body == value
    assert letter.failed_at is not None
    assert datetime.fromisoformat(letter.failed_at).tzinfo is not None
    assert letter.headers["ce_tenant"] == b"acme"

    # The wire record: same key, value and original headers; each failure header once.
    (record,) = await read_topic(kafka_bootstrap_servers, dlq, bus.config.partitions)
    assert record.key == b"order-1"
    assert record.value == value
    names = [name for name, _ in record.headers]
    assert [h for h in record.headers if h[0] not in FAILURE_HEADERS] == headers
    assert sorted(n for n in names if n in FAILURE_HEADERS) == sorted(FAILURE_HEADERS)
    assert dict(record.headers)["x-hexbus-reason"] == b"handler_failed"

    # Attempt n waits retry_delays[n - 1], the last delay repeating (not doubling).
    assert len(attempts_at) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert all(gap >= want - 0.02 for gap, want in zip(gaps, (0.1, 0.5, 0.5), strict=True)), gaps
    stats = bus.stats
    assert (stats.failed, stats.retried, stats.dead_lettered, stats.handled) == (4, 3, 1, 0)


# -- replay ------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_a_replay_that_fails_again_keeps_key_headers_and_first_origin(
    buses: Buses, kafka_bootstrap_servers: str
) -> None:
    """Replayed while the handler still fails: the copy in the replay topic has the
    original key, value and headers (no failure record but the origin), runs from attempt
    1, and its new dead letter names the first origin; the old one is marked, so exactly
    one dead letter is listed."""
    attempts: list[int] = []

    async def fail(event: PipeEvent) -> None:
        attempts.append(current_context().attempt)
        raise RuntimeError(f"still broken {event.seq}")

    bus = buses(partitions=1, max_attempts=2, retry_delays=(0.01,))
    bus.subscribe(PipeEvent, fail, name="stubborn")
    event = PipeEvent(seq=3)
    async with bus:
        await bus.wait_ready(30)
        await bus.publish(event, key="order-9", metadata={"tenant": "acme"})
        (first,) = await wait_dead_letters(bus, "stubborn", 1)
        assert attempts == [1, 2]
        attempts.clear()

        report = await bus.replay_dead_letters("stubborn")
        assert [d.position for d in report.replayed] == [first.position]

        async def failed_again() -> bool:
            return (await bus.dead_letters("stubborn"))[0].position != first.position

        await eventually(failed_again, timeout=30, interval=0.2)
        (again,) = await bus.dead_letters("stubborn")
    assert attempts == [1, 2], "a replay must start again at attempt 1"
    assert again.origin == first.origin, "the replay lost the origin"
    assert again.position == f"{bus.dlq_topic('stubborn')}[0]@1"
    assert (again.event_id, again.attempts, again.body) == (first.event_id, 2, first.body)
    (copy,) = await read_topic(kafka_bootstrap_servers, bus.replay_topic("stubborn"), 1)
    assert copy.key == b"order-9"
    assert copy.value == first.body
    assert dict(copy.headers)["ce_tenant"] == b"acme"
    failure = [name for name, _ in copy.headers if name in FAILURE_HEADERS]
    assert failure == ["x-hexbus-origin"]
    assert dict(copy.headers)["x-hexbus-origin"] == (first.origin or "").encode()


# -- capabilities ----------------------------------------------------------------------------
async def test_capabilities_are_public_protocols(buses: Buses) -> None:
    bus = buses()
    assert isinstance(bus, EventBus)
    assert isinstance(bus, DeadLetterReader)
    assert isinstance(bus, SubscriptionAdmin)
    assert isinstance(bus, Readiness)
    # Replays go through a replay topic that only the subscription's own group reads.
    assert isinstance(bus, DeadLetterReplayer)
    assert isinstance(bus, LagReporter)
    assert bus.subscription_address("orders") == f"consumer group '{buses.service}.orders'"
    assert bus.group_id("orders") == f"{buses.service}.orders"
    assert bus.dlq_topic("orders") == f"{buses.prefix}{buses.service}.orders.dlq"
    assert bus.replay_topic("orders") == f"{buses.prefix}{buses.service}.orders.replay"


def test_a_pattern_reads_its_own_replay_topic_and_no_internal_topic_of_others() -> None:
    """``#`` matches every topic of the prefix, except hexbus's dead-letter, replay and
    marker topics, of which it reads only its own replay topic."""

    async def handle(event: Any) -> None:
        return None

    table = SubscriptionTable()
    table.add("#", handle, "all")
    own = "p.svc.all.replay"
    topics, pattern = subscription_topics("p.", list(table), EventRegistry(), own=[own])
    assert topics == set() and pattern is not None
    regex = re.compile(pattern)
    for topic in ("p.user.created", "p.orders", own):
        assert regex.fullmatch(topic), topic
    for topic in (
        "p.svc.all.dlq",
        "p.svc.other.replay",
        "p.svc.other.dlq",
        "p.svc.all.dlq.replayed",
        "q.user.created",
    ):
        assert not regex.fullmatch(topic), topic


@pytest.mark.timeout(90)
async def test_delete_subscription_stops_the_group_and_deletes_its_own_topics(
    buses: Buses, kafka_bootstrap_servers: str
) -> None:
    seen: list[int] = []
    kept: list[int] = []

    async def doomed(event: PipeEvent) -> None:
        seen.append(event.seq)

    async def keeper(event: PipeEvent) -> None:
        kept.append(event.seq)

    bus = buses(partitions=1)
    bus.subscribe(PipeEvent, doomed, name="doomed")
    bus.subscribe(PipeEvent, keeper, name="keeper")
    dlq = bus.dlq_topic("doomed")
    replay = bus.replay_topic("doomed")
    async with bus:
        await bus.wait_ready(30)
        assert {dlq, replay} <= await list_topics(kafka_bootstrap_servers)
        await bus.publish(PipeEvent(seq=1))
        await eventually(lambda: seen == [1] and kept == [1], timeout=20)

        left = await bus.delete_subscription("doomed")

        assert "doomed" not in bus.groups
        assert bus.subscriptions.names() == ["keeper"]
        # Kafka deletes topics asynchronously: poll the broker's list.
        async def gone() -> bool:
            return not {dlq, replay} & await list_topics(kafka_bootstrap_servers)

        await eventually(gone, timeout=30, interval=0.2)
        # The group: deleted where aiokafka can, else named as left behind.
        if hasattr(AIOKafkaAdminClient, "delete_consumer_groups"):
            assert left == []
        else:
            assert len(left) == 1
            assert f"consumer group {bus.group_id('doomed')!r}" in left[0]
            assert "offsets.retention.minutes" in left[0]
        # The event topic stays (other subscriptions read it), and so does "keeper".
        assert bus.topic_for(PipeEvent) in await list_topics(kafka_bootstrap_servers)
        await bus.wait_ready(30)
        await bus.publish(PipeEvent(seq=2))
        await eventually(lambda: kept == [1, 2], timeout=20, message=lambda: f"kept={kept}")
    assert seen == [1]
    # An unknown subscription has no dead letters (its topic does not exist).
    assert await bus.dead_letters("doomed") == []


# -- readiness ---------------------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_wait_ready_resolves_latest_offsets_so_nothing_after_it_is_missed(
    buses: Buses,
) -> None:
    seen: list[int] = []

    async def handle(event: PipeEvent) -> None:
        seen.append(event.seq)

    publisher = buses(partitions=3)
    live = buses(partitions=3, auto_offset_reset="latest")
    live.subscribe(PipeEvent, handle, name="live")
    async with publisher:
        await publisher.publish(PipeEvent(seq=0))  # before the group existed: not for it
        async with live:
            await live.wait_ready(30)
            await publisher.publish_many([PipeEvent(seq=i) for i in range(1, 6)])
            await eventually(
                lambda: sorted(seen) == [1, 2, 3, 4, 5],
                timeout=20,
                message=lambda: f"seen={seen}",
            )
    assert sorted(seen) == [1, 2, 3, 4, 5]


# -- stop during a retry back-off ------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_stop_cuts_a_retry_back_off_short_and_leaves_the_record_for_redelivery(
    buses: Buses,
) -> None:
    failures: list[int] = []
    second: list[int] = []

    async def failing(event: PipeEvent) -> None:
        failures.append(event.seq)
        raise RuntimeError("not yet")

    async def fine(event: PipeEvent) -> None:
        second.append(event.seq)

    first = buses(partitions=1, retry_delays=(60.0,), drain_timeout=20.0)
    first.subscribe(PipeEvent, failing, name="patient")
    await first.start()
    await first.wait_ready(30)
    await first.publish(PipeEvent(seq=5))
    await eventually(lambda: failures == [5], timeout=20, message=lambda: f"{failures}")
    started = time.monotonic()
    await asyncio.wait_for(first.stop(), 30)
    # The 60 s back-off was abandoned, not waited for (nor the 20 s drain timeout).
    assert time.monotonic() - started < 10
    stats = first.stats
    assert (stats.failed, stats.retried, stats.dead_lettered, stats.requeued) == (1, 0, 0, 1)
    assert await first.dead_letters("patient") == []

    # Not committed: the group's next member gets the record again, from attempt 1.
    again = buses(partitions=1)
    again.subscribe(PipeEvent, fine, name="patient")
    async with again:
        await eventually(lambda: second == [5], timeout=30, message=lambda: f"{second}")
