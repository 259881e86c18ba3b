"""The two pipelines of the application layer, without any transport.

Admission (``hexbus.application.publishing``) and the consume pipeline's outcomes
(``hexbus.application.consuming``) are what every adapter shares; these tests pin their
rules down once, so the adapter tests only need to show each adapter uses them.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from hexbus import DomainEvent, InMemoryEventBus, current_context
from hexbus.application.consuming import (
    ACK,
    Action,
    ConsumePipeline,
    RetryPolicy,
    error_text,
)
from hexbus.application.dispatch import DispatchStats
from hexbus.application.handlers import SubscriptionTable
from hexbus.application.publishing import stamp_causation
from hexbus.domain.context import DeliveryContext, delivery_context
from hexbus.domain.errors import (
    DecodeError,
    InvalidMetadataError,
    NotADomainEventError,
    NotStartedError,
)


class PipeA(DomainEvent, event_type="pipeline.test.a"):
    n: int


class PipeB(DomainEvent, event_type="pipeline.test.b"):
    n: int


def make_pipeline(
    table: SubscriptionTable, *, attempts: int = 3, timeout: float | None = 5.0
) -> ConsumePipeline:
    return ConsumePipeline(
        table,
        policy=RetryPolicy(attempts, (0.5, 2.0)),
        handler_timeout=timeout,
        stats=DispatchStats(),
        adapter="test",
    )


# -- admission ------------------------------------------------------------------------
async def test_admit_returns_the_admitted_event_with_metadata_key_and_session() -> None:
    async with InMemoryEventBus() as bus:
        session = object()
        admitted = await bus.admission.admit(PipeA(n=1), {"ip": "1.2.3.4"}, "k", session)
    assert admitted is not None
    assert admitted.event.n == 1  # type: ignore[attr-defined]
    assert dict(admitted.metadata) == {"ip": "1.2.3.4"}
    assert (admitted.key, admitted.session) == ("k", session)


async def test_admit_order_state_type_metadata() -> None:
    bus = InMemoryEventBus()
    with pytest.raises(NotStartedError):
        await bus.admission.admit(cast(Any, 42), cast(Any, {"x": 1}))
    async with bus:
        with pytest.raises(NotADomainEventError):
            await bus.admission.admit(cast(Any, 42), cast(Any, {"x": 1}))
        with pytest.raises(InvalidMetadataError, match="str"):
            await bus.admission.admit(PipeA(n=1), cast(Any, {"x": 1}))


async def test_admit_applies_middleware_and_reports_a_drop_as_none() -> None:
    async with InMemoryEventBus() as bus:
        bus.add_middleware(lambda e: None if e.n == 0 else e.model_copy(update={"n": e.n * 10}))
        assert await bus.admission.admit(PipeA(n=0)) is None
        admitted = await bus.admission.admit(PipeA(n=2))
        assert admitted is not None and admitted.event.n == 20  # type: ignore[attr-defined]
        many = await bus.admission.admit_many([PipeA(n=0), PipeA(n=3)])
        assert [a.event.n for a in many] == [30]  # type: ignore[attr-defined]


async def test_admit_many_checks_every_event_before_any_middleware_runs() -> None:
    seen: list[DomainEvent] = []
    async with InMemoryEventBus() as bus:
        bus.add_middleware(lambda e: seen.append(e) or e)
        with pytest.raises(NotADomainEventError):
            await bus.admission.admit_many([PipeA(n=1), cast(Any, "junk")])
    assert seen == []


def test_stamp_causation_outside_a_handler_changes_nothing() -> None:
    event = PipeA(n=1)
    assert stamp_causation(event) is event


def test_stamp_causation_inside_a_handler_sets_cause_and_conversation() -> None:
    orphan = PipeB(n=2)  # built outside: its own conversation
    parent = PipeA(n=1, correlation_id="conv-1")
    token = delivery_context.set(DeliveryContext(parent))
    try:
        stamped = stamp_causation(orphan)
        chosen = PipeB(n=3, correlation_id="on-purpose")
        kept = stamp_causation(chosen.model_copy(update={"causation_id": None}))
        same = stamp_causation(parent)
    finally:
        delivery_context.reset(token)
    assert stamped.causation_id == str(parent.event_id)
    assert stamped.correlation_id == "conv-1"
    assert stamped.event_id == orphan.event_id
    assert kept.correlation_id == "on-purpose"  # set on purpose: not replaced
    assert same is parent  # the handled event itself is never its own cause


# -- the consume pipeline ---------------------------------------------------------------
def test_retry_policy_delays_and_exhaustion() -> None:
    policy = RetryPolicy(4, (1.0, 5.0))
    assert [policy.delay_after(n) for n in (1, 2, 3)] == [1.0, 5.0, 5.0]
    assert not policy.exhausted(3)
    assert policy.exhausted(4)


def test_error_text_is_bounded_and_names_the_type() -> None:
    assert error_text(ValueError("bad")) == "ValueError: bad"
    assert error_text(KeyError()) == "KeyError"
    assert len(error_text(RuntimeError("x" * 5000))) == 2000


async def test_deliver_acks_and_sets_the_context() -> None:
    table = SubscriptionTable()
    seen: list[DeliveryContext] = []

    async def handler(event: PipeA) -> None:
        seen.append(current_context())

    table.add(PipeA, handler, "sub")
    pipeline = make_pipeline(table)
    event = PipeA(n=1)
    outcome = await pipeline.deliver("sub", (event, {"m": "v"}), attempt=2, key="k")
    assert outcome is ACK
    assert pipeline.stats.handled == 1
    (ctx,) = seen
    assert (ctx.event, dict(ctx.metadata), ctx.attempt, ctx.key, ctx.subscription) == (
        event, {"m": "v"}, 2, "k", "sub",
    )
    assert current_context().event is None  # reset afterwards


async def test_deliver_retries_then_dead_letters_a_failing_handler() -> None:
    table = SubscriptionTable()

    async def broken(event: PipeA) -> None:
        raise ValueError("nope")

    table.add(PipeA, broken, "sub")
    pipeline = make_pipeline(table, attempts=3)
    event = PipeA(n=1)
    first = await pipeline.deliver("sub", (event, {}), attempt=1)
    second = await pipeline.deliver("sub", (event, {}), attempt=2)
    last = await pipeline.deliver("sub", (event, {}), attempt=3)
    assert (first.action, first.delay, first.attempt) == (Action.RETRY, 0.5, 1)
    assert (second.action, second.delay) == (Action.RETRY, 2.0)
    assert last.action is Action.DEAD_LETTER
    assert (last.reason, last.error, last.subscription, last.attempt) == (
        "handler_failed", "ValueError: nope", "sub", 3,
    )
    assert pipeline.stats.failed == 3
    pipeline.settled(first)
    pipeline.settled(last)
    assert (pipeline.stats.retried, pipeline.stats.dead_lettered) == (1, 1)


async def test_deliver_reports_a_timeout_as_such() -> None:
    table = SubscriptionTable()

    async def slow(event: PipeA) -> None:
        await asyncio.sleep(10)

    table.add(PipeA, slow, "sub")
    pipeline = make_pipeline(table, attempts=1, timeout=0.01)
    outcome = await pipeline.deliver("sub", (PipeA(n=1), {}))
    assert (outcome.action, outcome.reason) == (Action.DEAD_LETTER, "timeout")
    assert pipeline.stats.timed_out == 1


async def test_deliver_dead_letters_undecodable_and_unhandled_messages() -> None:
    table = SubscriptionTable()

    async def only_a(event: PipeA) -> None:
        pass

    table.add(PipeA, only_a, "sub")
    pipeline = make_pipeline(table)
    bad = DecodeError("not a CloudEvent", raw=b"junk")
    bad.reason = "malformed"
    undecodable = await pipeline.deliver("sub", bad, where="queue q")
    assert (undecodable.action, undecodable.reason) == (Action.DEAD_LETTER, "malformed")
    assert undecodable.error is not None and "not a CloudEvent" in undecodable.error
    unhandled = await pipeline.deliver("sub", (PipeB(n=1), {}))
    assert (unhandled.action, unhandled.reason) == (Action.DEAD_LETTER, "no_handler")
    other = await pipeline.deliver("another-sub", (PipeA(n=1), {}))
    assert other.reason == "no_handler"


async def test_cancellation_is_not_an_outcome() -> None:
    table = SubscriptionTable()
    started = asyncio.Event()

    async def hangs(event: PipeA) -> None:
        started.set()
        await asyncio.sleep(10)

    table.add(PipeA, hangs, "sub")
    pipeline = make_pipeline(table)
    task = asyncio.create_task(pipeline.deliver("sub", (PipeA(n=1), {})))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (pipeline.stats.failed, pipeline.stats.handled) == (0, 0)


def test_subscription_table_answers_by_name_class_and_wire_name() -> None:
    table = SubscriptionTable()

    async def h1(event: PipeA) -> None: ...

    async def h2(event: DomainEvent) -> None: ...

    table.add(PipeA, h1, "one")
    table.add("pipeline.test.*", h2, "two")
    assert [s.handler for s in table.for_delivery("one", PipeA)] == [h1]
    assert table.for_delivery("one", PipeB) == ()
    assert [s.handler for s in table.for_delivery("two", PipeB)] == [h2]
    assert table.accepts("one", "pipeline.test.a")
    assert not table.accepts("one", "pipeline.test.b")
    assert table.accepts("two", "pipeline.test.anything")
    assert not table.accepts("two", "other.thing")
    assert table.names() == ["one", "two"]
    table.remove(PipeA, h1)
    assert table.for_delivery("one", PipeA) == ()  # caches follow changes
    assert not table.accepts("one", "pipeline.test.a")


def test_causation_names_a_foreign_cause_by_its_wire_id() -> None:
    """A child of a foreign event (CloudEvents id ``order-42``) points at ``order-42``,
    built inside the handler or stamped at publish time."""
    parent = PipeA(n=1)
    token = delivery_context.set(DeliveryContext(parent, cloudevent_id="order-42"))
    try:
        built_inside = PipeB(n=2)
        stamped = stamp_causation(PipeB(n=3).model_copy(update={"causation_id": None}))
    finally:
        delivery_context.reset(token)
    assert built_inside.causation_id == "order-42"
    assert stamped.causation_id == "order-42"
