"""Kafka: hexbus, raw aiokafka (plain body / hexbus's bytes) and FastStream, side by side.

Same durability on every side: an idempotent producer with ``acks=all`` (each publish
returns once every in-sync replica has the record), the ``linger_ms`` and
``max_batch_size`` hexbus configures, a fresh topic of ``PARTITIONS`` partitions per
run. Consumers: one consumer group per side, committing only after the handler ran
(at-least-once: hexbus's own consumer; raw aiokafka commits after each polled batch;
FastStream with ``AckPolicy.ACK``, its commit-after-processing policy). What the rows are
and how they are timed is ``hexbus.bench.harness``.

Why here and not in the adapter package: aiokafka and FastStream may only be imported by
adapter and benchmark code (import-linter); ``hexbus bench`` loads this module by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy
from pydantic import BaseModel

from hexbus.application.publishing import Admitted
from hexbus.bench.harness import (
    Consume,
    Plan,
    Progress,
    Side,
    body_text,
    encode_plain,
    make_plan,
    plain_payload,
    run_plan,
)
from hexbus.bench.harness import report as build_report
from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.kafka.bus import KafkaEventBus
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.marshal import decode_record
from hexbus.infrastructure.names import event_topic
from hexbus.infrastructure.settings import HexbusSettings

__all__ = ["DURABILITY", "KafkaBenchEvent", "delete_run", "run_bench", "run_kafka_bench", "sides"]

PARTITIONS = 3
_FETCH_MAX_WAIT_MS = 100  # what hexbus's consumer uses; the same on every side
_DEFAULTS = KafkaConfig()
#: A raw side's record: topic, key, value, headers.
_Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
DURABILITY = (
    "acks=all + enable_idempotence on every producer "
    f"(linger_ms={_DEFAULTS.linger_ms}, max_batch_size={_DEFAULTS.max_batch_size}); "
    "consumers commit after handling"
)


class KafkaBenchEvent(DomainEvent, event_type="hexbus.bench.kafka"):
    """The benchmark's event: its JSON body is 200 bytes (``body_text``)."""

    seq: int
    text: str


class Payload(BaseModel):
    """FastStream's message: the same two fields, the same 200-byte JSON body."""

    seq: int
    text: str


def _events(items: int) -> list[KafkaBenchEvent]:
    return [KafkaBenchEvent(seq=i, text=body_text(i)) for i in range(items)]


def _prefix(base: str) -> str:
    return f"{base}{uuid.uuid4().hex[:10]}."


def _config(bootstrap: str, prefix: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        service_name=f"bench-{uuid.uuid4().hex[:8]}",
        partitions=PARTITIONS,
        max_attempts=1,
        handler_timeout=None,
        publish_timeout=60.0,
    )


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=_DEFAULTS.linger_ms,
        max_batch_size=_DEFAULTS.max_batch_size,
        max_request_size=_DEFAULTS.max_request_size,
        request_timeout_ms=60_000,
    )


async def _create(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


async def _delete(bootstrap: str, prefix: str) -> None:
    with contextlib.suppress(Exception):  # clean-up is best effort
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if topics:
                await admin.delete_topics(topics)
        finally:
            await admin.close()


async def delete_run(settings: HexbusSettings) -> None:
    """Delete a soak run's topics (every topic under its prefix)."""
    await _delete(settings.kafka_bootstrap_servers, settings.kafka_topic_prefix)


# -- hexbus --------------------------------------------------------------------------


class _HexbusEndpoint:
    def __init__(self, bus: KafkaEventBus, events: list[KafkaBenchEvent]) -> None:
        self.bus, self.events = bus, events

    async def send(self, seq: int) -> None:
        await self.bus.publish(self.events[seq])

    async def send_many(self, start: int, stop: int) -> None:
        await self.bus.publish_many(self.events[start:stop])

    async def close(self) -> None:
        await self.bus.stop()
        await _delete(self.bus.config.bootstrap_servers, self.bus.config.topic_prefix)


class HexbusSide:
    name = "hexbus"
    batch_note = "publish_many (one send of all records, returns when all are acked)"
    consumer_note = "a subscription (one group, per-partition workers, commit after handling)"

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap, self.prefix = bootstrap, prefix

    async def endpoint(self, items: int, consume: Consume | None) -> _HexbusEndpoint:
        cfg = _config(self.bootstrap, _prefix(self.prefix))
        await _create(self.bootstrap, event_topic(cfg.topic_prefix, KafkaBenchEvent))
        bus = KafkaEventBus(cfg)
        if consume is not None:

            async def handler(event: KafkaBenchEvent) -> None:
                consume(event.seq)

            bus.subscribe(KafkaBenchEvent, handler, name="e2e")
        await bus.start()
        if consume is not None:
            await bus.wait_ready(60)
        return _HexbusEndpoint(bus, _events(items))


# -- raw aiokafka --------------------------------------------------------------------


class _RawEndpoint:
    def __init__(
        self,
        side: RawSide,
        prefix: str,
        producer: AIOKafkaProducer,
        record: Callable[[int], _Record],
        consumer: asyncio.Task[None] | None,
    ) -> None:
        self.side, self.prefix, self.producer = side, prefix, producer
        self.record, self.consumer = record, consumer

    async def send(self, seq: int) -> None:
        topic, key, value, headers = self.record(seq)
        await self.producer.send_and_wait(topic, value, key=key, headers=headers)

    async def send_many(self, start: int, stop: int) -> None:
        # N sends (each returns once buffered), then wait for every ack.
        send = self.producer.send
        futures = []
        record = self.record
        for seq in range(start, stop):
            topic, key, value, headers = record(seq)
            futures.append(await send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)

    async def close(self) -> None:
        if self.consumer is not None:
            self.consumer.cancel()
            await asyncio.gather(self.consumer, return_exceptions=True)
        await self.producer.stop()
        await _delete(self.side.bootstrap, self.prefix)


class RawSide:
    """aiokafka alone. ``same_bytes``: hexbus's records (key, CloudEvents headers, body)
    built by hexbus's own encoder before the timing; else a plain 200-byte JSON value
    keyed by ``seq``, encoded in each publish."""

    def __init__(self, bootstrap: str, prefix: str, *, same_bytes: bool) -> None:
        self.bootstrap, self.prefix, self.same_bytes = bootstrap, prefix, same_bytes
        self.name = "raw_same_bytes" if same_bytes else "raw_plain"
        self.batch_note = "N sends, then every ack awaited"
        self.consumer_note = (
            "getmany loop, "
            + ("decoded into the event, " if same_bytes else "json.loads, ")
            + "commit after each polled batch"
        )

    def _records(
        self, cfg: KafkaConfig, topic: str, items: int
    ) -> tuple[Callable[[int], _Record], Any]:
        """The record of event ``seq``: prebuilt with hexbus's bytes; else encoded in
        each publish, as a service does (``harness.encode_plain``)."""
        if self.same_bytes:
            # A bus that is never started: only its record builder is used.
            publisher = KafkaEventBus(cfg).publisher
            built = [publisher.record(Admitted(event)) for event in _events(items)]
            records = [(r.topic, r.key, r.value, list(r.headers)) for r in built]
            return records.__getitem__, publisher.codec
        payloads = [plain_payload(i) for i in range(items)]

        def record(seq: int) -> _Record:
            payload = payloads[seq]
            return topic, str(payload["seq"]).encode(), encode_plain(payload), []

        return record, None

    async def endpoint(self, items: int, consume: Consume | None) -> _RawEndpoint:
        cfg = _config(self.bootstrap, _prefix(self.prefix))
        topic = event_topic(cfg.topic_prefix, KafkaBenchEvent)
        await _create(self.bootstrap, topic)
        record, codec = self._records(cfg, topic, items)
        producer = _producer(self.bootstrap)
        await producer.start()
        task = None
        if consume is not None:
            task = await self._consume(topic, codec, consume)
        return _RawEndpoint(self, cfg.topic_prefix, producer, record, task)

    async def _consume(self, topic: str, codec: Any, consume: Consume) -> asyncio.Task[None]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id=f"raw-bench-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=_DEFAULTS.max_poll_records,
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
        )
        await consumer.start()
        ready = asyncio.Event()

        async def loop() -> None:
            try:
                while True:
                    batches = await consumer.getmany(timeout_ms=100)
                    if consumer.assignment():
                        ready.set()
                    for records in batches.values():
                        for record in records:
                            if codec is not None:  # decoded into the event, as hexbus does
                                event, _ = decode_record(codec, record.headers, record.value)
                                consume(int(event.seq))  # type: ignore[attr-defined]
                            else:
                                consume(int(json.loads(record.value)["seq"]))
                    if batches:
                        await consumer.commit()
            finally:
                await consumer.stop()

        task = asyncio.create_task(loop())
        await asyncio.wait_for(ready.wait(), 60)
        return task


# -- FastStream ----------------------------------------------------------------------


class _FastStreamEndpoint:
    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        broker: KafkaBroker,
        topic: str,
        payloads: list[Payload],
    ) -> None:
        self.bootstrap, self.prefix, self.broker = bootstrap, prefix, broker
        self.topic, self.payloads = topic, payloads

    async def send(self, seq: int) -> None:
        await self.broker.publish(self.payloads[seq], topic=self.topic, key=str(seq).encode())

    async def send_many(self, start: int, stop: int) -> None:
        # publish(no_confirm=True) returns the ack's future: N sends, then wait for all.
        futures = [
            await self.broker.publish(
                self.payloads[seq], topic=self.topic, key=str(seq).encode(), no_confirm=True
            )
            for seq in range(start, stop)
        ]
        await asyncio.gather(*futures)

    async def close(self) -> None:
        await self.broker.stop()
        await _delete(self.bootstrap, self.prefix)


class FastStreamSide:
    name = "faststream"
    batch_note = (
        "publish(no_confirm=True) N times, then every ack awaited (publish_batch is one "
        "producer batch, capped by max_batch_size)"
    )

    consumer_note = (
        "a batch subscriber (list[Payload]) with AckPolicy.ACK: commit after each handled "
        "batch, at-least-once like the others (one message per handler call commits per "
        "message, ~180 events/s here; the default ACK_FIRST commits before handling)"
    )

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap, self.prefix = bootstrap, prefix

    async def endpoint(self, items: int, consume: Consume | None) -> _FastStreamEndpoint:
        prefix = _prefix(self.prefix)
        topic = event_topic(prefix, KafkaBenchEvent)
        await _create(self.bootstrap, topic)
        broker = KafkaBroker(
            self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=_DEFAULTS.linger_ms,
            max_batch_size=_DEFAULTS.max_batch_size,
            logger=None,
            log_level=logging.WARNING,
        )
        probed = asyncio.Event()
        if consume is not None:

            @broker.subscriber(
                topic,
                group_id=f"fs-bench-{uuid.uuid4().hex[:8]}",
                auto_offset_reset="earliest",
                ack_policy=AckPolicy.ACK,
                batch=True,
                max_records=_DEFAULTS.max_poll_records,
                fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            )
            async def handler(messages: list[Payload]) -> None:
                for message in messages:
                    if message.seq < 0:  # a readiness probe, not counted
                        probed.set()
                    else:
                        consume(message.seq)

        await broker.start()
        payloads = [Payload(seq=i, text=body_text(i)) for i in range(items)]
        if consume is not None:
            await _until_consumed(broker, topic, probed)
        return _FastStreamEndpoint(self.bootstrap, prefix, broker, topic, payloads)


async def _until_consumed(broker: KafkaBroker, topic: str, probed: asyncio.Event) -> None:
    """Ready once the consumer group has joined and consumes: probe records (``seq`` -1,
    not counted) until the handler sees one, so joining stays out of the timing."""
    async with asyncio.timeout(60):
        while not probed.is_set():
            await broker.publish(Payload(seq=-1, text=""), topic=topic)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(probed.wait(), 0.5)


def sides(bootstrap: str, prefix: str, names: tuple[str, ...] | None = None) -> list[Side]:
    """The contenders on ``bootstrap`` (all of them, or those named)."""
    every: list[Side] = [
        HexbusSide(bootstrap, prefix),
        RawSide(bootstrap, prefix, same_bytes=False),
        RawSide(bootstrap, prefix, same_bytes=True),
        FastStreamSide(bootstrap, prefix),
    ]
    return [side for side in every if names is None or side.name in names]


async def run_kafka_bench(
    bootstrap_servers: str,
    *,
    plan: Plan,
    topic_prefix: str,
    target: str = "",
    progress: Progress | None = None,
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run ``plan`` on every side; the report of ``hexbus.bench.harness.report``."""
    contenders = sides(bootstrap_servers, topic_prefix, only)
    # Fresh topics make the clients log errors ("topic not found in cluster metadata",
    # "NotLeaderForPartition") until the topic has propagated; they retry and succeed.
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        results = await run_plan(contenders, plan, progress)
    finally:
        client_log.setLevel(level)
    notes = {
        side.name: f"batch: {side.batch_note}; consumer: {side.consumer_note}"
        for side in contenders
    }
    return build_report(
        results,
        adapter="kafka",
        plan=plan,
        durability=DURABILITY,
        notes=notes,
        target=target,
    )


async def run_bench(
    settings: HexbusSettings,
    *,
    prefix: str,
    rows: str = "all",
    repeats: int | None = None,
    events: int | None = None,
    rate: float | None = None,
    target: str = "",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """What ``hexbus bench --adapter kafka`` runs: the plan from the command's options
    (``make_plan``; ``ValueError`` before any connection if one is wrong), on the
    configured broker."""
    plan = make_plan(rows=rows, repeats=repeats, events=events, rate=rate)
    return await run_kafka_bench(
        settings.kafka_bootstrap_servers,
        plan=plan,
        topic_prefix=f"{prefix}.",
        target=target,
        progress=progress,
    )
