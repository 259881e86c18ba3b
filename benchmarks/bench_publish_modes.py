"""How hexbus publishes on Kafka / RabbitMQ in the three ways applications call it.

    python benchmarks/bench_publish_modes.py --adapter kafka [--rounds 5] [--json]

Per round (interleaved: hexbus and the raw client take turns; medians over rounds):

- ``awaited``: one ``await bus.publish(e)`` at a time (``--awaited`` events), against the
  raw client sending the same bytes one at a time with ITS default settings (aiokafka:
  ``linger_ms=0``, 16 KiB batches; aio-pika: a confirm channel) plus the same
  durability (``acks=all``, idempotence / persistent messages, confirms); the
  contenders alternate event by event (block timings drift with the machine's load);
- ``concurrent``: ``--burst`` ``bus.publish()`` calls started at once (``gather``),
  throughput and mean publish latency; against ``publish_many`` of the same burst;
- Kafka ``batches of 500``: ``publish_many`` in awaited windows of 500 against the raw
  producer sending the same bytes, and the plain body (``model_dump_json``, no headers).

Why a script next to ``hexbus bench``: that command measures batch publishing and end
to end; these two patterns (a request handler awaiting its one publish; many requests
publishing at once) are where per-call costs and serialisation show. Nothing here is
asserted: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from aiokafka import AIOKafkaProducer

from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.kafka.bus import KafkaEventBus
from hexbus.infrastructure.kafka.config import KafkaConfig
from hexbus.infrastructure.kafka.marshal import encode_record
from hexbus.infrastructure.rabbitmq.bus import RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig
from hexbus.infrastructure.rabbitmq.marshal import encode_message


class ModesEvent(DomainEvent, event_type="hexbus.bench.modes"):
    """~200 bytes of body, like the issue's measurement."""

    seq: int
    text: str = "x" * 160


def _events(n: int) -> list[ModesEvent]:
    return [ModesEvent(seq=i) for i in range(n)]


async def _timed(run: Callable[[], Awaitable[None]], n: int) -> float:
    t0 = time.perf_counter()
    await run()
    return n / (time.perf_counter() - t0)


async def _alternating(
    out: dict[str, float],
    events: list[ModesEvent],
    sends: list[tuple[str, Callable[[ModesEvent], Awaitable[None]]]],
) -> None:
    """One awaited send at a time, the contenders taking turns event by event, so a
    drifting machine load hits all alike; events/s = 1 / the mean time of one send."""
    spent = dict.fromkeys((name for name, _ in sends), 0.0)
    for event in events:
        for name, send in sends:
            began = time.perf_counter()
            await send(event)
            spent[name] += time.perf_counter() - began
    for name, total in spent.items():
        out[name] = len(events) / total


async def _group(
    out: dict[str, float],
    flip: bool,
    runs: list[tuple[str, Callable[[], Awaitable[None]], int]],
) -> None:
    """Run the contenders of one comparison back to back; every other round reversed,
    so neither always runs first on a machine whose load drifts."""
    for name, run, n in reversed(runs) if flip else runs:
        out[name] = await _timed(run, n)


# -- Kafka ---------------------------------------------------------------------------
async def _kafka_round(bootstrap: str, awaited: int, burst: int, flip: bool) -> dict[str, float]:


    prefix = f"modes-{uuid.uuid4().hex[:10]}."
    cfg = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        service_name="modes",
        partitions=3,
        publish_timeout=60.0,
    )
    out: dict[str, float] = {}
    bus = KafkaEventBus(cfg)
    codec = CloudEventCodec(source="modes")
    raw = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    async with bus:
        await bus.publish_many(_events(10))  # topic and metadata out of the timing
        await raw.start()
        try:
            topic = bus.topic_for(ModesEvent)

            async def raw_send(event: ModesEvent) -> None:
                headers, value = encode_record(codec, event)
                await (await raw.send(topic, value, headers=headers))

            async def raw_plain(event: ModesEvent) -> None:
                await (await raw.send(topic, event.model_dump_json().encode()))

            await raw_send(ModesEvent(seq=-1))
            one = _events(awaited)




            many = _events(burst)
            latencies: list[float] = []

            async def timed_publish(e: ModesEvent) -> None:
                t = time.perf_counter()
                await bus.publish(e)
                latencies.append(time.perf_counter() - t)

            async def hex_concurrent() -> None:
                await asyncio.gather(*(timed_publish(e) for e in many))

            async def hex_many() -> None:
                await bus.publish_many(many)

            async def raw_concurrent() -> None:
                await asyncio.gather(*(raw_send(e) for e in many))

            async def raw_window(window: list[ModesEvent], plain: bool) -> None:
                futures = []
                for e in window:
                    if plain:
                        futures.append(await raw.send(topic, e.model_dump_json().encode()))
                    else:
                        headers, value = encode_record(codec, e)
                        futures.append(await raw.send(topic, value, headers=headers))
                await asyncio.gather(*futures)

            async def hex_batches() -> None:
                for start in range(0, burst, 500):
                    await bus.publish_many(many[start : start + 500])

            async def raw_batches() -> None:
                for start in range(0, burst, 500):
                    await raw_window(many[start : start + 500], plain=False)

            async def plain_batches() -> None:
                for start in range(0, burst, 500):
                    await raw_window(many[start : start + 500], plain=True)

            await _alternating(out, one, [
                ("awaited hexbus", bus.publish),
                ("awaited raw", raw_send),
                ("awaited raw plain", raw_plain),
            ])
            await _group(out, flip, [
                ("batches of 500 hexbus", hex_batches, burst),
                ("batches of 500 raw", raw_batches, burst),
                ("batches of 500 raw plain", plain_batches, burst),
            ])
            await _group(out, flip, [
                ("concurrent hexbus", hex_concurrent, burst),
                ("concurrent raw", raw_concurrent, burst),
                ("publish_many hexbus", hex_many, burst),
            ])
            out["concurrent hexbus latency ms"] = statistics.mean(latencies) * 1000
            out["ratio awaited hexbus/raw"] = out["awaited hexbus"] / out["awaited raw"]
            out["ratio batches hexbus/raw"] = (
                out["batches of 500 hexbus"] / out["batches of 500 raw"]
            )
            out["ratio batches hexbus/raw plain"] = (
                out["batches of 500 hexbus"] / out["batches of 500 raw plain"]
            )
        finally:
            await raw.stop()
        await bus.topology.delete_topics([bus.topic_for(ModesEvent)])
    return out


# -- RabbitMQ ------------------------------------------------------------------------
async def _rabbit_round(url: str, awaited: int, burst: int, flip: bool) -> dict[str, float]:


    exchange_name = f"modes-{uuid.uuid4().hex[:10]}"
    cfg = RabbitMQConfig(url=url, exchange=exchange_name, service_name="modes")
    bus = RabbitMQEventBus(cfg)
    codec = CloudEventCodec(source="modes")
    out: dict[str, float] = {}
    async with bus:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            # A queue bound to the events, so both sides pay for storing them.
            queue = await channel.declare_queue(
                f"{exchange_name}.q", durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(exchange, routing_key="#")

            async def raw_send(event: ModesEvent) -> None:
                headers, content_type, body = encode_message(codec, event)
                message = aio_pika.Message(
                    body,
                    headers=dict(headers),
                    content_type=content_type,
                    message_id=str(event.event_id),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                await exchange.publish(message, routing_key=event.event_type)

            one = _events(awaited)
            many = _events(burst)
            latencies: list[float] = []



            async def timed_publish(e: ModesEvent) -> None:
                t = time.perf_counter()
                await bus.publish(e)
                latencies.append(time.perf_counter() - t)

            async def hex_concurrent() -> None:
                await asyncio.gather(*(timed_publish(e) for e in many))

            async def raw_concurrent() -> None:
                await asyncio.gather(*(raw_send(e) for e in many))

            async def hex_many() -> None:
                await bus.publish_many(many)

            await _alternating(out, one, [
                ("awaited hexbus", bus.publish),
                ("awaited raw", raw_send),
            ])
            await _group(out, flip, [
                ("concurrent hexbus", hex_concurrent, burst),
                ("concurrent raw", raw_concurrent, burst),
                ("publish_many hexbus", hex_many, burst),
            ])
            out["concurrent hexbus latency ms"] = statistics.mean(latencies) * 1000
            out["ratio awaited hexbus/raw"] = out["awaited hexbus"] / out["awaited raw"]
            await queue.delete(if_unused=False, if_empty=False)
            await exchange.delete()
        finally:
            await connection.close()
    return out


async def run(adapter: str, rounds: int, awaited: int, burst: int) -> dict[str, Any]:
    results: list[dict[str, float]] = []
    for round_no in range(rounds):
        flip = bool(round_no % 2)
        if adapter == "kafka":
            bootstrap = os.environ.get("HEXBUS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
            results.append(await _kafka_round(bootstrap, awaited, burst, flip))
        else:
            url = os.environ.get("HEXBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
            results.append(await _rabbit_round(url, awaited, burst, flip))
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--adapter", choices=["kafka", "rabbitmq"], default="kafka")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--awaited", type=int, default=500)
    parser.add_argument("--burst", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    medians = asyncio.run(run(args.adapter, args.rounds, args.awaited, args.burst))
    if args.json:
        print(json.dumps(medians))
        return
    for name, value in medians.items():
        print(f"{name:32} {value:12,.1f}")


if __name__ == "__main__":
    main()
