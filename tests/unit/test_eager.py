"""The compiled eager start (``hexbus.application._eager``): built, chosen, and faithful.

Every dispatch test runs against both starts (``conftest.dispatcher_kind``); these
check what only the choice between them can get wrong: that CI really runs the
compiled one, that an instrumented dispatcher falls back to Python and comes back,
that a stale or unwanted build is not used, and the few places where C handles
Python objects itself (a list of subscriptions, a BaseException, the registry of
current tasks, the counters).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import types
from typing import Any, cast

import pytest

import hexbus.application.dispatch as dispatch
from hexbus import DomainEvent, InMemoryEventBus
from hexbus.application.dispatch import Dispatcher
from hexbus.application.handlers import Subscription
from hexbus.application.observing import Instrumentation
from hexbus.domain.context import DeliveryContext

pytestmark = pytest.mark.skipif(
    dispatch._Engine is None and os.environ.get("CI") != "true",
    reason="hexbus.application._eager is not built (see hatch_build.py)",
)


class EagerPing(DomainEvent, event_type="ut.eager.ping"):
    n: int = 0


class Interrupt(BaseException):
    """Not an Exception: a handler raising it stops the publish, as in the runner."""


def test_the_compiled_start_is_built_and_used() -> None:
    """``make test`` installs hexbus with its build hook: the start must be compiled,
    and on CPython read contexts directly (``_eager.c``'s layout self-test)."""
    assert dispatch._Engine is not None, "hexbus.application._eager did not build"
    dispatcher = Dispatcher()
    assert dispatcher.compiled
    from hexbus.application import _eager  # noqa: PLC0415 - present, as asserted above

    assert _eager.API == dispatch._ENGINE_API
    if sys.implementation.name == "cpython":
        assert _eager.READS_CONTEXT_VARS == 1


def test_an_instrumented_dispatcher_starts_in_python_and_back() -> None:
    dispatcher = Dispatcher()
    dispatcher.instrumentation = cast("Instrumentation", object())  # only its presence counts
    assert not dispatcher.compiled
    assert dispatcher.start == dispatcher.start_in_python
    assert dispatcher.deliver == dispatcher.deliver_in_python
    dispatcher.instrumentation = None
    assert dispatcher.compiled


def test_hexbus_pure_python_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_PURE_PYTHON", "1")
    assert dispatch._compiled_engine() is None


def test_a_stale_build_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stale = types.ModuleType("hexbus.application._eager")
    stale.API = dispatch._ENGINE_API - 1  # type: ignore[attr-defined]
    stale.Engine = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hexbus.application._eager", stale)
    with caplog.at_level(logging.WARNING, logger="hexbus.dispatch"):
        assert dispatch._compiled_engine() is None
    assert "stale build" in caplog.text
    assert "reinstall hexbus" in caplog.text


async def test_a_list_of_subscriptions_is_read_as_it_was_at_the_start() -> None:
    """The C loop walks a snapshot: a handler that appends to the list it was given
    cannot make it read past the end (the Python runner iterates the list live)."""
    ran: list[str] = []

    async def grow(event: EagerPing) -> None:
        ran.append("grow")
        subs.extend([late] * 1000)

    async def late_handler(event: EagerPing) -> None:
        ran.append("late")

    late = Subscription(EagerPing, late_handler, "late", True)
    subs = [Subscription(EagerPing, grow, "grow", True)]
    dispatcher = Dispatcher()
    event = EagerPing()
    assert dispatcher.start(event, subs, DeliveryContext(event=event)) is None
    assert ran == ["grow"]
    assert dispatcher.stats.handled == 1


async def test_a_base_exception_stops_the_publish_and_restores_the_current_task() -> None:
    publisher = asyncio.current_task()
    ran: list[str] = []

    async def first(event: EagerPing) -> None:
        ran.append("first")
        raise Interrupt

    async def second(event: EagerPing) -> None:
        ran.append("second")

    async with InMemoryEventBus() as bus:
        assert bus.dispatcher.compiled
        bus.subscribe(EagerPing, first)
        bus.subscribe(EagerPing, second)
        with pytest.raises(Interrupt):
            await bus.publish(EagerPing())
        assert asyncio.current_task() is publisher
        assert ran == ["first"]
        assert bus.stats.failed == 0


async def test_counters_and_the_delivery_context_from_the_compiled_delivery() -> None:
    seen: list[tuple[Any, Any, int, str | None]] = []

    async def handler(event: EagerPing) -> None:
        context = dispatch.delivery_context.get()
        seen.append((context.event, context.metadata, context.attempt, context.key))

    async with InMemoryEventBus() as bus:
        assert bus.dispatcher.compiled
        bus.subscribe(EagerPing, handler)
        event = EagerPing(n=1)
        await bus.publish(event, metadata={"tenant": "t1"}, key="k1")
        await bus.publish(EagerPing(n=2))
        assert bus.stats.published == 2
        assert bus.stats.handled == 2
    assert seen[0] == (event, {"tenant": "t1"}, 1, "k1")
    assert seen[1][1] == {} and seen[1][2] == 1
    assert seen[1][3] == str(seen[1][0].event_id)  # the default key: the event id
    assert dispatch.delivery_context.get().event is None  # nothing leaked to the publisher


async def test_the_loop_is_found_again_in_another_thread() -> None:
    """One dispatcher, publishes from two event loops in two threads: the cached loop
    of one thread must not be taken for the running loop of the other."""
    seen: list[asyncio.AbstractEventLoop] = []

    async def handler(event: EagerPing) -> None:
        async with asyncio.timeout(5):  # reads asyncio.current_task() eagerly
            seen.append(asyncio.get_running_loop())

    dispatcher = Dispatcher()
    subs = (Subscription(EagerPing, handler, "h", True),)

    async def publish_once() -> None:
        event = EagerPing()
        assert dispatcher.start(event, subs, DeliveryContext(event=event)) is None

    await publish_once()
    await asyncio.to_thread(asyncio.run, publish_once())
    await publish_once()
    assert len(seen) == 3
    assert seen[0] is seen[2] is asyncio.get_running_loop()
    assert seen[1] is not seen[0]
    assert dispatcher.stats.failed == 0
