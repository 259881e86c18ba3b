"""The in-memory adapter: lifecycle, publish validation, background mode, middleware.

Why these checks: the memory bus is what application tests run against, so it must
refuse exactly what the broker adapters refuse (non-events, bad metadata, use before
start or after stop), and ``stop()`` must not lose or leak in-flight handlers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from hexbus import (
    BusClosedError,
    CorrelationIdMiddleware,
    DomainEvent,
    FilterMiddleware,
    InMemoryEventBus,
    LoggingMiddleware,
    MemoryConfig,
    NotStartedError,
)
from hexbus.application.bus import BusState
from hexbus.domain.errors import (
    InvalidHandlerError,
    InvalidMetadataError,
    NotADomainEventError,
)

# Each test runs with the compiled eager start and with the Python one (conftest.py).
pytestmark = pytest.mark.usefixtures("dispatcher_kind")

BOUND = 5.0


class UtMemA(DomainEvent, event_type="ut.mem.a"):
    n: int = 0


class UtMemB(DomainEvent, event_type="ut.mem.b"):
    n: int = 0


class NotAnEvent(BaseModel):
    n: int = 0


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus() as b:
        yield b


# -- lifecycle --------------------------------------------------------------------------
async def test_publish_before_start() -> None:
    bus = InMemoryEventBus()
    assert bus.state is BusState.NEW
    with pytest.raises(NotStartedError, match="start") as info:
        await bus.publish(UtMemA())
    assert not isinstance(info.value, BusClosedError)


async def test_publish_after_stop() -> None:
    bus = InMemoryEventBus()
    await bus.start()
    await bus.stop()
    assert bus.state is BusState.CLOSED
    with pytest.raises(BusClosedError):
        await bus.publish(UtMemA())
    with pytest.raises(BusClosedError):
        await bus.start()  # a stopped bus is not restarted
    await bus.stop()  # stopping again is harmless


async def test_start_twice_and_async_with() -> None:
    calls: list[int] = []

    async def h(event: UtMemA) -> None:
        calls.append(event.n)

    bus = InMemoryEventBus()
    async with bus as entered:
        assert entered is bus
        await bus.start()
        assert bus.state is BusState.RUNNING
        bus.subscribe(UtMemA, h)
        await bus.publish(UtMemA(n=1))
    assert bus.state is BusState.CLOSED
    assert calls == [1]


async def test_stop_of_a_never_started_bus_closes_it() -> None:
    bus = InMemoryEventBus()
    await bus.stop()
    with pytest.raises(BusClosedError):
        await bus.publish(UtMemA())


@pytest.mark.parametrize("bad", [{"n": 1}, NotAnEvent(), "ut.mem.a", None])
async def test_publish_rejects_non_events(bus: InMemoryEventBus, bad: Any) -> None:
    with pytest.raises(NotADomainEventError):
        await bus.publish(bad)


@pytest.mark.parametrize(
    "metadata",
    [{"a": 1}, {1: "a"}, {"a": None}, [("a", "b")]],
    ids=["int-value", "int-key", "none", "list"],
)
async def test_publish_rejects_bad_metadata(bus: InMemoryEventBus, metadata: Any) -> None:
    ran: list[int] = []

    async def h(event: UtMemA) -> None:
        ran.append(1)

    bus.subscribe(UtMemA, h)
    with pytest.raises(InvalidMetadataError):
        await bus.publish(UtMemA(), metadata=metadata)
    assert ran == []


async def test_bad_metadata_is_rejected_even_without_subscribers(bus: InMemoryEventBus) -> None:
    with pytest.raises(InvalidMetadataError):
        await bus.publish(UtMemA(), metadata={"retries": 3})  # type: ignore[dict-item]


async def test_publish_many_keeps_order(bus: InMemoryEventBus) -> None:
    seen: list[tuple[str, int]] = []

    async def on_a(event: UtMemA) -> None:
        await asyncio.sleep(0.001 * (5 - event.n))  # later events finish faster
        seen.append(("a", event.n))

    async def on_b(event: UtMemB) -> None:
        seen.append(("b", event.n))

    bus.subscribe(UtMemA, on_a)
    bus.subscribe(UtMemB, on_b)
    events = [UtMemA(n=1), UtMemB(n=2), UtMemA(n=3), UtMemB(n=4), UtMemA(n=5)]
    await bus.publish_many(iter(events))
    assert seen == [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5)]
    assert bus.stats.published == 5


# -- background mode -------------------------------------------------------------------
async def test_background_publish_returns_before_handler_and_stop_drains() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    done: list[int] = []

    async def slow(event: UtMemA) -> None:
        started.set()
        await gate.wait()
        await asyncio.sleep(0.02)
        done.append(event.n)

    bus = InMemoryEventBus(mode="background")
    await bus.start()
    bus.subscribe(UtMemA, slow)
    await bus.publish(UtMemA(n=1))
    assert done == []  # publish returned while the handler is not finished
    async with asyncio.timeout(BOUND):
        await started.wait()
    assert done == []
    gate.set()
    async with asyncio.timeout(BOUND):
        await bus.stop()
    assert done == [1]  # stop() waited for it
    assert bus.stats.handled == 1


async def test_background_publish_does_not_run_handler_inline() -> None:
    ran: list[int] = []

    async def quick(event: UtMemA) -> None:
        ran.append(event.n)

    async with InMemoryEventBus(mode="background") as bus:
        bus.subscribe(UtMemA, quick)
        await bus.publish(UtMemA(n=1))
        assert ran == []
    assert ran == [1]


async def test_background_stop_cancels_handlers_after_drain_timeout() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    handler_tasks: list[asyncio.Task[Any]] = []

    async def forever(event: UtMemA) -> None:
        await asyncio.sleep(0)
        task = asyncio.current_task()
        assert task is not None
        handler_tasks.append(task)
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bus = InMemoryEventBus(MemoryConfig(mode="background", drain_timeout=0.1))
    await bus.start()
    bus.subscribe(UtMemA, forever)
    await bus.publish(UtMemA())
    try:
        async with asyncio.timeout(BOUND):
            await started.wait()
        loop = asyncio.get_running_loop()
        begin = loop.time()
        async with asyncio.timeout(BOUND):
            await bus.stop()
        assert 0.09 <= loop.time() - begin < 2.0
        assert bus.state is BusState.CLOSED
        assert cancelled.is_set()
    finally:
        for task in handler_tasks:  # never leave a task running past the test
            task.cancel()
        if handler_tasks:
            await asyncio.wait(handler_tasks, timeout=BOUND)


async def test_await_mode_stop_drains_a_publish_in_flight() -> None:
    gate = asyncio.Event()
    done: list[int] = []

    async def slow(event: UtMemA) -> None:
        await gate.wait()
        done.append(event.n)

    bus = InMemoryEventBus()
    await bus.start()
    bus.subscribe(UtMemA, slow)
    publisher = asyncio.create_task(bus.publish(UtMemA(n=4)))
    await asyncio.sleep(0)  # the handler is now suspended on the gate
    stopper = asyncio.create_task(bus.stop())
    await asyncio.sleep(0)
    assert not stopper.done()
    gate.set()
    async with asyncio.timeout(BOUND):
        await asyncio.gather(publisher, stopper)
    assert done == [4]


# -- middleware --------------------------------------------------------------------------
async def test_middleware_runs_in_order_added(bus: InMemoryEventBus) -> None:
    order: list[str] = []
    received: list[DomainEvent] = []

    def first(event: DomainEvent) -> DomainEvent:
        order.append("first")
        return event.model_copy(update={"correlation_id": "from-first"})

    def second(event: DomainEvent) -> DomainEvent:
        order.append(f"second saw {event.correlation_id}")
        return event.model_copy(update={"source": "second"})

    async def h(event: UtMemA) -> None:
        received.append(event)

    bus.add_middleware(first)
    bus.add_middleware(second)
    bus.subscribe(UtMemA, h)
    original = UtMemA()
    await bus.publish(original)
    assert order == ["first", "second saw from-first"]
    assert len(received) == 1
    assert received[0].event_id == original.event_id
    assert received[0].correlation_id == "from-first"
    assert received[0].source == "second"


async def test_middleware_returning_none_drops_the_event(bus: InMemoryEventBus) -> None:
    ran: list[int] = []
    after: list[int] = []

    async def h(event: UtMemA) -> None:
        ran.append(event.n)

    def drop_odd(event: DomainEvent) -> DomainEvent | None:
        return None if getattr(event, "n", 0) % 2 else event

    def later(event: DomainEvent) -> DomainEvent:
        after.append(1)
        return event

    bus.add_middleware(drop_odd)
    bus.add_middleware(later)
    bus.subscribe(UtMemA, h)
    await bus.publish(UtMemA(n=1))
    await bus.publish(UtMemA(n=2))
    assert ran == [2]
    assert after == [1]  # middleware after the dropping one did not run for n=1


async def test_async_middleware(bus: InMemoryEventBus) -> None:
    received: list[str] = []

    async def stamp(event: DomainEvent) -> DomainEvent:
        await asyncio.sleep(0)
        return event.model_copy(update={"source": "async-mw"})

    class AsyncCallable:
        async def __call__(self, event: DomainEvent) -> DomainEvent | None:
            await asyncio.sleep(0)
            return event if event.source == "async-mw" else None

    async def h(event: UtMemA) -> None:
        received.append(event.source)

    bus.add_middleware(stamp)
    bus.add_middleware(AsyncCallable())
    bus.subscribe(UtMemA, h)
    await bus.publish(UtMemA())
    assert received == ["async-mw"]


async def test_middleware_returning_a_non_event_is_an_error(bus: InMemoryEventBus) -> None:
    ran: list[int] = []

    async def h(event: UtMemA) -> None:
        ran.append(1)

    bus.add_middleware(lambda event: event.to_dict())
    bus.subscribe(UtMemA, h)
    with pytest.raises(InvalidHandlerError):
        await bus.publish(UtMemA())
    assert ran == []


def test_non_callable_middleware_is_rejected() -> None:
    with pytest.raises(InvalidHandlerError):
        InMemoryEventBus().add_middleware("nope")  # type: ignore[arg-type]


async def test_middleware_may_change_the_event_class(bus: InMemoryEventBus) -> None:
    got: list[str] = []

    async def on_a(event: UtMemA) -> None:
        got.append("a")

    async def on_b(event: UtMemB) -> None:
        got.append("b")

    def a_to_b(event: DomainEvent) -> DomainEvent:
        return UtMemB(n=getattr(event, "n", 0)) if isinstance(event, UtMemA) else event

    bus.subscribe(UtMemA, on_a)
    bus.subscribe(UtMemB, on_b)
    bus.add_middleware(a_to_b)
    await bus.publish(UtMemA())
    assert got == ["b"]


async def test_correlation_id_middleware(bus: InMemoryEventBus) -> None:
    request_id: list[str | None] = ["req-1"]
    got: dict[str, DomainEvent] = {}

    async def on_a(event: UtMemA) -> None:
        got["a"] = event
        request_id[0] = "req-other"  # a handler's child keeps the parent's conversation
        await bus.publish(UtMemB())

    async def on_b(event: UtMemB) -> None:
        got["b"] = event

    bus.add_middleware(CorrelationIdMiddleware(lambda: request_id[0]))
    bus.subscribe(UtMemA, on_a)
    bus.subscribe(UtMemB, on_b)
    root = UtMemA()
    await bus.publish(root)
    assert got["a"].event_id == root.event_id
    assert got["a"].correlation_id == "req-1"
    assert got["b"].correlation_id == "req-1"
    assert got["b"].causation_id == str(root.event_id)

    request_id[0] = None  # no request id: the event keeps its own
    lone = UtMemB()
    await bus.publish(lone)
    assert got["b"].correlation_id == str(lone.event_id)


async def test_logging_middleware(bus: InMemoryEventBus, caplog: pytest.LogCaptureFixture) -> None:
    bus.add_middleware(LoggingMiddleware())
    event = UtMemA()
    with caplog.at_level(logging.INFO, logger="hexbus.events"):
        await bus.publish(event)
    records = [r for r in caplog.records if r.name == "hexbus.events"]
    assert len(records) == 1
    assert str(event.event_id) in records[0].getMessage()
    assert records[0].event_id == str(event.event_id)  # type: ignore[attr-defined]
    assert records[0].event_type == "ut.mem.a"  # type: ignore[attr-defined]


async def test_logging_middleware_custom_logger_and_level(
    bus: InMemoryEventBus, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("ut.mem.audit")
    bus.add_middleware(LoggingMiddleware(logger, level=logging.DEBUG))
    with caplog.at_level(logging.INFO, logger="ut.mem.audit"):
        await bus.publish(UtMemA())  # DEBUG is below INFO: nothing logged
    assert [r for r in caplog.records if r.name == "ut.mem.audit"] == []
    with caplog.at_level(logging.DEBUG, logger="ut.mem.audit"):
        await bus.publish(UtMemA())
    assert len([r for r in caplog.records if r.name == "ut.mem.audit"]) == 1


async def test_filter_middleware_predicate(bus: InMemoryEventBus) -> None:
    got: list[int] = []

    async def h(event: UtMemA) -> None:
        got.append(event.n)

    bus.add_middleware(FilterMiddleware(lambda e: getattr(e, "n", 0) > 1))
    bus.subscribe(UtMemA, h)
    for n in range(4):
        await bus.publish(UtMemA(n=n))
    assert got == [2, 3]


async def test_filter_middleware_async_predicate(bus: InMemoryEventBus) -> None:
    got: list[int] = []

    async def keep_even(event: DomainEvent) -> bool:
        await asyncio.sleep(0)
        return getattr(event, "n", 0) % 2 == 0

    async def h(event: UtMemA) -> None:
        got.append(event.n)

    bus.add_middleware(FilterMiddleware(keep_even))
    bus.subscribe(UtMemA, h)
    for n in range(4):
        await bus.publish(UtMemA(n=n))
    assert got == [0, 2]


async def test_filter_middleware_exclude_types(bus: InMemoryEventBus) -> None:
    got: list[str] = []

    async def h(event: DomainEvent) -> None:
        got.append(event.event_type)

    bus.add_middleware(FilterMiddleware(exclude_types=["ut.mem.b"]))
    bus.subscribe("ut.mem.*", h)
    await bus.publish(UtMemA())
    await bus.publish(UtMemB())
    await bus.publish(UtMemA())
    assert got == ["ut.mem.a", "ut.mem.a"]
