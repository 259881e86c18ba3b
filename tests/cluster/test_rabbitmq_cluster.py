"""RabbitMQ on a 3-node cluster: quorum queues, failover of a URL list, no quorum.

- The node leading a subscription's quorum queue is stopped while 10,000 events stream:
  every confirmed event is handled, the consumer process keeps going, and the publisher,
  connected to that very node, reconnects to a surviving node by itself.
- Two of three nodes down: a publish fails within ``HEXBUS_PUBLISH_TIMEOUT`` with a
  ``PublishError`` that says why (no quorum; or no node answers), and everything
  confirmed before the outage is delivered after it.
- A URL list with a bad host connects to the others and says which host failed; with no
  good host the error names every node.

Assertions are on sets of event ids: at-least-once may repeat an id, never lose one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from clusters import Cluster, all_acknowledged_handled

from hexbus import EventBus, load_settings
from hexbus.domain.errors import ConfigurationError, PublishError
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.rabbitmq import RabbitMQConfig, RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.topology import subscription_queues, work_queue_name
from hexbus.infrastructure.settings import redact_url
from hexbus.testing import ConsumerProcesses, FaultEvent, eventually, publish_until_acked

pytestmark = pytest.mark.integration

RETRY_DELAYS = (0.05, 0.1)
#: Adapter options without a setting: quick reconnection attempts, bounded connects.
OVERRIDES: dict[str, Any] = {"reconnect_interval": 0.5, "connect_timeout": 5.0}
STREAM_EVENTS = 10_000
#: The publisher of the stream: long enough for a quorum queue to elect a new leader.
STREAM_PUBLISH_TIMEOUT = 5.0
#: The publisher facing a cluster without a majority.
OUTAGE_PUBLISH_TIMEOUT = 3.0
RECOVERY_TIMEOUT = 180.0
SECRET = "s3cr3t-of-the-bad-host"
NODES = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _node_port(bus: EventBus) -> int | None:
    """The port of the node the bus's publishing connection uses now (None: not up)."""
    assert isinstance(bus, RabbitMQEventBus)
    connection: Any = bus.connection
    if connection is None or not connection.connected.is_set():
        return None
    port: int | None = connection.url.port
    return port


@dataclass
class Namespace:
    """One test's service name and exchange on the cluster; its buses and clean-up."""

    cluster: Cluster
    service: str
    buses: list[EventBus] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return f"{self.service}.events"

    def env(self, urls: list[str] | None = None) -> dict[str, str]:
        """``HEXBUS_*`` settings of this namespace; ``urls``: the node list (default all,
        rabbitmq-1 first)."""
        return {
            "HEXBUS_ADAPTER": "rabbitmq",
            "HEXBUS_SERVICE_NAME": self.service,
            "HEXBUS_RABBITMQ_URL": ",".join(urls or self.cluster.rabbitmq_urls()),
            "HEXBUS_RABBITMQ_EXCHANGE": self.exchange,
            "HEXBUS_MAX_ATTEMPTS": "3",
            "HEXBUS_RETRY_DELAYS": ",".join(str(d) for d in RETRY_DELAYS),
            "HEXBUS_DRAIN_TIMEOUT": "10",
        }

    def build(self, *, urls: list[str] | None = None, publish_timeout: float = 10.0) -> EventBus:
        """A bus as a service builds it: ``build_bus(load_settings(...))``."""
        fields = {k.removeprefix("HEXBUS_").lower(): v for k, v in self.env(urls).items()}
        bus = build_bus(load_settings(**fields, publish_timeout=publish_timeout), **OVERRIDES)
        self.buses.append(bus)
        return bus

    @property
    def queue(self) -> str:
        return work_queue_name(self.service, "recorder")

    async def cleanup(self) -> None:
        for bus in self.buses:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.stop(), 60)
        running = [n for n in NODES if self.cluster.running(n)]
        if not running:
            return
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(
                self.cluster.rabbitmq_url_of(running[0]), timeout=10
            )
            async with connection:
                for queue in subscription_queues(self.queue, RETRY_DELAYS):
                    channel = await connection.channel()
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await asyncio.wait_for(channel.queue_delete(queue), 30)
                    with contextlib.suppress(aio_pika.exceptions.AMQPError):
                        await channel.close()
                channel = await connection.channel()
                await channel.exchange_delete(self.exchange)


@pytest.fixture
async def ns(rabbitmq_cluster: Cluster, unique_name: str) -> AsyncIterator[Namespace]:
    namespace = Namespace(rabbitmq_cluster, unique_name)
    try:
        yield namespace
    finally:
        await namespace.cleanup()


# -- the leader of the subscription's queue stops mid-stream --------------------------------


async def test_leader_stop_mid_stream_loses_no_confirmed_event(
    ns: Namespace, rabbitmq_cluster: Cluster, tmp_path: Path, measured: Callable[[str], None]
) -> None:
    """10,000 events stream to a consumer process; the node leading its quorum queue (and
    holding the publisher's connection) stops: every confirmed event is handled, the
    consumer keeps going, the publisher is on a surviving node by itself."""
    cluster = rabbitmq_cluster
    with ConsumerProcesses(tmp_path, env=ns.env(), overrides=OVERRIDES) as spawner:
        # The consumer declares the subscription's queue before anything is published.
        consumer = await spawner.spawn("consumer", FaultEvent)
        placed = await cluster.rabbitmq_queue(ns.queue)
        # x-queue-type quorum, no initial group size: a member on every node of the cluster.
        assert placed["members"] == NODES, placed
        assert placed["online"] == NODES, placed
        leader = placed["leader"]
        assert leader in NODES, placed
        survivors = [n for n in NODES if n != leader]
        # The publisher dials the leader first, so its stop moves the publisher too.
        publisher = ns.build(
            urls=cluster.rabbitmq_urls(first=leader), publish_timeout=STREAM_PUBLISH_TIMEOUT
        )
        events = [FaultEvent(seq=i) for i in range(STREAM_EVENTS)]
        acked: set[str] = set()
        await publisher.start()
        try:
            assert _node_port(publisher) == cluster.port(leader)
            # Paced (~2,000/s at most) so that the stream spans the stop.
            publishing = asyncio.create_task(
                publish_until_acked(publisher, events, acked, window=100, pause=0.05, deadline=300)
            )
            try:
                await eventually(
                    lambda: len(acked) >= 2_000 or publishing.done(),
                    timeout=RECOVERY_TIMEOUT,
                    message=lambda: f"2,000 confirmed before the stop ({len(acked)})",
                )
                assert not publishing.done(), "the stream ended before the leader stopped"
                handled_at_stop = len(set(consumer.handled()))
                stop_took = await cluster.stop(leader)
                acked_at_stop = len(acked)
                began = time.monotonic()
                failures = await asyncio.wait_for(asyncio.shield(publishing), 300)
                rest_took = time.monotonic() - began
            finally:
                if not publishing.done():
                    publishing.cancel()
                    await asyncio.gather(publishing, return_exceptions=True)
            # Reconnected by itself, to a node that runs.
            await eventually(
                lambda: _node_port(publisher) in {cluster.port(n) for n in survivors},
                timeout=30,
                message=lambda: f"publisher on a surviving node (port {_node_port(publisher)})",
            )
        finally:
            await publisher.stop()
        assert acked == {str(e.event_id) for e in events}
        assert acked_at_stop < len(events), "the stop did not hit the stream"
        moved = await cluster.rabbitmq_queue(ns.queue)
        assert moved["leader"] in survivors, moved

        # Every confirmed event reaches the consumer, which never stopped.
        handled = await all_acknowledged_handled(
            consumer, acked, handled_at_stop, timeout=RECOVERY_TIMEOUT
        )
        if leader == "rabbitmq-1":  # the consumer's own node: it failed over too
            assert "reconnecting to amqp://guest:***@127.0.0.1:" in consumer.output()
        start_took = await cluster.start(leader)
        await eventually(
            lambda: _online(cluster, ns.queue),
            timeout=60,
            interval=0.5,
            message=f"{leader} back as a member of {ns.queue}",
        )
    measured(
        f"rabbitmq leader {leader} stopped after {acked_at_stop} confirmed "
        f"(stop {stop_took:.1f}s); the remaining {len(events) - acked_at_stop} in "
        f"{rest_took:.1f}s, {failures} publishes failed and were sent again; "
        f"{len(handled) - len(set(handled))} deliveries repeated; restart {start_took:.1f}s"
    )


async def _online(cluster: Cluster, queue: str) -> bool:
    return (await cluster.rabbitmq_queue(queue))["online"] == NODES


# -- a majority of the nodes down ---------------------------------------------------------------


async def test_majority_down_publish_fails_in_time_and_nothing_confirmed_is_lost(
    ns: Namespace, rabbitmq_cluster: Cluster, measured: Callable[[str], None]
) -> None:
    """Two of three nodes stop: a publish raises ``PublishError`` within the publish
    timeout, saying why (connected but no quorum / no node answers); the events confirmed
    before the outage are all delivered once the nodes are back."""
    cluster = rabbitmq_cluster
    handled: list[str] = []

    async def record(event: FaultEvent) -> None:
        handled.append(str(event.event_id))

    # Declare the subscription (its durable quorum queue), then leave it unconsumed.
    declaring = ns.build()
    declaring.subscribe(FaultEvent, record, name="recorder")
    await declaring.start()
    await declaring.stop()

    publisher = ns.build(publish_timeout=OUTAGE_PUBLISH_TIMEOUT)  # dials rabbitmq-1 first
    await publisher.start()
    on = next(n for n in NODES if cluster.port(n) == _node_port(publisher))
    others = [n for n in NODES if n != on]
    # A second publisher that knows only the two nodes about to stop.
    stranded = ns.build(
        urls=[cluster.rabbitmq_url_of(n) for n in others], publish_timeout=OUTAGE_PUBLISH_TIMEOUT
    )
    await stranded.start()
    before = [FaultEvent(seq=i) for i in range(1_000)]
    acked: set[str] = set()
    await publish_until_acked(publisher, before, acked, window=200)
    assert len(acked) == len(before)

    await cluster.stop(*reversed(others))
    try:
        assert _node_port(publisher) == cluster.port(on), "the publisher lost its node"
        no_quorum = FaultEvent(seq=-1)
        began = time.monotonic()
        with pytest.raises(PublishError) as info:
            # Hang guard only; the publish timeout is what must end it.
            await asyncio.wait_for(publisher.publish(no_quorum), OUTAGE_PUBLISH_TIMEOUT * 3)
        took = time.monotonic() - began
        message = str(info.value)
        assert str(no_quorum.event_id) in message
        assert f"within {OUTAGE_PUBLISH_TIMEOUT}s" in message
        assert f"connected to amqp://guest:***@127.0.0.1:{cluster.port(on)}" in message
        assert "did not confirm" in message and "quorum" in message, message

        batch = [FaultEvent(seq=-2 - i) for i in range(5)]
        with pytest.raises(PublishError) as many:
            await asyncio.wait_for(publisher.publish_many(batch), OUTAGE_PUBLISH_TIMEOUT * 3)
        assert "5 of 5 events were not confirmed" in str(many.value)

        unreachable = FaultEvent(seq=-10)
        with pytest.raises(PublishError) as gone:
            await asyncio.wait_for(stranded.publish(unreachable), OUTAGE_PUBLISH_TIMEOUT * 3)
        assert "no RabbitMQ node answered" in str(gone.value), gone.value
        assert "guest:guest" not in message + str(gone.value)
    finally:
        restart_took = await cluster.start(*others)
    await stranded.stop()

    # Recovery: everything confirmed before the outage is there.
    consumer = ns.build()
    consumer.subscribe(FaultEvent, record, name="recorder")
    async with consumer:
        await eventually(
            lambda: acked <= set(handled),
            timeout=RECOVERY_TIMEOUT,
            interval=0.2,
            message=lambda: f"{len(acked - set(handled))} of 1,000 confirmed events missing",
        )
        # And a publish works again (the queue has its quorum back).
        after = FaultEvent(seq=10_000)
        await publisher.publish(after)
        await eventually(lambda: str(after.event_id) in handled, timeout=60)
    await publisher.stop()
    unconfirmed = {str(e.event_id) for e in [no_quorum, *batch]}
    measured(
        f"rabbitmq without quorum: PublishError after {took:.2f}s "
        f"(publish_timeout {OUTAGE_PUBLISH_TIMEOUT}s): {message}\n"
        f"unconfirmed events stored anyway once the nodes were back: "
        f"{len(unconfirmed & set(handled))} of {len(unconfirmed)}; restart {restart_took:.1f}s"
    )


# -- bad input: a URL list with a bad host -------------------------------------------------------


async def test_url_list_with_a_bad_host_connects_to_the_others_and_names_it(
    ns: Namespace, rabbitmq_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = rabbitmq_cluster
    bad_port = _closed_port()
    bad = f"amqp://guest:{SECRET}@127.0.0.1:{bad_port}/"
    urls = [bad, *cluster.rabbitmq_urls()]
    handled: list[str] = []

    async def record(event: FaultEvent) -> None:
        handled.append(str(event.event_id))

    caplog.set_level(logging.WARNING, logger="hexbus.rabbitmq")
    bus = ns.build(urls=urls)
    bus.subscribe(FaultEvent, record, name="recorder")
    async with bus:
        assert _node_port(bus) == cluster.port("rabbitmq-1")
        event = FaultEvent(seq=1)
        await bus.publish(event)
        await eventually(lambda: handled == [str(event.event_id)], timeout=30)
    warnings = [r.getMessage() for r in caplog.records if r.name == "hexbus.rabbitmq"]
    # Once per connection (publisher and consumer): the bad host, why, and where instead.
    named = [w for w in warnings if f"127.0.0.1:{bad_port}" in w]
    assert len(named) == 2, warnings
    for warning in named:
        assert "could not connect to" in warning
        assert "Connect call failed" in warning or "Connection refused" in warning, warning
        assert f"connected to amqp://guest:***@127.0.0.1:{cluster.port('rabbitmq-1')}/" in warning
    assert SECRET not in caplog.text
    assert SECRET not in repr(bus)
    assert SECRET not in repr(load_settings(rabbitmq_url=",".join(urls)))


async def test_url_list_with_no_good_host_names_every_node() -> None:
    ports = [_closed_port(), _closed_port()]
    urls = [f"amqp://guest:{SECRET}@127.0.0.1:{port}/" for port in ports]
    bus = RabbitMQEventBus(RabbitMQConfig(url=",".join(urls), connect_timeout=5))
    with pytest.raises(ConfigurationError) as info:
        await bus.start()
    message = str(info.value)
    assert "cannot connect to any of the 2 RabbitMQ nodes of HEXBUS_RABBITMQ_URL" in message
    for port in ports:
        assert f"amqp://guest:***@127.0.0.1:{port}/:" in message
    assert SECRET not in message and SECRET not in repr(info.value)
    await bus.stop()


def test_url_list_settings_are_parsed_validated_and_redacted() -> None:
    urls = [f"amqp://app:{SECRET}@node-{i}.example:5672/vh" for i in (1, 2, 3)]
    settings = load_settings(adapter="rabbitmq", rabbitmq_url=" , ".join(urls) + ",")
    bus = build_bus(settings)
    assert isinstance(bus, RabbitMQEventBus)
    assert bus.config.urls == urls
    for text in (repr(settings), str(settings.safe_dump()), repr(bus), repr(bus.config)):
        assert SECRET not in text
        assert text.count("app:***@node-") == 3 or "rabbitmq_url" not in text, text
    assert redact_url(",".join(urls)).count("***") == 3
    with pytest.raises(ConfigurationError) as info:
        load_settings(rabbitmq_url=f"{urls[0]},http://app:{SECRET}@node-2.example/")
    assert "entry 2 of the list" in str(info.value)
    assert SECRET not in str(info.value)
