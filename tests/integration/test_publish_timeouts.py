"""``publish_timeout`` against a frozen broker, on both brokers.

A frozen broker (``broker_stall``: SIGSTOP, or ``docker pause`` for this session's
container) keeps its connections open and answers nothing, so only the publisher's own
deadline ends a publish: the shared deadline watchdog (``hexbus.application.deadlines``).
What must hold: a lone publish and a group of concurrent ones each fail with the
``PublishError`` that names ``publish_timeout`` (not a ``CancelledError``, not a hang); the
caller's task is left uncancelled; a caller's own cancellation stays a cancellation; and
once the broker is back, publishing works again on the same bus.
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urlsplit

import pytest
from bus_makers import KafkaBusMaker, RabbitBusMaker

from hexbus import DomainEvent, PublishError
from hexbus.infrastructure.kafka import KafkaEventBus
from hexbus.infrastructure.rabbitmq import RabbitMQEventBus
from hexbus.testing.faults import broker_stall, publish_until_acked
from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration

#: Kafka's request timeout is ``max(1 s, publish_timeout)``: with 0.5 s the watchdog
#: (0.5 s + at most one 0.05 s interval) ends the publish before the client gives up.
PUBLISH_TIMEOUT = 0.5
#: A frozen broker must not make a publish hang: the deadline plus ample slack.
BOUND = 10.0


class Stalled(DomainEvent, event_type="timeouts.stalled"):
    seq: int


async def _frozen_publishes_time_out(
    bus: KafkaEventBus | RabbitMQEventBus, kind: str, port: int, expected: str
) -> None:
    seen: list[int] = []

    async def handler(event: Stalled) -> None:
        seen.append(event.seq)

    bus.subscribe(Stalled, handler, name="stalled")
    await bus.start()
    await bus.wait_ready()
    await bus.publish(Stalled(seq=0))  # topic / exchange known, producer connected
    await eventually(lambda: 0 in seen, timeout=60)
    task = asyncio.current_task()
    assert task is not None

    async with broker_stall(kind, port):
        began = time.monotonic()
        with pytest.raises(PublishError, match=expected):
            await bus.publish(Stalled(seq=1))
        waited = time.monotonic() - began
        assert PUBLISH_TIMEOUT * 0.9 <= waited < BOUND, waited
        assert task.cancelling() == 0  # the deadline's cancellation was taken back

        # Concurrent publishes (one group) each get their own error.
        results = await asyncio.gather(
            *(bus.publish(Stalled(seq=n)) for n in range(2, 5)), return_exceptions=True
        )
        assert all(isinstance(r, PublishError) for r in results), results
        assert all(re.search(expected, str(r)) for r in results), results
        assert task.cancelling() == 0

        # The caller's own cancellation is not turned into a PublishError.
        publishing = asyncio.create_task(bus.publish(Stalled(seq=5)))
        for _ in range(5):
            await asyncio.sleep(0)  # let it start: it then waits for the frozen broker
        assert not publishing.done()
        publishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await publishing

    # The broker is back: the same bus publishes (and delivers) again.
    acked: set[str] = set()
    after = Stalled(seq=6)
    await publish_until_acked(bus, [after], acked, deadline=90)
    assert str(after.event_id) in acked
    await eventually(lambda: 6 in seen, timeout=60)


async def test_kafka_publish_to_a_frozen_broker_times_out(
    kafka_bus_maker: KafkaBusMaker,
) -> None:
    port = int(kafka_bus_maker.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    bus = kafka_bus_maker(publish_timeout=PUBLISH_TIMEOUT)
    await _frozen_publishes_time_out(
        bus, "kafka", port, rf"did not acknowledge .* within publish_timeout={PUBLISH_TIMEOUT}s"
    )


async def test_rabbitmq_publish_to_a_frozen_broker_times_out(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    port = urlsplit(rabbit_bus_maker.url).port or 5672
    bus = rabbit_bus_maker(publish_timeout=PUBLISH_TIMEOUT)
    await _frozen_publishes_time_out(
        bus, "rabbitmq", port, rf"not confirmed .* within {PUBLISH_TIMEOUT}s"
    )
