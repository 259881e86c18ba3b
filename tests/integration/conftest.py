"""Integration tests need real brokers; the broker fixtures live in hexbus.testing.brokers.

The bus makers here give each test its own namespace on the shared brokers and clean
it up afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from bus_makers import KafkaBusMaker, RabbitBusMaker


@pytest.fixture
async def rabbit_bus_maker(rabbitmq_url: str, unique_name: str) -> AsyncIterator[RabbitBusMaker]:
    maker = RabbitBusMaker(rabbitmq_url, unique_name)
    try:
        yield maker
    finally:
        await maker.cleanup()


@pytest.fixture
async def kafka_bus_maker(
    kafka_bootstrap_servers: str, unique_name: str
) -> AsyncIterator[KafkaBusMaker]:
    maker = KafkaBusMaker(kafka_bootstrap_servers, unique_name)
    try:
        yield maker
    finally:
        await maker.cleanup()

