"""The adapter contract suite (``hexbus.testing``) against a real Kafka."""

from __future__ import annotations

import pytest

from hexbus import EventBus
from hexbus.infrastructure.kafka import KafkaConfig, KafkaEventBus
from hexbus.testing import BusFactory, Capabilities, EventBusContract

pytestmark = pytest.mark.integration


class TestKafkaContract(EventBusContract):
    capabilities = Capabilities(
        durable=True,
        redelivery=True,
        dead_letter=True,
        ordering="per_key",
        consumer_groups=True,
        delivers_in_publish=False,
        max_attempts=3,
    )
    adapter_name = "kafka"
    timeout = 20.0
    retry_timeout = 30.0

    @pytest.fixture
    def bus_factory(self, kafka_bootstrap_servers: str, unique_name: str) -> BusFactory:
        # One topic prefix and service name per test: the buses of one test meet on the
        # broker (same topics, same consumer groups), tests never see each other's events.
        config = KafkaConfig(
            bootstrap_servers=kafka_bootstrap_servers,
            topic_prefix=f"{unique_name}.",
            service_name=unique_name,
            max_attempts=self.capabilities.max_attempts,
            retry_delays=(0.05,),
            drain_timeout=10.0,
            metadata_max_age_ms=1000,
        )

        async def make() -> EventBus:
            return KafkaEventBus(config)

        return make
