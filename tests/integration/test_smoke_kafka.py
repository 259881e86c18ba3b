"""Smoke test: the Kafka behind ``kafka_bootstrap_servers`` is real.

Uses aiokafka directly (not hexbus): admin-created topic, acks=all produce,
group consume with a manual commit, and the committed offset read back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


@pytest.mark.asyncio
async def test_produce_acks_all_consume_and_commit(
    kafka_bootstrap_servers: str, unique_name: str
) -> None:
    topic = f"{unique_name}-topic"
    group = f"{unique_name}-group"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await asyncio.wait_for(admin.start(), DEADLINE_S)
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, acks="all")
        await asyncio.wait_for(producer.start(), DEADLINE_S)
        try:
            payload = f"hello {unique_name}".encode()
            # The topic's leader may take a moment to appear right after creation.
            metadata = await asyncio.wait_for(
                producer.send_and_wait(topic, payload, key=b"k"), DEADLINE_S
            )
        finally:
            await producer.stop()
        assert metadata.topic == topic
        assert metadata.partition == 0
        assert metadata.offset == 0

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await asyncio.wait_for(consumer.start(), DEADLINE_S)
        try:
            deadline = time.monotonic() + DEADLINE_S
            records: list[Any] = []
            while not records and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    records.extend(batch)
            assert records, f"no record consumed from {topic} within {DEADLINE_S}s"
            assert records[0].value == payload
            assert records[0].key == b"k"

            tp = TopicPartition(topic, 0)
            await consumer.commit({tp: records[0].offset + 1})
            assert await consumer.committed(tp) == 1
        finally:
            await consumer.stop()
    finally:
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
