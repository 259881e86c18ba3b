"""Reading a subscription's dead-letter topic, as ``DeadLetter`` records.

Why a reader without a consumer group: listing dead letters must not move anything. A
group-less consumer is assigned every partition of the topic by hand, reads from the
beginning up to the end offsets it saw when it started, and commits nothing; the
records stay for the next reader (and for whatever tool replays them).

Replay is not offered on Kafka: a dead-letter topic cannot hand a record back to one
consumer group only, and records cannot be removed from it one by one.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from hexbus.domain.ports import DeadLetter
from hexbus.infrastructure.dead_letters import dead_letter_from_headers, header_text
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.marshal import KAFKA_PREFIX, TYPE_HEADER
from hexbus.infrastructure.kafka.topology import Topology

__all__ = ["dead_letter_of", "read_dead_letters"]

_ID_HEADER = KAFKA_PREFIX + "id"


def dead_letter_of(subscription: str, record: Any) -> DeadLetter:
    """One record of a dead-letter topic as the adapter-independent ``DeadLetter``."""
    headers: dict[str, Any] = {}
    for name, value in record.headers or ():
        headers.setdefault(name, value)  # the first of a repeated header, as ``header()``
    return dead_letter_from_headers(
        subscription,
        headers,
        record.value or b"",
        event_id=header_text(headers.get(_ID_HEADER)),
        event_type=header_text(headers.get(TYPE_HEADER)),
        position=f"{record.topic}[{record.partition}]@{record.offset}",
    )


async def read_dead_letters(
    config: KafkaConfig,
    topology: Topology,
    subscription: str,
    topic: str,
    *,
    limit: int = 100,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``subscription`` (in ``topic``), oldest first."""
    if limit <= 0:
        return []
    partitions = await topology.partitions(topic)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"hexbus-{config.service_name}-dlq-reader",
    )
    await consumer.start()
    records: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while len(records) < limit and time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batches = await consumer.getmany(timeout_ms=200, max_records=limit - len(records))
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return [dead_letter_of(subscription, r) for r in records[:limit]]
