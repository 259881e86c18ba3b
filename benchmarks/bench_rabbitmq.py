"""hexbus on RabbitMQ vs raw aio-pika (same durability); prints medians and ratios.

    python benchmarks/bench_rabbitmq.py [--events 10000] [--rounds 5] [--url amqp://...]

The URL defaults to ``$HEXBUS_RABBITMQ_URL`` (``scripts/brokers.py env``). What is
measured, and how both sides are kept equal, is in ``hexbus.bench.rabbitmq``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from hexbus.bench.rabbitmq import run_rabbitmq_bench
from hexbus.infrastructure.settings import redact_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--url",
        default=os.environ.get("HEXBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    parser.add_argument("--exchange-prefix", default="hexbus.bench")
    args = parser.parse_args()
    print(f"RabbitMQ {redact_url(args.url)}: {args.events} events x {args.rounds} rounds")
    result = asyncio.run(
        run_rabbitmq_bench(
            args.url,
            events=args.events,
            exchange_prefix=args.exchange_prefix,
            rounds=args.rounds,
            progress=lambda text: print(f"  {text}", file=sys.stderr),
        )
    )
    print(f"{'':24}{'hexbus':>12}{'raw aio-pika':>14}{'ratio':>8}")
    print(
        f"{'publish (events/s)':24}{result['hexbus_publish_per_s']:>12,.0f}"
        f"{result['raw_publish_per_s']:>14,.0f}{result['publish_ratio']:>8.0%}"
    )
    print(
        f"{'end-to-end (events/s)':24}{result['hexbus_e2e_per_s']:>12,.0f}"
        f"{result['raw_e2e_per_s']:>14,.0f}{result['e2e_ratio']:>8.0%}"
    )
    print(f"{'latency p50 (ms)':24}{result['hexbus_p50_ms']:>12.1f}{result['raw_p50_ms']:>14.1f}")
    print(f"{'latency p99 (ms)':24}{result['hexbus_p99_ms']:>12.1f}{result['raw_p99_ms']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
