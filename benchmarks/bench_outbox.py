"""The outbox benchmark: relay vs publish_many, the write's cost, commit → handler latency.

    python benchmarks/bench_outbox.py --adapter kafka --database postgresql+asyncpg://...

Brokers from ``HEXBUS_RABBITMQ_URL`` / ``HEXBUS_KAFKA_BOOTSTRAP_SERVERS`` (``python3
scripts/brokers.py up`` prints them, and the PostgreSQL URL as HEXBUS_TEST_POSTGRES_URL).
Each run uses fresh exchange/topic names. Prints one JSON object (the medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

from hexbus.bench.outbox import run_outbox_bench
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", default="memory", choices=["memory", "rabbitmq", "kafka"])
    parser.add_argument(
        "--database",
        default=os.environ.get("HEXBUS_TEST_POSTGRES_URL", "sqlite+aiosqlite:///bench-outbox.db"),
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paced", type=int, default=200)
    args = parser.parse_args()
    unique = f"bench-outbox-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        adapter=args.adapter,
        service_name=unique,
        rabbitmq_exchange=f"{unique}.events",
        kafka_topic_prefix=f"{unique}.",
    )

    def make_bus() -> Any:
        return build_bus(settings)

    figures = asyncio.run(
        run_outbox_bench(
            make_bus,
            args.database,
            adapter=args.adapter,
            events=args.events,
            batch=args.batch,
            rounds=args.rounds,
            paced=args.paced,
            progress=lambda line: print(line, file=sys.stderr),
        )
    )
    print(json.dumps(figures.summary(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
