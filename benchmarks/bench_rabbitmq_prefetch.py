"""Which prefetch (and queue type) should RabbitMQ subscriptions default to? End-to-end
events/s per value.

    python benchmarks/bench_rabbitmq_prefetch.py [--events 5000] [--rounds 3]
        [--prefetch 16,32,64,128,256,512] [--handler-ms 0,2] [--queue-type quorum,classic]

Per round, every prefetch value in turn (the order rotates each round), for a no-op
handler and for a handler that awaits ``--handler-ms`` (I/O: a database call, say):
``events`` published in windows of 500 confirmed publishes, throughput until the last
one is handled. Medians over rounds. The default of ``HEXBUS_RABBITMQ_PREFETCH`` is
chosen from these figures (docs/architecture/broker-adapters.md quotes them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import aio_pika

from hexbus.domain.events import DomainEvent
from hexbus.infrastructure.rabbitmq.bus import RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.config import RabbitMQConfig

WINDOW = 500


class PrefetchTick(DomainEvent, event_type="hexbus.bench.prefetch"):
    seq: int
    payload: str = "x" * 200


async def _e2e(
    url: str, prefetch: int, events: int, handler_ms: float, queue_type: str = "quorum"
) -> float:
    tag = uuid.uuid4().hex[:8]
    config = RabbitMQConfig(
        url=url,
        exchange=f"prefetch.{tag}",
        service_name=f"prefetch-{tag}",
        prefetch=prefetch,
        queue_type=queue_type,
        publish_timeout=60,
    )
    bus = RabbitMQEventBus(config)
    done = asyncio.Event()
    seen = 0

    async def handler(event: PrefetchTick) -> None:
        nonlocal seen
        if handler_ms:
            await asyncio.sleep(handler_ms / 1000)
        seen += 1
        if seen >= events:
            done.set()

    bus.subscribe(PrefetchTick, handler, name="sink")
    batch = [PrefetchTick(seq=i) for i in range(events)]
    async with bus:
        await bus.wait_ready()
        began = time.perf_counter()
        for start in range(0, events, WINDOW):
            await bus.publish_many(batch[start : start + WINDOW])
        await asyncio.wait_for(done.wait(), 300)
        rate = events / (time.perf_counter() - began)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in sorted(bus.declared_queues):
            await channel.queue_delete(name)
        await channel.exchange_delete(config.exchange)
    return rate


async def run(
    url: str,
    values: list[int],
    events: int,
    rounds: int,
    handler_ms: list[float],
    queue_types: list[str],
) -> dict[tuple[str, float, int], float]:
    results: dict[tuple[str, float, int], list[float]] = {}
    for round_no in range(rounds):
        order = values[round_no % len(values) :] + values[: round_no % len(values)]
        for ms in handler_ms:
            for prefetch in order:
                for queue_type in queue_types:
                    rate = await _e2e(url, prefetch, events, ms, queue_type)
                    results.setdefault((queue_type, ms, prefetch), []).append(rate)
    return {key: statistics.median(rates) for key, rates in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefetch", default="16,32,64,128,256,512")
    parser.add_argument("--handler-ms", default="0,2")
    parser.add_argument("--queue-type", default="quorum", help="quorum,classic to compare")
    args = parser.parse_args()
    url = os.environ.get("HEXBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    values = [int(v) for v in args.prefetch.split(",")]
    handler_ms = [float(v) for v in args.handler_ms.split(",")]
    queue_types = args.queue_type.split(",")
    medians = asyncio.run(run(url, values, args.events, args.rounds, handler_ms, queue_types))
    print(f"end-to-end events/s, median of {args.rounds} rounds, {args.events} events")
    for (queue_type, ms, prefetch), rate in sorted(medians.items()):
        print(f"{queue_type:8} handler {ms:>4} ms  prefetch {prefetch:>4}  {rate:10,.0f}")


if __name__ == "__main__":
    main()
