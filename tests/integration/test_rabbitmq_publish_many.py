"""``publish_many`` on RabbitMQ writes its publishes in groups under one hold of the
channel lock (``publisher._put_many``): list order on the wire, one confirm each, a nack
reported for its own event, and the publishes a lost connection took sent again. A
publish awaited on its own is written by the publisher too (``publisher._put_one``),
with the same guarantees."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
import pytest
from bus_makers import RabbitBusMaker

from hexbus import DomainEvent, PublishError
from hexbus.infrastructure.rabbitmq import RabbitMQEventBus

pytestmark = pytest.mark.integration


class Many(DomainEvent, event_type="rabbitmany.event"):
    seq: int


async def _bound_queue(
    url: str, exchange: str, name: str, arguments: dict[str, Any] | None = None
) -> None:
    """A durable queue of the test's own, bound to the bus's exchange for ``Many``."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(ex, routing_key=Many.event_type)


async def _drain(url: str, name: str, count: int, timeout: float = 30.0) -> list[str]:
    """The message ids of ``count`` messages of queue ``name``, in queue order (and any
    more that are there), acked and deleted with the queue."""
    ids: list[str] = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True, passive=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                if len(ids) >= count:
                    break
                await asyncio.sleep(0.05)  # polling an empty queue, bounded by the deadline
                continue
            ids.append(str(message.message_id))
        await queue.delete(if_unused=False, if_empty=False)
    return ids


def _drop_connections_to(url: str) -> int:
    """Abort every TCP connection of this event loop to the broker of ``url`` (a network
    failure as the client sees it: no AMQP close). Reads the selector loop's transport
    table, a CPython detail, because aiormq keeps its socket to itself."""
    port = urlsplit(url).port or 5672
    transports: Any = getattr(asyncio.get_running_loop(), "_transports", {})
    dropped = 0
    for transport in list(transports.values()):
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer is not None and peer[1] == port and not transport.is_closing():
            transport.abort()
            dropped += 1
    return dropped


async def _started(bus: RabbitMQEventBus) -> RabbitMQEventBus:
    await bus.start()
    return bus


async def _until_a_group_is_written(bus: RabbitMQEventBus) -> None:
    """Return once a group of publishes is written (its confirms not all in yet: they
    need the loop to run, and this returns in the turn the write is counted)."""
    deadline = time.monotonic() + 10
    while bus.publisher.grouped == 0:
        assert time.monotonic() < deadline, "the group was never written"
        await asyncio.sleep(0)


async def _bus_before_a_full_queue(
    maker: RabbitBusMaker, url: str, queue: str, limit: int
) -> RabbitMQEventBus:
    """A started bus whose events go to ``queue``, which takes ``limit`` messages and
    makes the broker nack every publish after that (``reject-publish``)."""
    await _bound_queue(
        url, maker.exchange, queue, {"x-max-length": limit, "x-overflow": "reject-publish"}
    )
    return await _started(maker(publish_timeout=10.0))


@pytest.mark.timeout(90)
async def test_publish_many_is_written_in_groups_in_list_order(
    rabbit_bus_maker: RabbitBusMaker, rabbitmq_url: str
) -> None:
    """1,000 events (four groups of frames) arrive in list order, each confirmed."""
    queue = f"{rabbit_bus_maker.service}.order"
    await _bound_queue(rabbitmq_url, rabbit_bus_maker.exchange, queue)
    bus = await _started(rabbit_bus_maker())
    events = [Many(seq=n) for n in range(1_000)]
    try:
        await bus.publish_many(events)
        assert bus.stats.published == len(events)
        assert bus.publisher.grouped == len(events)  # the grouped path, not one by one
    finally:
        await bus.stop()
    ids = await _drain(rabbitmq_url, queue, len(events))
    assert ids == [str(e.event_id) for e in events]


@pytest.mark.timeout(90)
async def test_a_nacked_publish_in_a_group_is_reported_for_its_own_event(
    rabbit_bus_maker: RabbitBusMaker, rabbitmq_url: str
) -> None:
    """A queue that refuses publishes beyond 10 (``reject-publish``) makes the broker
    nack the rest: ``PublishError`` names exactly those, the first 10 count as
    published."""
    queue = f"{rabbit_bus_maker.service}.full"
    bus = await _bus_before_a_full_queue(rabbit_bus_maker, rabbitmq_url, queue, 10)
    events = [Many(seq=n) for n in range(25)]
    try:
        with pytest.raises(PublishError) as info:
            await bus.publish_many(events)
        message = str(info.value)
        assert "15 of 25 events were not confirmed" in message, message
        assert "basic.nack" in message
        named = message.split("unconfirmed event ids: ", 1)[1]
        assert named.split(", ")[:15] == [str(e.event_id) for e in events[10:]][:15]
        assert str(events[9].event_id) not in named
        assert bus.stats.published == 10
    finally:
        await bus.stop()
    ids = await _drain(rabbitmq_url, queue, 10)
    assert ids == [str(e.event_id) for e in events[:10]]


@pytest.mark.timeout(120)
async def test_publishes_a_lost_connection_took_are_sent_again(
    rabbit_bus_maker: RabbitBusMaker, rabbitmq_url: str
) -> None:
    """The connection drops while a ``publish_many`` of 3,000 waits for its confirms:
    the call still returns normally once every event is confirmed (those whose confirm
    the connection took were sent again after the reconnection) and every event is
    stored, at least once."""
    queue = f"{rabbit_bus_maker.service}.lost"
    await _bound_queue(rabbitmq_url, rabbit_bus_maker.exchange, queue)
    bus = await _started(rabbit_bus_maker(publish_timeout=30.0))
    events = [Many(seq=n) for n in range(3_000)]
    try:
        channel = bus.publisher.channel
        assert channel is not None
        underlay: Any = await channel.get_underlay_channel()
        publishing = asyncio.create_task(bus.publish_many(events))
        deadline = time.monotonic() + 10
        while not underlay.confirmations:  # written, not all confirmed yet
            assert time.monotonic() < deadline, "publish_many never got to its confirms"
            assert not publishing.done(), publishing
            await asyncio.sleep(0)
        unconfirmed = len(underlay.confirmations)
        assert _drop_connections_to(rabbitmq_url) >= 1  # the publisher's TCP connection
        await asyncio.wait_for(publishing, 60)
        assert bus.stats.published == len(events)
    finally:
        await bus.stop()
    ids = await _drain(rabbitmq_url, queue, len(events))
    assert set(ids) == {str(e.event_id) for e in events}, f"{unconfirmed} were unconfirmed"


@pytest.mark.timeout(90)
async def test_concurrent_publishes_are_written_together_each_with_its_own_outcome(
    rabbit_bus_maker: RabbitBusMaker, rabbitmq_url: str
) -> None:
    """300 ``publish()`` calls gathered, into a queue that takes 100 (``reject-publish``):
    they are written as groups (not one by one), the first 100 in call order are
    confirmed and stored in that order, and each of the other 200 callers gets a
    ``PublishError`` naming its own event. A caller cancelled while its group is out
    cancels only its own wait."""
    queue = f"{rabbit_bus_maker.service}.concurrent"
    bus = await _bus_before_a_full_queue(rabbit_bus_maker, rabbitmq_url, queue, 100)
    events = [Many(seq=n) for n in range(300)]
    try:
        results = await asyncio.gather(*(bus.publish(e) for e in events), return_exceptions=True)
        assert results[:100] == [None] * 100
        for event, result in zip(events[100:], results[100:], strict=True):
            assert isinstance(result, PublishError), result
            assert str(event.event_id) in str(result) and "basic.nack" in str(result)
        # The first two may go on their own (``Coalescer.direct``), the rest as groups.
        assert bus.publisher.grouped >= len(events) - 2
        assert bus.stats.published == 100
    finally:
        await bus.stop()
    ids = await _drain(rabbitmq_url, queue, 100)
    assert ids == [str(e.event_id) for e in events[:100]]

    bus = await _started(rabbit_bus_maker())
    try:
        tasks = [asyncio.create_task(bus.publish(Many(seq=n))) for n in range(50)]
        await _until_a_group_is_written(bus)
        tasks[10].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(outcomes[10], asyncio.CancelledError)
        assert outcomes[:10] + outcomes[11:] == [None] * 49
    finally:
        await bus.stop()


@pytest.mark.timeout(60)
async def test_stop_lets_a_group_of_publishes_under_way_be_confirmed(
    rabbit_bus_maker: RabbitBusMaker, rabbitmq_url: str
) -> None:
    """``stop()`` while a group of concurrent publishes waits for its confirms: the bus
    drains the group before it closes its connection, so every caller is confirmed
    rather than cut off with a ``PublishError``."""
    queue = f"{rabbit_bus_maker.service}.stopping"
    await _bound_queue(rabbitmq_url, rabbit_bus_maker.exchange, queue)
    bus = await _started(rabbit_bus_maker(publish_timeout=5.0))
    events = [Many(seq=n) for n in range(200)]
    tasks = [asyncio.create_task(bus.publish(e)) for e in events]
    await _until_a_group_is_written(bus)
    await bus.stop()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes == [None] * len(events)
    ids = await _drain(rabbitmq_url, queue, len(events))
    assert set(ids) == {str(e.event_id) for e in events}


@pytest.mark.timeout(90)
async def test_a_publish_on_its_own_is_written_by_the_publisher_confirmed_or_refused(
    rabbit_bus_maker: RabbitBusMaker, rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishes awaited one at a time skip aiormq's ``basic_publish`` (``_put_one``):
    the 5 a queue takes (``reject-publish`` beyond 5) are confirmed and stored in call
    order, and the 6th, which the broker nacks, raises a ``PublishError`` naming it."""
    queue = f"{rabbit_bus_maker.service}.single"
    bus = await _bus_before_a_full_queue(rabbit_bus_maker, rabbitmq_url, queue, 5)
    through_aiormq: list[str] = []
    original = aiormq.Channel.basic_publish

    async def basic_publish(self: aiormq.Channel, body: bytes, **kwargs: Any) -> Any:
        through_aiormq.append(kwargs.get("routing_key", ""))
        return await original(self, body, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_publish", basic_publish)
    events = [Many(seq=n) for n in range(6)]
    try:
        for event in events[:5]:
            await bus.publish(event)
        with pytest.raises(PublishError) as info:
            await bus.publish(events[5])
        assert str(events[5].event_id) in str(info.value), info.value
        assert "basic.nack" in str(info.value)
        assert bus.stats.published == 5
        assert through_aiormq == []
    finally:
        await bus.stop()
    ids = await _drain(rabbitmq_url, queue, 5)
    assert ids == [str(e.event_id) for e in events[:5]]


@pytest.mark.timeout(120)
async def test_a_publish_on_its_own_whose_confirm_the_connection_took_is_sent_again(
    rabbit_bus_maker: RabbitBusMaker, rabbitmq_url: str
) -> None:
    """The connection drops after a lone publish was written and before its confirm
    came: the call still returns normally (the event was sent again after the
    reconnection) and the event is stored."""
    queue = f"{rabbit_bus_maker.service}.lone"
    await _bound_queue(rabbitmq_url, rabbit_bus_maker.exchange, queue)
    bus = await _started(rabbit_bus_maker(publish_timeout=30.0))
    sent: list[Many] = []
    try:
        channel = bus.publisher.channel
        assert channel is not None
        underlay: Any = await channel.get_underlay_channel()
        for attempt in range(50):  # until the drop falls between write and confirm
            event = Many(seq=attempt)
            sent.append(event)
            publishing = asyncio.create_task(bus.publish(event))
            while not underlay.confirmations and not publishing.done():
                await asyncio.sleep(0)
            if not publishing.done():
                break
            await publishing
        else:
            pytest.fail("every publish was confirmed before the test could drop the connection")
        assert _drop_connections_to(rabbitmq_url) >= 1
        await asyncio.wait_for(publishing, 60)
        assert bus.stats.published == len(sent)
    finally:
        await bus.stop()
    ids = await _drain(rabbitmq_url, queue, len(sent))
    assert set(ids) == {str(e.event_id) for e in sent}
