"""hexbus on Kafka vs raw aiokafka doing the same work with the same settings.

Both sides use one idempotent ``acks=all`` producer (``linger_ms``/``max_batch_size`` as
hexbus configures them) and, end to end, one consumer group with manual commits. What is
measured, per round (fresh topics each round, medians over the rounds):

- produce: ``events`` messages sent in windows of 500, each window awaited (all acked);
- end to end: the same publishing with a subscriber running; throughput until the last
  one is handled, and publish→handler latency per event (p50/p99).

Raw aiokafka moves the same messages: the same pre-built events, encoded and decoded
with the same CloudEvents codec (so both sides put the same bytes and headers on the
wire, as in the RabbitMQ benchmark), in a plain loop with no routing, retries, dead
letters, per-partition workers or delivery context; the ratio is the cost of the
library over a hand-written integration with the same wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.kafka.bus import KafkaEventBus
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.marshal import decode_record, encode_record

__all__ = ["KafkaBenchEvent", "run_kafka_bench"]

WINDOW = 500
ROUNDS = 5
PARTITIONS = 3
_TIMEOUT = 120.0


class KafkaBenchEvent(DomainEvent, event_type="hexbus.bench.kafka"):
    """The benchmark's event: a sequence number and a short text, like a typical event."""

    seq: int
    text: str = "benchmark payload"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _config(bootstrap: str, prefix: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        service_name=f"hexbus-bench-{uuid.uuid4().hex[:8]}",
        partitions=PARTITIONS,
        max_attempts=1,
        handler_timeout=None,
        publish_timeout=60.0,
    )


def _raw_producer(cfg: KafkaConfig) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=cfg.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=cfg.linger_ms,
        max_batch_size=cfg.max_batch_size,
        max_request_size=cfg.max_request_size,
        request_timeout_ms=int(cfg.publish_timeout * 1000),
    )


# -- hexbus --------------------------------------------------------------------------
async def _hexbus_produce(cfg: KafkaConfig, events: int) -> float:
    bus = KafkaEventBus(cfg)
    async with bus:
        batch = [KafkaBenchEvent(seq=i) for i in range(events)]
        await bus.publish_many(batch[:10])  # topic creation and metadata out of the timing
        t0 = time.perf_counter()
        for start in range(0, events, WINDOW):
            await bus.publish_many(batch[start : start + WINDOW])
        return events / (time.perf_counter() - t0)


async def _hexbus_e2e(cfg: KafkaConfig, events: int) -> tuple[float, list[float]]:
    bus = KafkaEventBus(cfg)
    sent_at: dict[uuid.UUID, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def handler(event: KafkaBenchEvent) -> None:
        latencies.append(time.perf_counter() - sent_at[event.event_id])
        if len(latencies) >= events:
            done.set()

    bus.subscribe(KafkaBenchEvent, handler, name="bench")
    async with bus:
        await bus.wait_ready(_TIMEOUT)
        batch = [KafkaBenchEvent(seq=i) for i in range(events)]
        t0 = time.perf_counter()
        for start in range(0, events, WINDOW):
            window = batch[start : start + WINDOW]
            now = time.perf_counter()
            for event in window:
                sent_at[event.event_id] = now
            await bus.publish_many(window)
        await asyncio.wait_for(done.wait(), _TIMEOUT)
        elapsed = time.perf_counter() - t0
    return events / elapsed, latencies


# -- raw aiokafka --------------------------------------------------------------------
# The hand-written baseline moves the same pydantic events: ``model_dump_json`` out,
# ``model_validate_json`` in, type and id as headers (what an application without hexbus
# would write), and the send time in a header for the latency.


_RAW_CODEC = CloudEventCodec(source="bench-raw")


async def _raw_send_window(
    producer: AIOKafkaProducer, topic: str, events: list[KafkaBenchEvent]
) -> None:
    futures = []
    sent = ("sent", str(time.perf_counter()).encode())
    for event in events:
        headers, value = encode_record(_RAW_CODEC, event)
        headers.append(sent)
        key = str(event.event_id).encode()
        futures.append(await producer.send(topic, value, key=key, headers=headers))
    await asyncio.gather(*futures)


async def _raw_produce(cfg: KafkaConfig, topic: str, events: int) -> float:
    producer = _raw_producer(cfg)
    await producer.start()
    try:
        await _raw_send_window(producer, topic, [KafkaBenchEvent(seq=i) for i in range(10)])
        batch = [KafkaBenchEvent(seq=i) for i in range(events)]
        t0 = time.perf_counter()
        for start in range(0, events, WINDOW):
            await _raw_send_window(producer, topic, batch[start : start + WINDOW])
        return events / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def _raw_e2e(cfg: KafkaConfig, topic: str, events: int) -> tuple[float, list[float]]:
    producer = _raw_producer(cfg)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=cfg.bootstrap_servers,
        group_id=f"raw-bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    latencies: list[float] = []
    done = asyncio.Event()
    assigned = asyncio.Event()

    async def consume() -> None:
        while len(latencies) < events:
            batches = await consumer.getmany(timeout_ms=200, max_records=cfg.max_poll_records)
            if consumer.assignment():
                assigned.set()
            for records in batches.values():
                for record in records:
                    decode_record(_RAW_CODEC, record.headers, record.value)
                    sent = dict(record.headers)["sent"]
                    latencies.append(time.perf_counter() - float(sent))
            if batches:
                await consumer.commit()
        done.set()

    await producer.start()
    await consumer.start()
    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(assigned.wait(), _TIMEOUT)
        batch = [KafkaBenchEvent(seq=i) for i in range(events)]
        t0 = time.perf_counter()
        for start in range(0, events, WINDOW):
            await _raw_send_window(producer, topic, batch[start : start + WINDOW])
        await asyncio.wait_for(done.wait(), _TIMEOUT)
        elapsed = time.perf_counter() - t0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
    return events / elapsed, latencies


async def _create(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
    finally:
        await admin.close()


async def _delete_prefix(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


async def run_kafka_bench(
    bootstrap_servers: str, *, events: int, topic_prefix: str, rounds: int = ROUNDS
) -> dict[str, float]:
    """Medians over ``rounds`` (ratios: median of per-round ratios), as a flat dict:
    ``hexbus_publish_per_s``, ``raw_publish_per_s``, ``publish_ratio``,
    ``hexbus_e2e_per_s``, ``raw_e2e_per_s``, ``e2e_ratio``, ``hexbus_p50_ms``,
    ``hexbus_p99_ms``, ``raw_p50_ms``, ``raw_p99_ms``, ``events``, ``rounds``.
    """
    run = f"{topic_prefix}{uuid.uuid4().hex[:6]}."
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    try:
        for r in range(rounds):
            prefix = f"{run}r{r}."
            raw_p, raw_e = f"{prefix}raw.produce", f"{prefix}raw.e2e"
            await _create(bootstrap_servers, [raw_p, raw_e])
            # Alternate who goes first, so warm-up and broker state favour neither side.
            order = ("hexbus", "raw") if r % 2 == 0 else ("raw", "hexbus")
            for side in order:
                if side == "hexbus":
                    hp = await _hexbus_produce(_config(bootstrap_servers, prefix + "p."), events)
                    he, hl = await _hexbus_e2e(_config(bootstrap_servers, prefix + "e."), events)
                else:
                    rp = await _raw_produce(_config(bootstrap_servers, prefix), raw_p, events)
                    re_, rl = await _raw_e2e(_config(bootstrap_servers, prefix), raw_e, events)
            add("hexbus_publish_per_s", hp)
            add("raw_publish_per_s", rp)
            add("publish_ratio", hp / rp)
            add("hexbus_e2e_per_s", he)
            add("raw_e2e_per_s", re_)
            add("e2e_ratio", he / re_)
            add("hexbus_p50_ms", _percentile(hl, 0.50) * 1000)
            add("hexbus_p99_ms", _percentile(hl, 0.99) * 1000)
            add("raw_p50_ms", _percentile(rl, 0.50) * 1000)
            add("raw_p99_ms", _percentile(rl, 0.99) * 1000)
    finally:
        with contextlib.suppress(Exception):  # clean-up is best effort
            await _delete_prefix(bootstrap_servers, run)
    out: dict[str, float] = {name: statistics.median(values) for name, values in rows.items()}
    out["events"] = float(events)
    out["rounds"] = float(rounds)
    return out


