"""Batched acks on RabbitMQ: nothing is acked before its handler finished, and a slow
handler holds back only its own ack (``consumer._Acks``)."""

from __future__ import annotations

import asyncio
from typing import Any

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


class Counted(DomainEvent, event_type="rabbitacks.counted"):
    seq: int


async def test_consuming_takes_one_task_per_message_not_two(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    """N messages waiting in the queue: consuming them all starts about N tasks (the
    client's task per delivery, which runs the handler), not aio-pika's 2N (its
    ``Queue.consume`` wraps every callback in a task of its own; ``DirectQueue``
    skips that one). The allowance above N covers the connection's own tasks and the
    ack flushers. The consumer still handles every message once."""
    total = 200

    async def ignore(event: Counted) -> None:
        pass

    declaring = rabbit_bus_maker()
    declaring.subscribe(Counted, ignore, name="counted")
    async with declaring:  # declares and binds the durable work queue, then stops
        await declaring.wait_ready()
    publishing = rabbit_bus_maker()
    async with publishing:
        await publishing.publish_many([Counted(seq=seq) for seq in range(total)])

    handled: list[int] = []

    async def record(event: Counted) -> None:
        handled.append(event.seq)

    created = 0
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()

    def counting(
        loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Task[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    consuming = rabbit_bus_maker(prefetch=100)
    consuming.subscribe(Counted, record, name="counted")
    loop.set_task_factory(counting)
    try:
        async with consuming:
            await eventually(lambda: len(handled) >= total, timeout=30)
            consumed = created
    finally:
        loop.set_task_factory(previous)
    assert sorted(handled) == list(range(total))
    assert total <= consumed < total * 3 // 2, f"{consumed} tasks for {total} messages"
