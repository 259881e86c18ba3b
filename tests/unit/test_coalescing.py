"""The coalescer of concurrent single publishes (``hexbus.application.coalescing``).

The broker adapters' own tests check the same behaviour end to end on real brokers
(``test_rabbitmq_publish_many.py``, ``test_kafka_features.py``); these check the rules
of forming and settling groups alone, with a ``flush`` that records what it was given.
"""

from __future__ import annotations

import asyncio

import pytest

from hexbus.application.coalescing import Coalescer, Group
from hexbus.domain.errors import PublishError


class _Sender:
    """A publisher shaped like the adapters': a lone call goes direct, others join."""

    def __init__(self) -> None:
        self.direct: list[str] = []
        self.groups: list[list[str]] = []
        self.refuse: set[str] = set()
        self.raise_in_flush: BaseException | None = None
        self.hold: asyncio.Event | None = None
        #: Set: a direct call, once written, waits for it (its ack still out).
        self.acks: asyncio.Event | None = None
        self.coalescer: Coalescer[str] = Coalescer(self.flush, cancelled="cancelled: stopped")

    async def flush(self, group: Group[str]) -> None:
        self.groups.append(list(group.items))
        if self.hold is not None:
            await self.hold.wait()
        if self.raise_in_flush is not None:
            raise self.raise_in_flush
        group.settle_all(
            [PublishError(f"refused {x}") if x in self.refuse else None for x in group.items]
        )

    async def send(self, item: str) -> None:
        with self.coalescer.calling():
            if self.coalescer.direct():
                self.direct.append(item)  # written
                await asyncio.sleep(0)  # the round trip
                if self.acks is not None:
                    await self.acks.wait()
                return
            _, waiter = self.coalescer.join(item)
            await waiter


async def _held(count: int) -> tuple[_Sender, list[asyncio.Future[None]]]:
    """``count`` concurrent sends whose group (all but the first two, which went
    direct) is being flushed and held there."""
    sender = _Sender()
    sender.hold = asyncio.Event()
    calls = [asyncio.ensure_future(sender.send(f"e{i}")) for i in range(count)]
    while not sender.groups:
        await asyncio.sleep(0)
    return sender, calls


async def test_a_lone_call_goes_direct_and_concurrent_calls_form_one_group_in_call_order() -> None:
    sender = _Sender()
    await sender.send("a")
    assert sender.direct == ["a"] and sender.groups == []

    await asyncio.gather(*(sender.send(f"e{i}") for i in range(5)))
    # The first of the burst was alone when it started, the second had nothing queued
    # ahead of it; the three behind them joined one group, written once, in the order
    # of the calls.
    assert sender.direct == ["a", "e0", "e1"]
    assert sender.groups == [["e2", "e3", "e4"]]


async def test_a_steady_stream_goes_direct_while_earlier_calls_await_their_acks() -> None:
    """One call per event-loop iteration, each earlier one written and awaiting its ack
    (a publish a millisecond, confirms still out): none waits for a group's task."""
    sender = _Sender()
    sender.acks = asyncio.Event()
    calls = []
    for i in range(4):
        calls.append(asyncio.ensure_future(sender.send(f"s{i}")))
        await asyncio.sleep(0)
    assert sender.direct == ["s0", "s1", "s2", "s3"] and sender.groups == []

    # A burst meanwhile: its first call goes direct, the rest group behind it, and
    # while that group is being written, a later call joins a group too (never
    # overtaking it).
    sender.hold = asyncio.Event()
    calls += [asyncio.ensure_future(sender.send(f"b{i}")) for i in range(3)]
    while not sender.groups:
        await asyncio.sleep(0)
    calls.append(asyncio.ensure_future(sender.send("late")))
    await asyncio.sleep(0)
    assert sender.direct == ["s0", "s1", "s2", "s3", "b0"]
    assert sender.groups == [["b1", "b2"]]
    sender.hold.set()
    sender.acks.set()
    await asyncio.gather(*calls)
    assert sender.groups == [["b1", "b2"], ["late"]]
    assert len(sender.direct) == 5


async def test_each_caller_is_told_its_own_outcome() -> None:
    sender = _Sender()
    sender.refuse = {"e2"}
    results = await asyncio.gather(
        *(sender.send(f"e{i}") for i in range(4)), return_exceptions=True
    )
    assert results[0] is None and results[1] is None and results[3] is None
    assert isinstance(results[2], PublishError) and "refused e2" in str(results[2])


async def test_a_flush_that_raises_fails_every_member_and_a_cancelled_one_says_so() -> None:
    sender = _Sender()
    sender.raise_in_flush = ConnectionError("gone")
    calls = [sender.send(f"e{i}") for i in range(4)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:2] == [None, None]  # the first two went direct
    assert all(isinstance(r, ConnectionError) for r in results[2:])

    sender, calls = await _held(4)
    sender.coalescer.cancel()  # the bus stopped without draining
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[2], PublishError) and "cancelled: stopped" in str(results[2])
    assert isinstance(results[3], PublishError)


async def test_a_caller_that_gives_up_leaves_the_others_their_outcome() -> None:
    sender, calls = await _held(4)
    calls[2].cancel()
    sender.hold.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [results[i] for i in (0, 1, 3)] == [None, None, None]


async def test_drain_waits_for_the_groups_formed_so_far() -> None:
    sender, calls = await _held(3)
    drained = asyncio.ensure_future(sender.coalescer.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    sender.hold.set()
    await drained
    assert all(call.done() for call in calls[2:])
    await asyncio.gather(*calls)


@pytest.mark.parametrize("outcome", [None, PublishError("no")])
async def test_settling_a_member_twice_keeps_the_first_outcome(
    outcome: BaseException | None,
) -> None:
    group: Group[str] = Group()
    loop = asyncio.get_running_loop()
    group.items.append("x")
    group.waiters.append(loop.create_future())
    group.settle(0, outcome)
    group.settle(0, PublishError("later"))
    group.fail(PublishError("later still"))
    if outcome is None:
        assert group.waiters[0].result() is None
    else:
        assert group.waiters[0].exception() is outcome
