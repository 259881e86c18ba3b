"""Batched acks on RabbitMQ: nothing is acked before its handler finished, and a slow
handler holds back only its own ack (``consumer._Acks``)."""

from __future__ import annotations

import asyncio

import pytest
from bus_makers import RabbitBusMaker

from hexbus import DomainEvent
from hexbus.testing.waiting import eventually

pytestmark = pytest.mark.integration


class AckProbe(DomainEvent, event_type="rabbitacks.probe"):
    seq: int


async def test_a_slow_handler_holds_back_only_its_own_ack(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    """prefetch=2 and the first delivery blocked: the others are still handled one
    after another (their acks free the second prefetch slot); stopping the bus then
    requeues the blocked one only, and the next consumer gets exactly that one again."""
    release = asyncio.Event()
    first_run: list[int] = []

    async def blocking(event: AckProbe) -> None:
        first_run.append(event.seq)
        if event.seq == 0:
            await release.wait()

    bus = rabbit_bus_maker(prefetch=2, drain_timeout=0.5)
    bus.subscribe(AckProbe, blocking, name="acks")
    async with bus:
        await bus.wait_ready()
        for seq in range(6):
            await bus.publish(AckProbe(seq=seq))
        await eventually(lambda: sorted(first_run) == list(range(6)), timeout=20)
    # stop() gave up on seq 0 after drain_timeout: requeued, never acked.

    second_run: list[int] = []

    async def counting(event: AckProbe) -> None:
        second_run.append(event.seq)

    again = rabbit_bus_maker()
    again.subscribe(AckProbe, counting, name="acks")
    async with again:
        await again.wait_ready()
        await eventually(lambda: second_run == [0], timeout=20)
        await again.publish(AckProbe(seq=99))  # a marker: everything before it is in
        await eventually(lambda: 99 in second_run, timeout=20)
    assert second_run == [0, 99]
