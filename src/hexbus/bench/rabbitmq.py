"""RabbitMQ: hexbus, raw aio-pika (plain body / hexbus's bytes) and FastStream, side by side.

Same durability on every side: persistent messages (delivery mode 2), publisher
confirms (each publish returns once RabbitMQ confirmed it), a durable *quorum* queue
(the type hexbus declares) bound to a durable topic exchange, so every message is
routed to and stored in a replicated log before it is confirmed. Consumers: one per
side, the same prefetch, an ack per message after the handler ran. Every run declares
a fresh exchange and queue and deletes them afterwards. What the rows are and how they
are timed is ``hexbus.bench.harness``.

Why here and not in the adapter package: aio-pika and FastStream may only be imported by
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

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.schemas import Channel
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
from hexbus.infrastructure.rabbitmq.bus import RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig
from hexbus.infrastructure.rabbitmq.marshal import decode_message
from hexbus.infrastructure.settings import HexbusSettings, split_urls

__all__ = ["DURABILITY", "BenchTick", "delete_run", "run_bench", "run_rabbitmq_bench", "sides"]

PREFETCH = 256
DURABILITY = (
    "persistent messages + publisher confirms, durable quorum queue bound to a durable "
    "topic exchange (every side)"
)
_QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


class BenchTick(DomainEvent, event_type="hexbus.bench.rabbitmq.tick"):
    """The benchmark's event: its JSON body is 200 bytes (``body_text``)."""

    seq: int
    text: str


class Payload(BaseModel):
    """FastStream's message: the same two fields, the same 200-byte JSON body."""

    seq: int
    text: str


def _ticks(items: int) -> list[BenchTick]:
    return [BenchTick(seq=i, text=body_text(i)) for i in range(items)]


def _names(prefix: str) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:10]
    return f"{prefix}.{tag}", f"bench-{tag}"


async def _declare_sink(url: str, exchange: str, queue: str, routing_key: str) -> None:
    """The stored-and-replicated destination of the publish-only rows, as hexbus's
    subscriptions declare theirs: a durable quorum queue bound to the exchange."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        x = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await channel.declare_queue(queue, durable=True, arguments=_QUORUM)
        await q.bind(x, routing_key=routing_key)


async def _delete(url: str, exchange: str, queues: list[str]) -> None:
    with contextlib.suppress(Exception):  # clean-up is best effort
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name)
            await channel.exchange_delete(exchange)


async def delete_run(settings: HexbusSettings) -> None:
    """Delete a soak run's exchange (its queues went with its subscription)."""
    await _delete(split_urls(settings.rabbitmq_url)[0], settings.rabbitmq_exchange, [])


# -- hexbus --------------------------------------------------------------------------


class _HexbusEndpoint:
    def __init__(self, url: str, bus: RabbitMQEventBus, events: list[BenchTick], sink: str):
        self.url, self.bus, self.events, self.sink = url, bus, events, sink

    async def send(self, seq: int) -> None:
        await self.bus.publish(self.events[seq])

    async def send_many(self, start: int, stop: int) -> None:
        await self.bus.publish_many(self.events[start:stop])

    async def close(self) -> None:
        queues = sorted(self.bus.declared_queues | {self.sink})
        await self.bus.stop()
        await _delete(self.url, self.bus.config.exchange, queues)


class HexbusSide:
    name = "hexbus"
    batch_note = "publish_many (publishes pipelined, returns when all are confirmed)"
    consumer_note = f"a subscription (prefetch {PREFETCH}), ack after the handler"

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix

    def config(self, exchange: str, service: str) -> RabbitMQConfig:
        return RabbitMQConfig(
            url=self.url,
            exchange=exchange,
            service_name=service,
            prefetch=PREFETCH,
            publish_timeout=60,
            max_attempts=1,
        )

    async def endpoint(self, items: int, consume: Consume | None) -> _HexbusEndpoint:
        exchange, service = _names(self.prefix)
        bus = RabbitMQEventBus(self.config(exchange, service))
        sink = f"{exchange}.sink"
        if consume is None:
            await _declare_sink(self.url, exchange, sink, BenchTick.event_type)
        else:

            async def handler(event: BenchTick) -> None:
                consume(event.seq)

            bus.subscribe(BenchTick, handler, name="e2e")
        await bus.start()
        if consume is not None:
            await bus.wait_ready(60)
        return _HexbusEndpoint(self.url, bus, _ticks(items), sink)


# -- raw aio-pika --------------------------------------------------------------------


class _RawEndpoint:
    def __init__(
        self,
        *,
        url: str,
        exchange_name: str,
        queue: str,
        connections: list[aio_pika.abc.AbstractConnection],
        exchange: aio_pika.abc.AbstractExchange,
        message: Callable[[int], aio_pika.Message],
    ) -> None:
        self.url, self.exchange_name, self.queue = url, exchange_name, queue
        self.connections, self.exchange, self.message = connections, exchange, message

    async def send(self, seq: int) -> None:
        await self.exchange.publish(
            self.message(seq), routing_key=BenchTick.event_type, mandatory=False
        )

    async def send_many(self, start: int, stop: int) -> None:
        # N sends, then wait: aio-pika's publish returns its confirm, so "send all, then
        # wait for every confirm" is one gather over the sends.
        await asyncio.gather(*(self.send(seq) for seq in range(start, stop)))

    async def close(self) -> None:
        for connection in reversed(self.connections):
            await connection.close()
        await _delete(self.url, self.exchange_name, [self.queue])


class RawSide:
    """aio-pika alone. ``same_bytes``: hexbus's message (headers, properties, body) built
    by hexbus's own encoder before the timing; else a plain persistent 200-byte JSON
    body, encoded in each publish."""

    def __init__(self, url: str, prefix: str, *, same_bytes: bool) -> None:
        self.url, self.prefix, self.same_bytes = url, prefix, same_bytes
        self.name = "raw_same_bytes" if same_bytes else "raw_plain"
        self.batch_note = "N publishes gathered, then every confirm awaited"
        self.consumer_note = (
            f"queue.consume (prefetch {PREFETCH}), "
            + ("decoded into the event, " if same_bytes else "json.loads, ")
            + "ack after the handler"
        )
        # A bus that is never started: only its message builder is used.
        self._encoder = RabbitMQEventBus(
            RabbitMQConfig(url=url, exchange="unused", service_name="bench-raw")
        ).publisher

    def _messages(self, items: int) -> Callable[[int], aio_pika.Message]:
        """The message of event ``seq``: prebuilt with hexbus's bytes; else encoded and
        built in each publish, as a service does (``harness.encode_plain``)."""
        if self.same_bytes:
            return [self._encoder.message(Admitted(tick)) for tick in _ticks(items)].__getitem__
        payloads = [plain_payload(i) for i in range(items)]

        def message(seq: int) -> aio_pika.Message:
            return aio_pika.Message(
                encode_plain(payloads[seq]),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )

        return message

    def _seq(self, message: AbstractIncomingMessage) -> int:
        if self.same_bytes:  # decoded into the event, as hexbus's consumer does
            event, _ = decode_message(
                self._encoder.codec, message.headers, message.content_type, message.body
            )
            return int(event.seq)  # type: ignore[attr-defined]
        return int(json.loads(message.body)["seq"])

    async def endpoint(self, items: int, consume: Consume | None) -> _RawEndpoint:
        exchange_name, _ = _names(self.prefix)
        queue = f"{exchange_name}.raw"
        await _declare_sink(self.url, exchange_name, queue, BenchTick.event_type)
        publishing = await aio_pika.connect_robust(self.url)
        connections: list[aio_pika.abc.AbstractConnection] = [publishing]
        channel = await publishing.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        if consume is not None:
            consuming = await aio_pika.connect_robust(self.url)
            connections.append(consuming)
            consume_channel = await consuming.channel(publisher_confirms=False)
            await consume_channel.set_qos(prefetch_count=PREFETCH)
            q = await consume_channel.declare_queue(queue, durable=True, arguments=_QUORUM)

            async def on_message(message: AbstractIncomingMessage) -> None:
                consume(self._seq(message))
                await message.ack()

            await q.consume(on_message)
        return _RawEndpoint(
            url=self.url,
            exchange_name=exchange_name,
            queue=queue,
            connections=connections,
            exchange=exchange,
            message=self._messages(items),
        )


# -- FastStream ----------------------------------------------------------------------


class _FastStreamEndpoint:
    def __init__(
        self,
        url: str,
        broker: RabbitBroker,
        exchange: RabbitExchange,
        queue: str,
        payloads: list[Payload],
    ) -> None:
        self.url, self.broker, self.exchange, self.queue = url, broker, exchange, queue
        self.payloads = payloads

    async def send(self, seq: int) -> None:
        await self.broker.publish(
            self.payloads[seq],
            exchange=self.exchange,
            routing_key=BenchTick.event_type,
            persist=True,
            mandatory=False,
        )

    async def send_many(self, start: int, stop: int) -> None:
        await asyncio.gather(*(self.send(seq) for seq in range(start, stop)))

    async def close(self) -> None:
        await self.broker.stop()
        await _delete(self.url, self.exchange.name, [self.queue])


class FastStreamSide:
    name = "faststream"
    batch_note = "publishes gathered (FastStream's RabbitMQ broker has no batch publish)"
    consumer_note = (
        f"a subscriber (prefetch {PREFETCH}, pydantic model), its default ack after the handler"
    )

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.prefix = url, prefix

    async def endpoint(self, items: int, consume: Consume | None) -> _FastStreamEndpoint:
        exchange_name, _ = _names(self.prefix)
        queue_name = f"{exchange_name}.fs"
        exchange = RabbitExchange(exchange_name, type=ExchangeType.TOPIC, durable=True)
        queue = RabbitQueue(
            queue_name,
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key=BenchTick.event_type,
        )
        broker = RabbitBroker(
            self.url,
            # publisher confirms are FastStream's default on its channel; said explicitly
            default_channel=Channel(prefetch_count=PREFETCH, publisher_confirms=True),
            logger=None,
            log_level=logging.WARNING,
        )
        if consume is None:
            await _declare_sink(self.url, exchange_name, queue_name, BenchTick.event_type)
        else:

            @broker.subscriber(queue, exchange)
            async def handler(message: Payload) -> None:
                consume(message.seq)

        await broker.start()
        payloads = [Payload(seq=i, text=body_text(i)) for i in range(items)]
        return _FastStreamEndpoint(self.url, broker, exchange, queue_name, payloads)


def sides(url: str, prefix: str, names: tuple[str, ...] | None = None) -> list[Side]:
    """The contenders on ``url`` (all of them, or those named)."""
    every: list[Side] = [
        HexbusSide(url, prefix),
        RawSide(url, prefix, same_bytes=False),
        RawSide(url, prefix, same_bytes=True),
        FastStreamSide(url, prefix),
    ]
    return [side for side in every if names is None or side.name in names]


async def run_rabbitmq_bench(
    url: str,
    *,
    plan: Plan,
    exchange_prefix: str,
    target: str = "",
    progress: Progress | None = None,
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run ``plan`` on every side; the report of ``hexbus.bench.harness.report``."""
    contenders = sides(url, exchange_prefix, only)
    results = await run_plan(contenders, plan, progress)
    notes = {
        side.name: f"batch: {side.batch_note}; consumer: {side.consumer_note}"
        for side in contenders
    }
    return build_report(
        results,
        adapter="rabbitmq",
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
    """What ``hexbus bench --adapter rabbitmq`` runs: the plan from the command's options
    (``make_plan``; ``ValueError`` before any connection if one is wrong), on the
    configured broker."""
    plan = make_plan(rows=rows, repeats=repeats, events=events, rate=rate)
    return await run_rabbitmq_bench(
        split_urls(settings.rabbitmq_url)[0],
        plan=plan,
        exchange_prefix=prefix,
        target=target,
        progress=progress,
    )
