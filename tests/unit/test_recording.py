"""RecordingEventBus and the plugin fixtures, used the way an application's tests would.

Why these checks: the recording bus is what application tests trust instead of a broker,
so it must be as strict as a real bus (type, metadata and lifecycle checks) and its
assertion messages must make a failing test obvious without a debugger.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hexbus import (
    BusClosedError,
    DomainEvent,
    EventBus,
    InMemoryEventBus,
    InvalidHandlerError,
    InvalidMetadataError,
    NotADomainEventError,
    NotStartedError,
    current_context,
)
from hexbus.testing import PublishedRecord, RecordingEventBus


class RecUserCreated(DomainEvent, event_type="recording_test.user.created"):
    user_id: UUID
    email: str


class RecWelcomeSent(DomainEvent, event_type="recording_test.welcome.sent"):
    user_id: UUID


class RecItemDeleted(DomainEvent, event_type="recording_test.item.deleted"):
    sku: str


class RegisterUser:
    """A use case as an application would write it: it only knows the port."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def __call__(self, email: str, *, ip: str) -> UUID:
        user_id = uuid4()
        await self.bus.publish(
            RecUserCreated(user_id=user_id, email=email),
            metadata={"ip_address": ip},
            key=str(user_id),
        )
        return user_id


# -- recording ---------------------------------------------------------------------------


async def test_records_publishes_with_metadata_key_and_session() -> None:
    bus = RecordingEventBus()
    session = object()
    event = RecUserCreated(user_id=uuid4(), email="a@example.com")
    await bus.publish(event, metadata={"trace_id": "t1"}, key="k1", session=session)
    assert bus.published == [event]
    assert bus.records == [PublishedRecord(event, {"trace_id": "t1"}, "k1", session)]
    assert bus.records_of(RecUserCreated)[0].metadata == {"trace_id": "t1"}


async def test_published_of_filters_by_exact_class_or_pattern() -> None:
    bus = RecordingEventBus()
    user = RecUserCreated(user_id=uuid4(), email="a@example.com")
    welcome = RecWelcomeSent(user_id=user.user_id)
    item = RecItemDeleted(sku="X1")
    await bus.publish_many([user, welcome, item])
    assert bus.published_of(RecUserCreated) == [user]
    assert bus.published_of("recording_test.*.sent") == [welcome]
    assert bus.published_of("recording_test.#") == [user, welcome, item]
    assert bus.published_of(RecItemDeleted)[0].sku == "X1"  # typed: list[RecItemDeleted]


async def test_assert_published_returns_the_matching_event() -> None:
    bus = RecordingEventBus()
    user_id = await RegisterUser(bus)("a@example.com", ip="10.0.0.1")
    event = bus.assert_published(RecUserCreated, user_id=user_id, email="a@example.com")
    assert event.user_id == user_id
    assert bus.records[0].metadata == {"ip_address": "10.0.0.1"}
    assert bus.records[0].key == str(user_id)


async def test_assert_published_failure_lists_what_was_published() -> None:
    bus = RecordingEventBus()
    await bus.publish(RecUserCreated(user_id=uuid4(), email="b@example.com"))
    await bus.publish(RecItemDeleted(sku="X1"))
    with pytest.raises(AssertionError) as info:
        bus.assert_published(RecUserCreated, email="a@example.com")
    message = str(info.value)
    assert "expected RecUserCreated(email='a@example.com') to be published" in message
    assert "email='b@example.com' (expected 'a@example.com')" in message
    assert "published (2):" in message
    assert "RecItemDeleted(sku='X1')" in message


def test_assert_published_when_nothing_was_published() -> None:
    bus = RecordingEventBus()
    with pytest.raises(AssertionError, match="nothing was published"):
        bus.assert_published(RecWelcomeSent)


def test_assert_published_rejects_unknown_field_names() -> None:
    bus = RecordingEventBus()
    with pytest.raises(AssertionError, match="has no field"):
        bus.assert_published(RecUserCreated, mail="typo@example.com")


async def test_assert_not_published() -> None:
    bus = RecordingEventBus()
    await bus.publish(RecItemDeleted(sku="X1"))
    bus.assert_not_published(RecWelcomeSent)
    bus.assert_not_published(RecItemDeleted, sku="X2")
    with pytest.raises(AssertionError, match="expected no RecItemDeleted"):
        bus.assert_not_published(RecItemDeleted, sku="X1")


async def test_clear_published_keeps_subscriptions_clear_removes_both() -> None:
    bus = RecordingEventBus()

    async def handler(event: RecItemDeleted) -> None: ...

    bus.subscribe(RecItemDeleted, handler)
    await bus.publish(RecItemDeleted(sku="X1"))
    bus.clear_published()
    assert bus.published == [] and len(bus.subscriptions) == 1
    await bus.publish(RecItemDeleted(sku="X2"))
    bus.clear()
    assert bus.published == [] and len(bus.subscriptions) == 0


@given(st.lists(st.sampled_from(["user", "item"]), max_size=30))
def test_records_keep_publish_order(kinds: list[str]) -> None:
    async def scenario() -> list[DomainEvent]:
        bus = RecordingEventBus()
        events: list[DomainEvent] = [
            RecUserCreated(user_id=uuid4(), email="x@example.com")
            if kind == "user"
            else RecItemDeleted(sku=str(i))
            for i, kind in enumerate(kinds)
        ]
        for event in events:
            await bus.publish(event)
        assert bus.published_of(RecItemDeleted) == [
            e for e in events if isinstance(e, RecItemDeleted)
        ]
        return events

    events = asyncio.run(scenario())
    assert len(events) == len(kinds)


# -- as strict as a real bus -----------------------------------------------------------


async def test_is_an_event_bus() -> None:
    assert isinstance(RecordingEventBus(), EventBus)


async def test_rejects_non_events_and_bad_metadata() -> None:
    bus = RecordingEventBus()
    with pytest.raises(NotADomainEventError):
        await bus.publish(cast(Any, {"email": "a@example.com"}))
    with pytest.raises(InvalidMetadataError):
        await bus.publish(RecItemDeleted(sku="X"), metadata=cast(Any, {"attempt": 1}))
    assert bus.published == []


async def test_wiring_check_applies_without_dispatch() -> None:
    bus = RecordingEventBus()

    async def wrong(event: RecWelcomeSent) -> None: ...

    with pytest.raises(InvalidHandlerError):
        bus.subscribe(RecUserCreated, wrong)


async def test_autostart_lifecycle() -> None:
    bus = RecordingEventBus()
    await bus.start()  # a no-op on a running bus
    await bus.publish(RecItemDeleted(sku="X"))
    await bus.stop()
    with pytest.raises(BusClosedError):
        await bus.publish(RecItemDeleted(sku="Y"))
    assert len(bus.published) == 1  # still inspectable after stop


async def test_without_autostart_it_needs_start_like_a_real_bus() -> None:
    bus = RecordingEventBus(autostart=False)
    with pytest.raises(NotStartedError):
        await bus.publish(RecItemDeleted(sku="X"))
    async with bus:
        await bus.publish(RecItemDeleted(sku="X"))
    assert len(bus.published) == 1


async def test_middleware_runs_before_recording() -> None:
    bus = RecordingEventBus()

    def drop_x(event: DomainEvent) -> DomainEvent | None:
        return None if isinstance(event, RecItemDeleted) and event.sku == "X" else event

    bus.add_middleware(drop_x)
    await bus.publish(RecItemDeleted(sku="X"))
    await bus.publish(RecItemDeleted(sku="Y"))
    assert [e.sku for e in bus.published_of(RecItemDeleted)] == ["Y"]


# -- dispatching -------------------------------------------------------------------------


async def test_without_dispatch_handlers_do_not_run() -> None:
    bus = RecordingEventBus()
    calls: list[DomainEvent] = []

    async def handler(event: RecItemDeleted) -> None:
        calls.append(event)

    bus.subscribe(RecItemDeleted, handler)
    await bus.publish(RecItemDeleted(sku="X"))
    assert calls == []


async def test_dispatch_runs_handlers_and_records_their_events() -> None:
    bus = RecordingEventBus(dispatch=True)
    metadata_seen: list[dict[str, str]] = []

    async def send_welcome(event: RecUserCreated) -> None:
        metadata_seen.append(dict(current_context().metadata))
        await bus.publish(RecWelcomeSent(user_id=event.user_id))

    bus.subscribe(RecUserCreated, send_welcome)
    user_id = await RegisterUser(bus)("a@example.com", ip="10.0.0.2")
    created = bus.assert_published(RecUserCreated, user_id=user_id)
    welcome = bus.assert_published(RecWelcomeSent, user_id=user_id)
    assert welcome.causation_id == str(created.event_id)
    assert welcome.correlation_id == created.correlation_id
    assert metadata_seen == [{"ip_address": "10.0.0.2"}]

    bus.unsubscribe(RecUserCreated, send_welcome)
    await RegisterUser(bus)("b@example.com", ip="10.0.0.3")
    assert len(bus.published_of(RecWelcomeSent)) == 1
    await bus.stop()
    assert bus.inner is not None and bus.inner.state.value == "closed"


async def test_dispatch_is_fail_open() -> None:
    bus = RecordingEventBus(dispatch=True)

    async def broken(event: RecItemDeleted) -> None:
        raise RuntimeError("boom")

    bus.subscribe(RecItemDeleted, broken)
    await bus.publish(RecItemDeleted(sku="X"))  # does not raise
    assert bus.inner is not None and bus.inner.stats.failed == 1


# -- the plugin's fixtures, as a user gets them ------------------------------------------


async def test_recording_bus_fixture(recording_bus: RecordingEventBus) -> None:
    user_id = await RegisterUser(recording_bus)("fixture@example.com", ip="10.0.0.4")
    recording_bus.assert_published(RecUserCreated, user_id=user_id)


def test_recording_bus_fixture_is_fresh_per_test(recording_bus: RecordingEventBus) -> None:
    assert recording_bus.published == []
    assert recording_bus.dispatch is False


async def test_event_bus_fixture_is_a_started_memory_bus(event_bus: InMemoryEventBus) -> None:
    seen: list[DomainEvent] = []

    async def on_created(event: RecUserCreated) -> None:
        seen.append(event)

    event_bus.subscribe(RecUserCreated, on_created)
    user_id = await RegisterUser(event_bus)("mem@example.com", ip="10.0.0.5")
    assert [cast(RecUserCreated, e).user_id for e in seen] == [user_id]  # await mode


def test_plugin_registers_broker_fixtures(pytestconfig: pytest.Config) -> None:
    manager = pytestconfig.pluginmanager
    assert manager.has_plugin("hexbus")
    assert manager.has_plugin("hexbus.testing.brokers")


def test_unique_name_fixture_from_the_plugin(unique_name: str) -> None:
    assert unique_name.startswith("t-")
