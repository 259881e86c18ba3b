"""``hexbus bench --adapter rabbitmq``: hexbus vs raw aio-pika on a real RabbitMQ.

The work is in ``hexbus.bench.rabbitmq``. It is loaded lazily, by name,
for the same reason the container loads adapters that way: the CLI must not import
aio-pika (import-linter contract; the ``rabbitmq`` extra is optional).
"""

from __future__ import annotations

import importlib
from typing import Any

from hexbus.domain.errors import ConfigurationError

__all__ = ["run_rabbitmq_bench"]


async def run_rabbitmq_bench(url: str, *, events: int, exchange_prefix: str) -> dict[str, float]:
    """Medians over 5 rounds (ratios: median of per-round ratios):
    ``hexbus_publish_per_s``, ``raw_publish_per_s``,
    ``publish_ratio``, ``hexbus_e2e_per_s``, ``raw_e2e_per_s``, ``e2e_ratio``,
    ``hexbus_p50_ms``, ``hexbus_p99_ms``, ``raw_p50_ms``, ``raw_p99_ms``, ``events``,
    ``rounds``. Raises ``ConfigurationError`` without the ``rabbitmq`` extra.
    """
    try:
        bench: Any = importlib.import_module("hexbus.bench.rabbitmq")
    except ImportError:
        raise ConfigurationError(
            "the RabbitMQ benchmark needs aio-pika; install the extra: "
            "pip install 'hexbus[rabbitmq]'"
        ) from None
    result: dict[str, float] = await bench.run_rabbitmq_bench(
        url, events=events, exchange_prefix=exchange_prefix
    )
    return result
