"""Dispatch on the in-memory bus: concurrency, isolation, fail-open, timeouts, context.

Why these checks: handlers are started eagerly (their first step runs inside
``publish``) for speed, which is exactly where isolation can break: a contextvar set by
one handler leaking into the publisher, an ``asyncio.timeout()`` at the top of a
handler cancelling the publisher, overlapping publishes seeing each other's metadata.
Every test here would hang or fail if one of those went wrong; all are bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hexbus import DomainEvent, InMemoryEventBus, current_context
from hexbus.application.dispatch import Dispatcher
from hexbus.application.handlers import Subscription
from hexbus.domain.context import DeliveryContext

# Each test runs with the compiled eager start and with the Python one (conftest.py).
pytestmark = pytest.mark.usefixtures("dispatcher_kind")

BOUND = 5.0  # seconds: generous upper bound for anything that should be immediate


class UtDispA(DomainEvent, event_type="ut.disp.a"):
    n: int = 0


class UtDispB(DomainEvent, event_type="ut.disp.b"):
    n: int = 0


class UtDispC(DomainEvent, event_type="ut.disp.c"):
    n: int = 0


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus() as b:
        yield b


async def test_handlers_of_one_publish_run_concurrently(bus: InMemoryEventBus) -> None:
    first, second = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def h1(event: UtDispA) -> None:
        first.set()
        await second.wait()
        finished.append("h1")

    async def h2(event: UtDispA) -> None:
        second.set()
        await first.wait()
        await asyncio.sleep(0)
        finished.append("h2")

    bus.subscribe(UtDispA, h1)
    bus.subscribe(UtDispA, h2)
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())
    assert sorted(finished) == ["h1", "h2"]
    assert bus.stats.handled == 2
    assert bus.stats.failed == 0


async def test_publish_waits_for_every_handler(bus: InMemoryEventBus) -> None:
    done: list[int] = []

    async def slow(event: UtDispA) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        done.append(event.n)

    bus.subscribe(UtDispA, slow)
    await bus.publish(UtDispA(n=7))
    assert done == [7]


@pytest.mark.parametrize("suspend_first", [False, True], ids=["eager", "after-await"])
async def test_failing_handler_is_isolated_logged_and_counted(
    bus: InMemoryEventBus, caplog: pytest.LogCaptureFixture, suspend_first: bool
) -> None:
    ran: list[str] = []

    async def boom(event: UtDispA) -> None:
        if suspend_first:
            await asyncio.sleep(0)
        raise ValueError("ut boom")

    async def fine(event: UtDispA) -> None:
        await asyncio.sleep(0)
        ran.append("fine")

    bus.subscribe(UtDispA, boom, name="ut.disp.boom")
    bus.subscribe(UtDispA, fine)
    event = UtDispA()
    with caplog.at_level(logging.ERROR, logger="hexbus.dispatch"):
        async with asyncio.timeout(BOUND):
            await bus.publish(event)  # must not raise
    assert ran == ["fine"]
    assert bus.stats.failed == 1
    assert bus.stats.handled == 1
    assert bus.stats.published == 1
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1
    message = records[0].getMessage()
    assert str(event.event_id) in message
    assert "ut.disp.boom" in message
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)


async def test_hanging_handler_is_cut_by_handler_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    cancelled = asyncio.Event()

    async def hang(event: UtDispA) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fine(event: UtDispA) -> None:
        await asyncio.sleep(0.01)
        ran.append("fine")

    async with InMemoryEventBus(handler_timeout=0.05) as bus:
        bus.subscribe(UtDispA, hang, name="ut.disp.hang")
        bus.subscribe(UtDispA, fine)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with caplog.at_level(logging.ERROR, logger="hexbus.dispatch"):
            async with asyncio.timeout(BOUND):
                await bus.publish(UtDispA())
        elapsed = loop.time() - started
        assert ran == ["fine"]
        assert cancelled.is_set()
        assert bus.stats.timed_out == 1
        assert bus.stats.failed == 1
        assert bus.stats.handled == 1
        assert 0.04 <= elapsed < 2.0
    assert any("ut.disp.hang" in r.getMessage() for r in caplog.records)


async def test_sync_handler_runs_in_a_worker_thread_with_context(bus: InMemoryEventBus) -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}

    def blocking(event: UtDispA) -> None:
        seen["thread"] = threading.get_ident()
        ctx = current_context()
        seen["event"] = ctx.event
        seen["metadata"] = dict(ctx.metadata)

    bus.subscribe(UtDispA, blocking)
    event = UtDispA()
    async with asyncio.timeout(BOUND):
        await bus.publish(event, metadata={"ip_address": "10.0.0.1"})
    assert seen["thread"] != loop_thread
    assert seen["event"] is event
    assert seen["metadata"] == {"ip_address": "10.0.0.1"}
    assert bus.stats.handled == 1


async def test_sync_handler_failure_is_fail_open(bus: InMemoryEventBus) -> None:
    def broken(event: UtDispA) -> None:
        raise RuntimeError("ut sync boom")

    bus.subscribe(UtDispA, broken)
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())
    assert bus.stats.failed == 1


ut_var: contextvars.ContextVar[str] = contextvars.ContextVar("ut_var", default="unset")


@pytest.mark.parametrize("suspend_first", [False, True], ids=["eager", "after-await"])
async def test_contextvars_do_not_leak(bus: InMemoryEventBus, suspend_first: bool) -> None:
    seen_by_second: list[str] = []

    async def setter(event: UtDispA) -> None:
        if suspend_first:
            await asyncio.sleep(0)
        ut_var.set("from-handler")
        await asyncio.sleep(0)

    async def reader(event: UtDispA) -> None:
        seen_by_second.append(ut_var.get())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen_by_second.append(ut_var.get())

    bus.subscribe(UtDispA, setter)
    bus.subscribe(UtDispA, reader)
    token = ut_var.set("publisher")
    try:
        await bus.publish(UtDispA())
        assert ut_var.get() == "publisher"
        assert seen_by_second == ["publisher", "publisher"]
    finally:
        ut_var.reset(token)


async def test_contextvar_set_by_finishing_handler_does_not_leak(bus: InMemoryEventBus) -> None:
    async def setter(event: UtDispA) -> None:
        ut_var.set("leaked")  # finishes without ever suspending

    bus.subscribe(UtDispA, setter)
    await bus.publish(UtDispA())
    assert ut_var.get() == "unset"
    assert current_context().event is None


async def test_timeout_at_top_of_handler_times_out_the_handler_not_the_publisher(
    bus: InMemoryEventBus,
) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    other_done = asyncio.Event()

    async def guarded(event: UtDispA) -> None:
        try:
            async with asyncio.timeout(0.05):  # before the handler's first await
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.set_result("TimeoutError")
            return
        outcome.set_result("no timeout")

    async def other(event: UtDispA) -> None:
        await asyncio.sleep(0.1)
        other_done.set()

    bus.subscribe(UtDispA, guarded)
    bus.subscribe(UtDispA, other)
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())  # completes normally
    assert outcome.result() == "TimeoutError"
    assert other_done.is_set()
    assert bus.stats.failed == 0
    assert bus.stats.handled == 2
    # the publisher's task carries no stray cancellation
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.01)  # and nothing is delivered to it later


async def test_timeout_at_top_of_handler_that_raises_counts_as_failure(
    bus: InMemoryEventBus,
) -> None:
    async def guarded(event: UtDispA) -> None:
        async with asyncio.timeout(0.05):
            await asyncio.Event().wait()

    bus.subscribe(UtDispA, guarded)
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())
    assert bus.stats.failed == 1


async def test_current_task_in_handler_is_not_the_publishers(bus: InMemoryEventBus) -> None:
    publisher = asyncio.current_task()
    seen: list[Any] = []

    async def h(event: UtDispA) -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    bus.subscribe(UtDispA, h)
    await bus.publish(UtDispA())
    assert len(seen) == 2
    assert seen[0] is not publisher
    assert seen[1] is not publisher
    assert isinstance(seen[1], asyncio.Task)
    assert seen[1].done()


async def test_task_group_at_top_of_handler(bus: InMemoryEventBus) -> None:
    results: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

    async def child(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    async def h(event: UtDispA) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child(i)) for i in range(3)]
        results.set_result([t.result() for t in tasks])

    bus.subscribe(UtDispA, h)
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())
    assert results.result() == [0, 2, 4]
    assert bus.stats.failed == 0


async def test_task_group_child_failure_stays_inside_the_handler(bus: InMemoryEventBus) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def bad() -> None:
        await asyncio.sleep(0)
        raise KeyError("ut child")

    async def slow() -> None:
        await asyncio.Event().wait()  # cancelled by the group when bad() fails

    async def h(event: UtDispA) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(bad())
                tg.create_task(slow())
        except* KeyError:
            outcome.set_result("KeyError group")

    bus.subscribe(UtDispA, h)
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())
    assert outcome.result() == "KeyError group"
    assert bus.stats.failed == 0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_overlapping_publishes_each_see_their_own_context(bus: InMemoryEventBus) -> None:
    started = {"a": asyncio.Event(), "b": asyncio.Event()}
    seen: dict[str, list[Any]] = {"a": [], "b": []}

    async def h(event: UtDispA) -> None:
        ctx = current_context()
        me = ctx.metadata["request"]
        other = "b" if me == "a" else "a"
        seen[me].append((ctx.metadata["request"], ctx.event))
        started[me].set()
        await started[other].wait()  # both handlers are now in flight at once
        await asyncio.sleep(0)
        ctx = current_context()
        seen[me].append((ctx.metadata["request"], ctx.event))

    bus.subscribe(UtDispA, h)
    event_a, event_b = UtDispA(n=1), UtDispA(n=2)
    async with asyncio.timeout(BOUND):
        await asyncio.gather(
            bus.publish(event_a, metadata={"request": "a"}),
            bus.publish(event_b, metadata={"request": "b"}),
        )
    assert seen["a"] == [("a", event_a), ("a", event_a)]
    assert seen["b"] == [("b", event_b), ("b", event_b)]


async def test_current_context_inside_a_handler(bus: InMemoryEventBus) -> None:
    session = object()
    seen: list[Any] = []

    async def h(event: UtDispA) -> None:
        seen.append(current_context())
        await asyncio.sleep(0)
        seen.append(current_context())

    bus.subscribe(UtDispA, h)
    event = UtDispA()
    await bus.publish(event, metadata={"user_agent": "ut/1.0"}, key="agg-1", session=session)
    assert len(seen) == 2
    for ctx in seen:
        assert ctx.event is event
        assert dict(ctx.metadata) == {"user_agent": "ut/1.0"}
        assert ctx.attempt == 1
        assert ctx.session is session
        assert ctx.key == "agg-1"
    assert current_context().event is None


async def test_context_metadata_is_read_only_and_a_copy(bus: InMemoryEventBus) -> None:
    seen: list[Any] = []

    async def h(event: UtDispA) -> None:
        seen.append(current_context().metadata)

    bus.subscribe(UtDispA, h)
    metadata = {"trace_id": "t1"}
    await bus.publish(UtDispA(), metadata=metadata)
    metadata["trace_id"] = "changed"
    assert dict(seen[0]) == {"trace_id": "t1"}
    with pytest.raises(TypeError):
        seen[0]["trace_id"] = "x"


async def test_default_key_is_the_event_id(bus: InMemoryEventBus) -> None:
    keys: list[Any] = []

    async def h(event: UtDispA) -> None:
        keys.append(current_context().key)

    bus.subscribe(UtDispA, h)
    event = UtDispA()
    await bus.publish(event)
    assert keys == [str(event.event_id)]


def test_current_context_outside_handlers_is_empty() -> None:
    ctx = current_context()
    assert ctx.event is None
    assert dict(ctx.metadata) == {}
    assert ctx.session is None


async def test_causation_and_correlation_through_two_levels(bus: InMemoryEventBus) -> None:
    got: dict[str, DomainEvent] = {}

    async def on_a(event: UtDispA) -> None:
        got["a"] = event
        b = UtDispB()
        got["b_built"] = b
        await bus.publish(b)

    async def on_b(event: UtDispB) -> None:
        await asyncio.sleep(0)  # the second level publishes after suspending
        got["b"] = event
        c = UtDispC()
        await bus.publish(c)

    async def on_c(event: UtDispC) -> None:
        got["c"] = event

    bus.subscribe(UtDispA, on_a)
    bus.subscribe(UtDispB, on_b)
    bus.subscribe(UtDispC, on_c)
    root = UtDispA()
    async with asyncio.timeout(BOUND):
        await bus.publish(root)
    assert root.causation_id is None
    assert root.correlation_id == str(root.event_id)
    b, c = got["b"], got["c"]
    assert got["b_built"] is b
    assert b.causation_id == str(root.event_id)
    assert b.correlation_id == root.correlation_id
    assert c.causation_id == str(b.event_id)
    assert c.correlation_id == root.correlation_id
    # and back outside, a new event starts its own conversation
    fresh = UtDispA()
    assert fresh.causation_id is None
    assert fresh.correlation_id == str(fresh.event_id)


async def test_timeout_at_top_of_handler_of_a_nested_publish() -> None:
    async with InMemoryEventBus(handler_timeout=1.0) as bus:
        outer_outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        inner_outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def warm_up(event: UtDispC) -> None:
            pass

        async def outer(event: UtDispA) -> None:
            try:
                await bus.publish(UtDispB())  # nested publish from inside a handler
            except BaseException as exc:
                outer_outcome.set_result(type(exc).__name__)
                raise
            outer_outcome.set_result("ok")

        async def inner(event: UtDispB) -> None:
            try:
                async with asyncio.timeout(0.05):  # eager part of the nested handler
                    await asyncio.Event().wait()
            except TimeoutError:
                inner_outcome.set_result("TimeoutError")
                return
            inner_outcome.set_result("no timeout")

        bus.subscribe(UtDispC, warm_up)
        bus.subscribe(UtDispA, outer)
        bus.subscribe(UtDispB, inner)
        await bus.publish(UtDispC())  # a previous publish leaves a stand-in to reuse
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(BOUND):
            await bus.publish(UtDispA())
        elapsed = loop.time() - started
        assert outer_outcome.done()
        assert outer_outcome.result() == "ok"
        assert inner_outcome.result() == "TimeoutError"
        assert elapsed < 0.5  # the inner timeout (0.05s), not the handler timeout (1s)
        assert bus.stats.failed == 0


# -- the runner (one coroutine awaits handlers in turn until one suspends or changes the
# context): these check what sharing a runner between handlers must never change.


async def test_contextvar_set_by_a_finishing_handler_is_not_seen_by_the_next(
    bus: InMemoryEventBus,
) -> None:
    seen: list[str] = []

    async def setter(event: UtDispA) -> None:
        ut_var.set("from-setter")  # finishes without suspending, like the reader

    async def reader(event: UtDispA) -> None:
        seen.append(ut_var.get())
        ut_var.set("from-reader")

    async def last(event: UtDispA) -> None:
        seen.append(ut_var.get())
        seen.append(str(current_context().event is event))

    for handler in (setter, reader, last):
        bus.subscribe(UtDispA, handler)
    await bus.publish(UtDispA())
    await bus.publish(UtDispA())
    assert seen == ["unset", "unset", "True"] * 2
    assert bus.stats.handled == 6


async def test_every_handler_runs_once_whatever_suspends_or_fails(bus: InMemoryEventBus) -> None:
    calls: list[int] = []

    def make(i: int) -> Any:
        async def handler(event: UtDispA) -> None:
            calls.append(i)
            if i % 3 == 0:
                await asyncio.sleep(0)
            if i % 4 == 1:
                raise RuntimeError(f"handler {i}")
            if i % 5 == 2:
                ut_var.set(f"h{i}")

        return handler

    for i in range(12):
        bus.subscribe(UtDispA, make(i), name=f"h{i}")
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())
    assert sorted(calls) == list(range(12))
    failing = [i for i in range(12) if i % 4 == 1]
    assert bus.stats.failed == len(failing)
    assert bus.stats.handled == 12 - len(failing)


async def test_a_handler_cancelling_itself_eagerly_does_not_cancel_the_next(
    bus: InMemoryEventBus,
) -> None:
    outcome: list[str] = []

    async def self_cancel(event: UtDispA) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # finishes without suspending: the cancel reaches nobody

    async def sleeper(event: UtDispA) -> None:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("slept")

    bus.subscribe(UtDispA, self_cancel)
    bus.subscribe(UtDispA, sleeper)
    async with asyncio.timeout(BOUND):
        await bus.publish(UtDispA())
    assert outcome == ["slept"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_suspended_handler_that_times_out_is_counted_once() -> None:
    async with InMemoryEventBus(handler_timeout=0.05) as bus:
        done: list[str] = []

        async def hang(event: UtDispA) -> None:
            await asyncio.Event().wait()

        async def quick(event: UtDispA) -> None:
            done.append("quick")

        bus.subscribe(UtDispA, hang)
        bus.subscribe(UtDispA, quick)
        async with asyncio.timeout(BOUND):
            await bus.publish(UtDispA())
        assert done == ["quick"]
        assert (bus.stats.handled, bus.stats.failed, bus.stats.timed_out) == (1, 1, 1)


def test_one_dispatcher_serves_successive_event_loops() -> None:
    """The dispatcher caches its loop; a later ``asyncio.run`` must not reuse a stale
    one (the current-task stand-in would be registered under the wrong loop)."""
    seen: list[bool] = []

    async def handler(event: UtDispA) -> None:
        async with asyncio.timeout(BOUND):  # reads asyncio.current_task() eagerly
            await asyncio.sleep(0)
        seen.append(True)

    dispatcher = Dispatcher(handler_timeout=BOUND)
    subs = (Subscription(UtDispA, handler, "h", True),)

    async def publish_once() -> None:
        event = UtDispA()
        pending = dispatcher.start(event, subs, DeliveryContext(event=event))
        assert pending is not None
        await asyncio.wait(pending)

    asyncio.run(publish_once())
    asyncio.run(publish_once())
    assert seen == [True, True]
    assert dispatcher.stats.failed == 0
