"""Kafka fault tests: broker restart, a killed group member, ordering, poison, stop().

Every assertion is on *sets of event ids*: "every event Kafka acked was handled at least
once". Consumers that must survive a fault run in another process
(``kafka_procs/consumer.py``) and append each id to a file before their handler returns,
i.e. before the offset commit, so a crash can repeat an id but never drop one.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from kafka_procs import (
    BusMaker,
    ConsumerProcess,
    KafkaFaultEvent,
    bus_maker_for,
    ensure_kafka_up,
    publish_until_acked,
    read_ids,
    restart_kafka,
)

from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus_maker(kafka_bootstrap_servers: str, unique_name: str) -> AsyncIterator[BusMaker]:
    async with bus_maker_for(kafka_bootstrap_servers, unique_name) as maker:
        yield maker


def _missing(acked: set[str], *files: Path) -> set[str]:
    handled: set[str] = set()
    for path in files:
        handled.update(read_ids(path))
    return acked - handled


@pytest.mark.timeout(300)
async def test_broker_restart_while_streaming_loses_no_acked_event(
    bus_maker: BusMaker, kafka_bootstrap_servers: str, tmp_path: Path
) -> None:
    """10,000 events flow to a consumer process while the broker restarts."""
    out = tmp_path / "handled.txt"
    consumer = ConsumerProcess(kafka_bootstrap_servers, bus_maker.prefix, bus_maker.service, out)
    consumer.start()
    publisher = bus_maker(publish_timeout=5.0)
    events = [KafkaFaultEvent(seq=i) for i in range(10_000)]
    acked: set[str] = set()
    try:
        await publisher.start()
        publishing = asyncio.create_task(
            publish_until_acked(publisher, events, acked, window=100, pause=0.05)
        )
        await eventually(lambda: len(acked) >= 2_000, timeout=60, message="first 2,000 acked")
        restarted = await asyncio.to_thread(restart_kafka)
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        restart_seen_at = len(acked)
        failures = await asyncio.wait_for(publishing, 240)
        assert len(acked) == len(events)
        await eventually(
            lambda: not _missing(acked, out),
            timeout=120,
            interval=0.5,
            message=lambda: f"{len(_missing(acked, out))} acked events never handled; "
            f"consumer alive={consumer.alive()} {consumer.stderr()[-1500:]}",
        )
        assert consumer.alive(), consumer.stderr()
        # The restart really hit the stream (not before or after it).
        assert restart_seen_at < len(events), (restart_seen_at, failures)
    finally:
        ensure_kafka_up(kafka_bootstrap_servers)
        consumer.terminate()


@pytest.mark.timeout(240)
async def test_killed_group_member_partitions_are_taken_over(
    bus_maker: BusMaker, kafka_bootstrap_servers: str, tmp_path: Path
) -> None:
    """Two consumer processes in one group; SIGKILL one mid-stream; nothing is lost."""
    out_a, out_b = tmp_path / "a.txt", tmp_path / "b.txt"
    member_a = ConsumerProcess(
        kafka_bootstrap_servers, bus_maker.prefix, bus_maker.service, out_a, delay=0.002
    )
    member_b = ConsumerProcess(
        kafka_bootstrap_servers, bus_maker.prefix, bus_maker.service, out_b, delay=0.002
    )
    publisher = bus_maker()
    events = [KafkaFaultEvent(seq=i) for i in range(3_000)]
    acked: set[str] = set()
    try:
        member_a.start()
        member_b.start()
        await publisher.start()
        publishing = asyncio.create_task(
            publish_until_acked(publisher, events, acked, window=50, pause=0.05)
        )
        await eventually(
            lambda: len(read_ids(out_a)) >= 50 and len(read_ids(out_b)) >= 50,
            timeout=60,
            message=lambda: f"both members working: a={len(read_ids(out_a))} "
            f"b={len(read_ids(out_b))}",
        )
        member_a.kill()
        killed_after = len(read_ids(out_a))
        await asyncio.wait_for(publishing, 120)
        await eventually(
            lambda: not _missing(acked, out_a, out_b),
            timeout=90,
            interval=0.5,
            message=lambda: f"{len(_missing(acked, out_a, out_b))} acked events never "
            f"handled; b alive={member_b.alive()} {member_b.stderr()[-1500:]}",
        )
        assert len(read_ids(out_a)) == killed_after  # a really was dead
        assert member_b.alive(), member_b.stderr()
        # b handled more than its own share: it took over a's partitions.
        assert len(set(read_ids(out_b))) > len(events) - killed_after - 1
    finally:
        member_a.kill()
        member_b.terminate()


@pytest.mark.timeout(120)
async def test_keyed_events_arrive_in_per_key_publish_order(bus_maker: BusMaker) -> None:
    """1,000 events over 50 keys, published concurrently per key, arrive in key order."""
    seen: dict[str, list[int]] = defaultdict(list)

    async def record(event: KafkaFaultEvent) -> None:
        seen[event.key].append(event.seq)
        await asyncio.sleep(0)  # let partitions interleave

    bus = bus_maker()
    bus.subscribe(KafkaFaultEvent, record, name="ordered")
    keys = [f"aggregate-{k}" for k in range(50)]

    async def publish_key(key: str) -> None:
        for seq in range(20):
            await bus.publish(KafkaFaultEvent(seq=seq, key=key), key=key)

    async with bus:
        await asyncio.gather(*(publish_key(k) for k in keys))
        await eventually(
            lambda: sum(len(v) for v in seen.values()) >= 1_000,
            timeout=60,
            message=lambda: f"{sum(len(v) for v in seen.values())} of 1000 handled",
        )
    assert set(seen) == set(keys)
    for key in keys:
        assert seen[key] == list(range(20)), (key, seen[key])


@pytest.mark.timeout(120)
async def test_poison_and_garbage_are_dead_lettered_and_consumer_keeps_going(
    bus_maker: BusMaker, kafka_bootstrap_servers: str
) -> None:
    handled: list[int] = []

    async def handler(event: KafkaFaultEvent) -> None:
        if event.seq == 13:
            raise ValueError("poison pill 13")
        handled.append(event.seq)

    bus = bus_maker(max_attempts=3)
    bus.subscribe(KafkaFaultEvent, handler, name="poisoned")
    topic = bus.topic_for(KafkaFaultEvent)
    junk = b"\x00\xff this is not json"
    bad_body = b'{"seq": "not a number"}'
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
    async with bus:
        await raw.start()
        try:
            # One key: everything lands on one partition, behind the bad records.
            await bus.publish(KafkaFaultEvent(seq=12), key="k")
            poison = KafkaFaultEvent(seq=13)
            await bus.publish(poison, key="k")
            await raw.send_and_wait(topic, junk, key=b"k")
            await raw.send_and_wait(
                topic,
                bad_body,
                key=b"k",
                headers=[
                    ("ce_specversion", b"1.0"),
                    ("ce_id", b"0190f0f0-0000-7000-8000-000000000001"),
                    ("ce_type", b"kafkatest.fault"),
                    ("ce_source", b"elsewhere"),
                    ("content-type", b"application/json"),
                ],
            )
        finally:
            await raw.stop()
        await bus.publish(KafkaFaultEvent(seq=14), key="k")
        await eventually(lambda: 14 in handled, timeout=30, message=lambda: f"{handled}")
        letters: list[object] = []

        async def three_letters() -> bool:
            letters[:] = await bus.dead_letters("poisoned")
            return len(letters) >= 3

        await eventually(three_letters, timeout=30, message=lambda: f"{letters}")
    assert handled == [12, 14]
    assert bus.stats.dead_lettered == 3
    by_value = {d.value: d for d in await _reread(bus)}
    pill = by_value[b'{"seq":13,"key":""}']
    assert pill.event_id == str(poison.event_id)
    assert pill.attempts == 3
    assert "poison pill 13" in (pill.error or "")
    assert pill.handler == "poisoned"
    assert pill.original_topic == topic
    assert pill.key == b"k"
    assert pill.original_offset is not None and pill.original_partition is not None
    assert ("ce_type", b"kafkatest.fault") in pill.original_headers
    garbage = by_value[junk]
    assert garbage.attempts == 0
    assert "DecodeError(malformed)" in (garbage.error or "")
    assert garbage.original_headers == ()
    invalid = by_value[bad_body]
    assert "DecodeError(invalid_data)" in (invalid.error or "")
    assert invalid.original_offset == (pill.original_offset or 0) + 2


async def _reread(bus: object) -> list:  # type: ignore[type-arg]
    # dead_letters() works on a stopped bus too (a throw-away reader).
    return await bus.dead_letters("poisoned")  # type: ignore[attr-defined, no-any-return]


@pytest.mark.timeout(120)
async def test_stop_with_handlers_in_flight_loses_nothing(bus_maker: BusMaker) -> None:
    """stop() finishes and commits in-flight work; a new member gets exactly the rest."""
    first: list[str] = []
    second: list[str] = []

    async def slow(event: KafkaFaultEvent) -> None:
        await asyncio.sleep(0.02)
        first.append(str(event.event_id))

    async def fast(event: KafkaFaultEvent) -> None:
        second.append(str(event.event_id))

    events = [KafkaFaultEvent(seq=i) for i in range(300)]
    sent = {str(e.event_id) for e in events}
    bus1 = bus_maker()
    bus1.subscribe(KafkaFaultEvent, slow, name="drained")
    await bus1.start()
    await bus1.publish_many(events)
    await eventually(lambda: len(first) >= 30, timeout=30, message=lambda: f"{len(first)}")
    await bus1.stop()
    assert len(first) < len(events), "stop() came too late to test anything"
    bus2 = bus_maker()
    bus2.subscribe(KafkaFaultEvent, fast, name="drained")
    async with bus2:
        await eventually(
            lambda: set(first) | set(second) >= sent,
            timeout=30,
            message=lambda: f"{len(sent - set(first) - set(second))} never handled",
        )
    # Everything the first bus finished was committed before it left the group.
    assert not set(first) & set(second)


@pytest.mark.timeout(120)
async def test_stop_abandons_a_stuck_handler_after_drain_timeout(bus_maker: BusMaker) -> None:
    """A handler that never finishes is abandoned (not committed) and redelivered."""
    started = asyncio.Event()
    second: list[int] = []

    async def stuck(event: KafkaFaultEvent) -> None:
        started.set()
        await asyncio.Event().wait()

    async def fine(event: KafkaFaultEvent) -> None:
        second.append(event.seq)

    bus1 = bus_maker(drain_timeout=1.0)
    bus1.subscribe(KafkaFaultEvent, stuck, name="stuck")
    await bus1.start()
    await bus1.publish(KafkaFaultEvent(seq=1), key="k")
    await asyncio.wait_for(started.wait(), 30)
    t0 = time.monotonic()
    await asyncio.wait_for(bus1.stop(), 30)
    assert time.monotonic() - t0 < 15
    bus2 = bus_maker()
    bus2.subscribe(KafkaFaultEvent, fine, name="stuck")
    async with bus2:
        await eventually(lambda: second == [1], timeout=30, message=lambda: f"{second}")
