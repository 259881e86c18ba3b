"""``hexbus bench --adapter kafka``: hexbus vs raw aiokafka on a real Kafka.

The work is in ``hexbus.bench.kafka``. It is loaded lazily, by name, for
the same reason the container loads adapters that way: the CLI must not import aiokafka
(import-linter contract; the ``kafka`` extra is optional).
"""

from __future__ import annotations

import importlib
from typing import Any

from hexbus.domain.errors import ConfigurationError

__all__ = ["run_kafka_bench"]


async def run_kafka_bench(
    bootstrap_servers: str, *, events: int, topic_prefix: str
) -> dict[str, float]:
    """Medians over 5 rounds (ratios: median of per-round ratios):
    ``hexbus_publish_per_s``, ``raw_publish_per_s``, ``publish_ratio``,
    ``hexbus_e2e_per_s``, ``raw_e2e_per_s``, ``e2e_ratio``, ``hexbus_p50_ms``,
    ``hexbus_p99_ms``, ``raw_p50_ms``, ``raw_p99_ms``, ``events``, ``rounds``.
    Raises ``ConfigurationError`` without the ``kafka`` extra.
    """
    try:
        bench: Any = importlib.import_module("hexbus.bench.kafka")
    except ImportError:
        raise ConfigurationError(
            "the Kafka benchmark needs aiokafka; install the extra: pip install 'hexbus[kafka]'"
        ) from None
    result: dict[str, float] = await bench.run_kafka_bench(
        bootstrap_servers, events=events, topic_prefix=topic_prefix
    )
    return result
