"""The adapter contract suite (``hexbus.testing``) against a real RabbitMQ."""

from __future__ import annotations

import pytest
from bus_makers import RabbitBusMaker

from hexbus import EventBus
from hexbus.testing import BusFactory, Capabilities, EventBusContract

pytestmark = pytest.mark.integration


class TestRabbitMQContract(EventBusContract):
    capabilities = Capabilities(
        durable=True,
        redelivery=True,
        dead_letter=True,
        ordering="per_queue",
        consumer_groups=True,
        delivers_in_publish=False,
        max_attempts=3,
    )
    adapter_name = "rabbitmq"
    timeout = 15.0
    retry_timeout = 30.0

    @pytest.fixture
    def bus_factory(self, rabbit_bus_maker: RabbitBusMaker) -> BusFactory:
        # One exchange and service name per test (rabbit_bus_maker): buses of one test meet on
        # the broker, tests never see each other's events; short back-off tiers.
        async def make() -> EventBus:
            return rabbit_bus_maker(max_attempts=self.capabilities.max_attempts)

        return make
