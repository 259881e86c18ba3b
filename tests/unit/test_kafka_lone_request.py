"""Which producers the Kafka publisher writes lone records for itself (``_writable``).

The lone-request path (``publisher._LoneRequest``, tested against the broker in
``tests/integration/test_kafka_lone_publish.py``) uses aiokafka 0.14's internals; where
they are missing it must step aside, and where they are there (the aiokafka this
project pins) it must not step aside silently: a patch release that renamed one would
otherwise make every lone publish slower without a failing test.
"""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import AIOKafkaProducer

from hexbus.infrastructure.kafka.publisher import _writable


async def test_the_idempotent_producer_hexbus_builds_is_writable() -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers="127.0.0.1:9", acks="all", enable_idempotence=True
    )
    try:
        assert _writable(producer)
    finally:
        await producer.stop()


async def test_a_producer_without_idempotence_or_without_the_internals_is_not() -> None:
    plain = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
    try:
        assert not _writable(plain)  # no producer id, no sequence numbers to take
    finally:
        await plain.stop()
    assert not _writable(SimpleNamespace(client=None, _sender=None))


async def test_a_transactional_producer_is_not_writable() -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers="127.0.0.1:9", transactional_id="tx", enable_idempotence=True
    )
    try:
        assert not _writable(producer)  # its partitions must join the transaction first
    finally:
        await producer.stop()
