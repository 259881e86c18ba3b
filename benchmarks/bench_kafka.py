"""hexbus on Kafka vs raw aiokafka (plain body / hexbus's bytes) and FastStream.

    python benchmarks/bench_kafka.py [--rows all] [--events 2000] [--repeats 3] [--json]

The brokers are ``$HEXBUS_KAFKA_BOOTSTRAP_SERVERS`` (default 127.0.0.1:9092). What is
measured, and how the sides are kept equal, is in ``hexbus.bench.harness`` and
``hexbus.bench.kafka``.
"""

from __future__ import annotations

import os
import sys

from _broker import main

from hexbus.infrastructure.settings import HexbusSettings

if __name__ == "__main__":
    servers = os.environ.get("HEXBUS_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    settings = HexbusSettings(adapter="kafka", kafka_bootstrap_servers=servers)
    sys.exit(main("kafka", __doc__.splitlines()[0], settings, servers))
