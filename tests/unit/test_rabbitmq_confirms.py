"""Confirmation slots (``publisher._Confirms``) as aiormq's own confirm code settles them.

``publish_many`` and groups of concurrent publishes register a slot per publish in the
aiormq channel's ``confirmations`` instead of a future each. These tests drive the slots
through aiormq's real ``Channel._on_confirm_frame`` / ``_confirm_delivery`` and a real
aiormq ``FutureStore`` (what fails futures when a channel closes), so an aiormq upgrade
that treats confirmation entries differently fails here. The broker side of the same path
is in ``tests/integration/test_rabbitmq_publish_many.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import aiormq
import pytest
from aiormq import spec
from aiormq.base import FutureStore

from hexbus.infrastructure.rabbitmq.publisher import (
    _LOST,
    _WAITING,
    _Confirms,
    _settle_confirms_in_order,
)


def _channel(loop: asyncio.AbstractEventLoop, *, in_order: bool = False) -> Any:
    """What aiormq's confirm handling reads of a channel, with its real methods bound
    (``in_order``: with the publisher's replacement of ``_on_confirm_frame``)."""
    store = FutureStore(loop)
    channel = SimpleNamespace(
        loop=loop,
        store=store,
        create_future=store.create_future,
        confirmations=OrderedDict(),
        publisher_confirms=True,
    )
    channel._confirm_delivery = functools.partial(aiormq.Channel._confirm_delivery, channel)
    channel._on_confirm_frame = functools.partial(aiormq.Channel._on_confirm_frame, channel)
    if in_order:
        _settle_confirms_in_order(channel)
    return channel


def _register(channel: Any, confirms: _Confirms, count: int) -> None:
    """What ``_put_many`` does after a write: a delivery tag per slot."""
    for slot in confirms.slots(count):
        channel.confirmations[len(channel.confirmations) + 1] = slot


async def _frame(channel: Any, frame: Any) -> None:
    await channel._on_confirm_frame(frame)
    for _ in range(3):  # a multiple ack settles each tag in a call_soon of its own
        await asyncio.sleep(0)


@pytest.mark.parametrize("in_order", [False, True], ids=["aiormq", "in-order"])
async def test_acks_and_a_nack_settle_their_own_slots_and_the_call_wakes_once_all_did(
    in_order: bool,
) -> None:
    channel = _channel(asyncio.get_running_loop(), in_order=in_order)
    confirms = _Confirms(channel)
    _register(channel, confirms, 5)

    await _frame(channel, spec.Basic.Ack(delivery_tag=3, multiple=True))
    assert confirms.outcomes[:3] == [None, None, None]
    assert confirms.outcomes[3:] == [_WAITING, _WAITING]
    assert not confirms.done.done()

    await _frame(channel, spec.Basic.Nack(delivery_tag=4))
    assert isinstance(confirms.outcomes[3], aiormq.exceptions.DeliveryError)
    assert not confirms.done.done()

    await _frame(channel, spec.Basic.Ack(delivery_tag=5))
    assert confirms.outcomes[4] is None
    assert confirms.done.done()
    assert not channel.confirmations  # aiormq let go of every slot
    confirms.close()
    await asyncio.sleep(0)  # the store forgets a done future in a callback
    assert not channel.store.futures  # the sentinel left aiormq's store too


@pytest.mark.parametrize("in_order", [False, True], ids=["aiormq", "in-order"])
async def test_a_closing_channel_marks_the_slots_still_waiting_lost(
    caplog: pytest.LogCaptureFixture, in_order: bool
) -> None:
    channel = _channel(asyncio.get_running_loop(), in_order=in_order)
    confirms = _Confirms(channel)
    _register(channel, confirms, 3)
    await _frame(channel, spec.Basic.Ack(delivery_tag=1))

    await channel.store.reject_all(ConnectionError("connection reset"))  # a channel closing
    assert confirms.outcomes == [None, _LOST, _LOST]
    assert confirms.done.done()

    # A confirm that still comes for a lost slot changes nothing, and aiormq logs it
    # only at debug level (it reads the slot as cancelled).
    with caplog.at_level(logging.DEBUG, logger="aiormq"):
        await _frame(channel, spec.Basic.Ack(delivery_tag=2))
    assert confirms.outcomes == [None, _LOST, _LOST]
    assert all(record.levelno < logging.WARNING for record in caplog.records)

    # Publishes written after the loss (a later group of the same call) start lost.
    _register(channel, confirms, 2)
    assert confirms.outcomes[3:] == [_LOST, _LOST]
    assert confirms.pending == 0


@pytest.mark.parametrize("in_order", [False, True], ids=["aiormq", "in-order"])
async def test_a_confirm_after_the_call_gave_up_is_ignored(in_order: bool) -> None:
    channel = _channel(asyncio.get_running_loop(), in_order=in_order)
    confirms = _Confirms(channel)
    _register(channel, confirms, 2)
    confirms.close()  # the call timed out and read its outcomes: both unconfirmed
    await asyncio.sleep(0)
    assert not channel.store.futures

    await _frame(channel, spec.Basic.Ack(delivery_tag=2, multiple=True))
    assert confirms.outcomes == [None, None]  # recorded, read by nobody
    assert confirms.done.done()


async def test_in_order_settling_takes_each_tag_once_up_to_the_acked_one() -> None:
    """The replacement of aiormq's ``_on_confirm_frame``: a multiple ack settles the
    pending tags up to its own, in order, each once and at once (aiormq's own schedules
    a callback per pending tag per ack), and leaves the later ones; a multiple nack
    fails its range; aiormq's futures (a lone ``basic_publish``) are settled the same."""
    loop = asyncio.get_running_loop()
    channel = _channel(loop, in_order=True)
    settled: list[int] = []
    confirm = channel._confirm_delivery

    def counting(tag: int, frame: Any) -> None:
        settled.append(tag)
        confirm(tag, frame)

    channel._confirm_delivery = counting
    _settle_confirms_in_order(channel)  # again, over the counting confirm
    confirms = _Confirms(channel)
    _register(channel, confirms, 6)
    future = loop.create_future()  # what basic_publish registers for a lone publish
    channel.confirmations[7] = future

    await channel._on_confirm_frame(spec.Basic.Ack(delivery_tag=2, multiple=True))
    await channel._on_confirm_frame(spec.Basic.Ack(delivery_tag=4, multiple=True))
    assert settled == [1, 2, 3, 4]  # no tag twice, none beyond the ack
    assert confirms.outcomes[:4] == [None] * 4 and confirms.outcomes[4:] == [_WAITING] * 2

    await channel._on_confirm_frame(spec.Basic.Nack(delivery_tag=6, multiple=True))
    assert all(isinstance(o, aiormq.exceptions.DeliveryError) for o in confirms.outcomes[4:])
    await channel._on_confirm_frame(spec.Basic.Ack(delivery_tag=7))
    assert future.result() is not None
    assert settled == [1, 2, 3, 4, 5, 6, 7] and not channel.confirmations
