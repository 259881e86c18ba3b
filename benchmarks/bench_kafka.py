"""hexbus on Kafka vs raw aiokafka (same settings: acks=all, idempotent); medians, ratios.

    python benchmarks/bench_kafka.py [--events 10000] [--rounds 5] [--bootstrap 127.0.0.1:9092]

The measuring code lives in ``hexbus.bench.kafka`` (shared with
``hexbus bench --adapter kafka``). Needs a running Kafka (``python3 scripts/brokers.py up``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from hexbus.bench.kafka import run_kafka_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("HEXBUS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    parser.add_argument("--prefix", default="bench.")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()
    result = asyncio.run(
        run_kafka_bench(
            args.bootstrap, events=args.events, topic_prefix=args.prefix, rounds=args.rounds
        )
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"Kafka, {args.events} events, median of {args.rounds} rounds")
    print(f"{'':14}{'hexbus':>12}{'raw aiokafka':>14}{'ratio':>8}")
    print(
        f"{'produce/s':14}{result['hexbus_publish_per_s']:>12,.0f}"
        f"{result['raw_publish_per_s']:>14,.0f}{result['publish_ratio']:>8.2f}"
    )
    print(
        f"{'end-to-end/s':14}{result['hexbus_e2e_per_s']:>12,.0f}"
        f"{result['raw_e2e_per_s']:>14,.0f}{result['e2e_ratio']:>8.2f}"
    )
    print(f"{'p50 ms':14}{result['hexbus_p50_ms']:>12.1f}{result['raw_p50_ms']:>14.1f}")
    print(f"{'p99 ms':14}{result['hexbus_p99_ms']:>12.1f}{result['raw_p99_ms']:>14.1f}")


if __name__ == "__main__":
    main()
