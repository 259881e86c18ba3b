"""hexbus on RabbitMQ next to raw aio-pika doing the same work, with the same durability.

Both sides: persistent messages, publisher confirms, a durable quorum queue bound to a
durable topic exchange, publishes issued concurrently in windows so confirms pipeline,
one connection for publishing and one for consuming, the same prefetch, an ack per
message after the handler ran, and the same bytes on the wire: the raw side encodes and
decodes with the same ``CloudEventCodec`` (CloudEvents headers + JSON body). So the ratio
is the cost of the adapter itself (checks, retry/deadline handling, decoding into the
handler's context, stats), not of the wire format.

Measured per side, ``rounds`` times, alternating sides (medians reported):

- publish throughput: events/s until the last confirm (no consumer attached);
- end-to-end throughput: events/s from the first publish to the last handler call;
- latency p50/p99: publish call → handler call, per event, in the end-to-end run.

Why this module lives in the adapter package: aio-pika may only be imported here (an
import-linter contract); ``hexbus bench`` (``hexbus.cli.bench``) loads it lazily.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.rabbitmq import topology
from hexbus.infrastructure.rabbitmq.bus import RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig
from hexbus.infrastructure.rabbitmq.marshal import decode_message, encode_message

__all__ = ["BenchTick", "run_rabbitmq_bench"]

WINDOW = 500  # concurrent publishes in flight (both sides)
PREFETCH = 256
PAYLOAD = "x" * 200


class BenchTick(DomainEvent, event_type="hexbus.bench.rabbitmq.tick"):
    """The benchmark's event: a sequence number and a small payload."""

    seq: int
    payload: str


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _windows(send: Callable[[BenchTick], Awaitable[Any]], events: list[BenchTick]) -> None:
    for start in range(0, len(events), WINDOW):
        await asyncio.gather(*(send(e) for e in events[start : start + WINDOW]))


class _Run:
    """One measured pass; collects handler times per event id."""

    def __init__(self, count: int) -> None:
        self.events = [BenchTick(seq=i, payload=PAYLOAD) for i in range(count)]
        self.sent_at: dict[uuid.UUID, float] = {}
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.count = count

    def received(self, event_id: uuid.UUID) -> None:
        sent = self.sent_at.get(event_id)
        if sent is not None:
            self.latencies.append(time.perf_counter() - sent)
        if len(self.latencies) >= self.count:
            self.done.set()


async def _hexbus_side(
    url: str, exchange: str, service: str, count: int
) -> tuple[float, float, list[float]]:
    """(publish events/s, end-to-end events/s, latencies) for hexbus."""
    config = RabbitMQConfig(
        url=url, exchange=exchange, service_name=service, prefetch=PREFETCH, publish_timeout=60
    )
    # Publish only: a bus without subscriptions; a quorum queue declared by a second
    # bus (not started consuming: it is stopped right away) stores the messages.
    sink = RabbitMQEventBus(config)
    run = _Run(count)

    async def handler(event: BenchTick) -> None:
        run.received(event.event_id)

    sink.subscribe(BenchTick, handler, name="sink")
    await sink.start()
    await sink.stop()  # the durable queue stays, bound, with no consumer
    publisher = RabbitMQEventBus(config)
    await publisher.start()
    try:
        began = time.perf_counter()
        await _windows(publisher.publish, _Run(count).events)
        publish_rate = count / (time.perf_counter() - began)
    finally:
        await publisher.stop()
    await _delete_queues(url, [topology.work_queue_name(service, "sink")])

    bus = RabbitMQEventBus(config)
    bus.subscribe(BenchTick, handler, name="e2e")
    await bus.start()
    try:

        async def send(event: BenchTick) -> None:
            run.sent_at[event.event_id] = time.perf_counter()
            await bus.publish(event)

        began = time.perf_counter()
        await _windows(send, run.events)
        await asyncio.wait_for(run.done.wait(), 120)
        e2e_rate = count / (time.perf_counter() - began)
    finally:
        await bus.stop()
    await _delete_queues(url, sorted(sink.declared_queues | bus.declared_queues))
    return publish_rate, e2e_rate, run.latencies


async def _raw_side(url: str, exchange_name: str, count: int) -> tuple[float, float, list[float]]:
    """The same with aio-pika alone."""
    codec = CloudEventCodec(source="bench-raw")
    publish_conn = await aio_pika.connect_robust(url)
    consume_conn = await aio_pika.connect_robust(url)
    queue_names = [f"{exchange_name}.raw-sink", f"{exchange_name}.raw-e2e"]
    try:
        channel = await publish_conn.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        quorum = {"x-queue-type": "quorum"}
        sink = await channel.declare_queue(queue_names[0], durable=True, arguments=quorum)
        await sink.bind(exchange, routing_key=BenchTick.event_type)

        async def publish(event: BenchTick) -> None:
            headers, content_type, body = encode_message(codec, event)
            await exchange.publish(
                aio_pika.Message(
                    body,
                    headers=dict(headers),
                    content_type=content_type,
                    message_id=str(event.event_id),
                    timestamp=event.occurred_at,
                    type=event.event_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=BenchTick.event_type,
                mandatory=False,
            )

        began = time.perf_counter()
        await _windows(publish, _Run(count).events)
        publish_rate = count / (time.perf_counter() - began)
        await sink.delete(if_unused=False, if_empty=False)

        run = _Run(count)
        consume_channel = await consume_conn.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=PREFETCH)
        queue = await consume_channel.declare_queue(queue_names[1], durable=True, arguments=quorum)
        await queue.bind(exchange_name, routing_key=BenchTick.event_type)

        async def on_message(message: AbstractIncomingMessage) -> None:
            event, _ = decode_message(codec, message.headers, message.content_type, message.body)
            run.received(event.event_id)
            await message.ack()

        tag = await queue.consume(on_message)

        async def send(event: BenchTick) -> None:
            run.sent_at[event.event_id] = time.perf_counter()
            await publish(event)

        began = time.perf_counter()
        await _windows(send, run.events)
        await asyncio.wait_for(run.done.wait(), 120)
        e2e_rate = count / (time.perf_counter() - began)
        await queue.cancel(tag)
    finally:
        await consume_conn.close()
        await publish_conn.close()
    await _delete_queues(url, queue_names)
    return publish_rate, e2e_rate, run.latencies


async def _delete_queues(url: str, names: list[str], exchange: str | None = None) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)
        if exchange is not None:
            await channel.exchange_delete(exchange)


async def run_rabbitmq_bench(
    url: str,
    *,
    events: int,
    exchange_prefix: str,
    rounds: int = 5,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Median figures over ``rounds`` (latencies in ms) and median per-round ratios.

    Each round runs both sides back to back, alternating which goes first, after one
    unmeasured warm-up pass; ratios are taken per round (pairs close in time see the
    same machine load) and their median reported, which keeps a shared, noisy machine
    from deciding the ratio.
    """
    if events < 1 or rounds < 1:
        raise ValueError("events and rounds must be positive")
    tag = uuid.uuid4().hex[:8]
    hexbus_exchange = f"{exchange_prefix}.hexbus.{tag}"
    raw_exchange = f"{exchange_prefix}.raw.{tag}"
    service = f"bench-{tag}"
    results: dict[str, list[float]] = {}

    def add(side: str, figures: tuple[float, float, list[float]]) -> None:
        publish, e2e, latencies = figures
        results.setdefault(f"{side}_publish_per_s", []).append(publish)
        results.setdefault(f"{side}_e2e_per_s", []).append(e2e)
        results.setdefault(f"{side}_p50_ms", []).append(_percentile(latencies, 0.50) * 1000)
        results.setdefault(f"{side}_p99_ms", []).append(_percentile(latencies, 0.99) * 1000)

    async def hexbus_side() -> None:
        add("hexbus", await _hexbus_side(url, hexbus_exchange, service, events))

    async def raw_side() -> None:
        add("raw", await _raw_side(url, raw_exchange, events))

    try:
        warm_up = min(events, 1000)
        await _hexbus_side(url, hexbus_exchange, service, warm_up)
        await _raw_side(url, raw_exchange, warm_up)
        for round_no in range(1, rounds + 1):
            sides = (hexbus_side, raw_side) if round_no % 2 else (raw_side, hexbus_side)
            for side in sides:
                await side()
            for kind in ("publish", "e2e"):
                results.setdefault(f"{kind}_ratio", []).append(
                    results[f"hexbus_{kind}_per_s"][-1] / results[f"raw_{kind}_per_s"][-1]
                )
            if progress is not None:
                progress(
                    f"round {round_no}/{rounds}: "
                    + ", ".join(f"{k}={v[-1]:,.2f}" for k, v in results.items())
                )
    finally:
        await _delete_queues(url, [], hexbus_exchange)
        await _delete_queues(url, [], raw_exchange)
    out = {name: statistics.median(values) for name, values in results.items()}
    out["events"] = float(events)
    out["rounds"] = float(rounds)
    return out
