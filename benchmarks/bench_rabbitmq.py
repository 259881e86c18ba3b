"""hexbus on RabbitMQ vs raw aio-pika (plain body / hexbus's bytes) and FastStream.

    python benchmarks/bench_rabbitmq.py [--rows all] [--events 2000] [--repeats 3] [--json]

The URL is ``$HEXBUS_RABBITMQ_URL`` (``scripts/brokers.py env``). What is measured, and
how the sides are kept equal, is in ``hexbus.bench.harness`` and ``hexbus.bench.rabbitmq``.
"""

from __future__ import annotations

import os
import sys

from _broker import main

from hexbus.infrastructure.settings import HexbusSettings, redact_url

if __name__ == "__main__":
    url = os.environ.get("HEXBUS_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    settings = HexbusSettings(adapter="rabbitmq", rabbitmq_url=url)
    sys.exit(main("rabbitmq", __doc__.splitlines()[0], settings, redact_url(url)))
