"""A lone Kafka publish written by the publisher itself (``_LoneRequest``), on the broker.

What must hold, since the request bypasses aiokafka's sender task: the records still
arrive once each and in order, interleaved with records the sender task sends (the
idempotent sequence numbers of both stay one sequence: the broker refuses a gap); a
request whose connection breaks after the write is sent again by the sender task with
the same sequence number, and written once; a request the broker never answers is
given up after the request timeout, and the partition and broker are free again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka.client import ConnectionGroup
from aiokafka.conn import CloseReason
from aiokafka.producer.sender import Sender
from bus_makers import KafkaBusMaker, read_topic

from hexbus import DomainEvent, PublishError
from hexbus.infrastructure.kafka.publisher import _LoneRequest
from hexbus.testing.faults import broker_stall, publish_until_acked
from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration


class Lone(DomainEvent, event_type="lone.event"):
    text: str


def _texts(records: list[Any]) -> list[str]:
    return [json.loads(r.value)["text"] for r in records]


def _spy_on_the_sender(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The record count of each produce request aiokafka's sender task sends."""
    sent: list[int] = []
    send_produce_req = Sender._send_produce_req

    async def spy(self: Sender, node_id: int, batches: dict[Any, Any]) -> None:
        sent.append(sum(batch.record_count for batch in batches.values()))
        await send_produce_req(self, node_id, batches)

    monkeypatch.setattr(Sender, "_send_produce_req", spy)
    return sent


async def test_lone_publishes_skip_the_sender_task_and_share_its_sequence(
    kafka_bus_maker: KafkaBusMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One publish at a time is written by the publisher: aiokafka's sender task sends
    none of them. ``publish_many`` and a burst of concurrent publishes, which go through
    the sender task, come in between on the same partition: had the lone requests taken
    or skipped a sequence number wrongly, the broker would refuse the next batch."""
    by_sender = _spy_on_the_sender(monkeypatch)
    bus = kafka_bus_maker(partitions=1)
    async with bus:
        await bus.wait_ready(60)
        await bus.publish(Lone(text="first"))  # creates the topic: the producer's path
        by_sender.clear()
        for n in range(20):
            await bus.publish(Lone(text=str(n)))
        assert by_sender == []
        await bus.publish_many([Lone(text=str(n)) for n in range(20, 120)])
        for n in range(120, 130):
            await bus.publish(Lone(text=str(n)), key="k")
        calls = [bus.publish(Lone(text=str(n))) for n in range(130, 230)]
        await asyncio.gather(*calls)
        assert sum(by_sender) >= 100  # publish_many's and the burst's records
        through_sender = sum(by_sender)
        for n in range(230, 250):
            await bus.publish(Lone(text=str(n)))
        assert sum(by_sender) == through_sender
        assert bus.stats.published == 1 + 250
    records = await read_topic(kafka_bus_maker.bootstrap_servers, bus.topic_for(Lone), 1, 251)
    assert _texts(records) == ["first", *map(str, range(250))]


async def test_a_lone_request_whose_connection_breaks_is_sent_again_and_written_once(
    kafka_bus_maker: KafkaBusMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection closes right after a lone request is written, before its answer:
    the publish still returns, because the batch goes back to the sender task, which
    sends it again with its sequence number; the broker keeps one copy."""
    broken: list[str] = []
    retried: list[str] = []
    start, retry = _LoneRequest.start, _LoneRequest._retry

    def breaking_start(self: _LoneRequest, producer: Any, record: Any, retries: Any) -> Any:
        fut = start(self, producer, record, retries)
        if fut is not None and json.loads(record.value)["text"] == "broken":
            producer.client._conns[(self.leader, ConnectionGroup.DEFAULT)].close(
                reason=CloseReason.CONNECTION_BROKEN
            )
            broken.append(record.event_id)
        return fut

    async def counted_retry(self: _LoneRequest) -> None:
        retried.append(self.tp.topic)
        await retry(self)

    monkeypatch.setattr(_LoneRequest, "start", breaking_start)
    monkeypatch.setattr(_LoneRequest, "_retry", counted_retry)
    bus = kafka_bus_maker(partitions=1)
    async with bus:
        await bus.wait_ready(60)
        await bus.publish(Lone(text="first"))
        await bus.publish(Lone(text="second"))  # a lone request, answered
        event = Lone(text="broken")
        await bus.publish(event)
        assert broken == [str(event.event_id)]
        assert retried == [bus.topic_for(Lone)]
        for n in range(5):
            await bus.publish(Lone(text=str(n)))
    records = await read_topic(kafka_bus_maker.bootstrap_servers, bus.topic_for(Lone), 1, 8)
    assert _texts(records) == ["first", "second", "broken", *map(str, range(5))]


async def test_a_lone_request_the_broker_never_answers_is_given_up_and_frees_the_broker(
    kafka_bus_maker: KafkaBusMaker,
) -> None:
    """A frozen broker answers nothing: the publish fails at ``publish_timeout``, the
    request is given up at the request timeout (its connection closed, as aiokafka's
    client does), and once the broker is back the event is on the topic at most once
    and every later publish arrives once."""
    expired: list[str] = []
    expire = _LoneRequest._expire

    def counted_expire(response: Any, conn: Any) -> None:
        expired.append("expired")
        expire(response, conn)

    port = int(kafka_bus_maker.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    bus = kafka_bus_maker(partitions=1, publish_timeout=0.5)  # request timeout: 1 s
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_LoneRequest, "_expire", staticmethod(counted_expire))
        async with bus:
            await bus.wait_ready(60)
            await bus.publish(Lone(text="first"))
            async with broker_stall("kafka", port):
                with pytest.raises(PublishError, match=r"within publish_timeout=0\.5s"):
                    await bus.publish(Lone(text="stalled"))
                await eventually(lambda: expired == ["expired"], timeout=10)
            acked: set[str] = set()
            after = [Lone(text=str(n)) for n in range(5)]
            await publish_until_acked(bus, after, acked, deadline=90)
            assert acked == {str(e.event_id) for e in after}
    records = await read_topic(kafka_bus_maker.bootstrap_servers, bus.topic_for(Lone), 1, 6)
    texts = _texts(records)
    assert texts.count("stalled") <= 1
    assert texts[0] == "first"
    # publish_until_acked publishes again what failed: later events at least once each.
    assert {t for t in texts if t not in {"first", "stalled"}} == set(map(str, range(5)))
