"""Subscriptions: exact types, patterns, handler objects, routers, durable names, wiring.

Why these checks: who receives what is the bus's whole job, and the wiring check is the
promise that a mis-typed handler fails when the service starts, not on the first event
in production.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Optional, Union

import pytest
from pydantic import BaseModel

from hexbus import (
    DomainEvent,
    EventHandler,
    EventRouter,
    InMemoryEventBus,
    default_router,
    on_event,
)
from hexbus.domain.errors import InvalidHandlerError, InvalidPatternError


class UtSubParent(DomainEvent, event_type="ut.sub.parent"):
    n: int = 0


class UtSubChild(UtSubParent, event_type="ut.sub.child"):
    pass


class UtSubOther(DomainEvent, event_type="ut.sub.other"):
    pass


class UtSubBase(DomainEvent, event_type="ut.sub.base", abstract=True):
    pass


class UtWireA(UtSubBase, event_type="ut.wire.a"):
    pass


class UtWireB(UtSubBase, event_type="ut.wire.b"):
    pass


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus() as b:
        yield b


def names(bus: InMemoryEventBus) -> list[str]:
    return [sub.name for sub in bus.subscriptions]


# -- module-level handlers (their durable names are checked) ---------------------------
parent_seen: list[DomainEvent] = []


async def on_parent(event: UtSubParent) -> None:
    parent_seen.append(event)


async def module_level_handler(event: UtSubOther) -> None:
    pass


# -- exact type and patterns -------------------------------------------------------------
async def test_exact_type_does_not_deliver_subclasses(bus: InMemoryEventBus) -> None:
    parent_seen.clear()
    child_seen: list[DomainEvent] = []

    async def on_child(event: UtSubChild) -> None:
        child_seen.append(event)

    bus.subscribe(UtSubParent, on_parent)
    bus.subscribe(UtSubChild, on_child)
    child = UtSubChild(n=1)
    parent = UtSubParent(n=2)
    await bus.publish(child)
    await bus.publish(parent)
    assert parent_seen == [parent]
    assert child_seen == [child]


async def test_pattern_subscription(bus: InMemoryEventBus) -> None:
    seen: list[str] = []

    async def on_sub(event: DomainEvent) -> None:
        seen.append(event.event_type)

    bus.subscribe("ut.sub.*", on_sub)
    await bus.publish(UtSubParent())
    await bus.publish(UtSubChild())
    await bus.publish(UtWireA())  # ut.wire.a does not match ut.sub.*
    await bus.publish(UtSubOther())
    assert seen == ["ut.sub.parent", "ut.sub.child", "ut.sub.other"]


async def test_exact_wire_name_string_subscribes_like_the_class(bus: InMemoryEventBus) -> None:
    seen: list[DomainEvent] = []

    async def h(event: UtSubOther) -> None:
        seen.append(event)

    bus.subscribe("ut.sub.other", h)
    event = UtSubOther()
    await bus.publish(event)
    await bus.publish(UtSubParent())
    assert seen == [event]


async def test_double_subscribe_is_idempotent(bus: InMemoryEventBus) -> None:
    calls: list[DomainEvent] = []

    async def h(event: UtSubOther) -> None:
        calls.append(event)

    bus.subscribe(UtSubOther, h)
    bus.subscribe(UtSubOther, h)
    assert len(bus.subscriptions) == 1
    await bus.publish(UtSubOther())
    assert len(calls) == 1


async def test_unsubscribe(bus: InMemoryEventBus) -> None:
    calls: list[DomainEvent] = []

    async def h(event: UtSubOther) -> None:
        calls.append(event)

    async def never(event: UtSubOther) -> None:
        raise AssertionError("never subscribed")

    bus.subscribe(UtSubOther, h)
    await bus.publish(UtSubOther())
    bus.unsubscribe(UtSubOther, h)
    await bus.publish(UtSubOther())
    assert len(calls) == 1
    assert len(bus.subscriptions) == 0
    # unknown handler / unknown target: no-op, no error
    bus.unsubscribe(UtSubOther, never)
    bus.unsubscribe(UtSubOther, h)
    bus.unsubscribe("ut.nothing.*", h)


async def test_unsubscribe_only_removes_that_target(bus: InMemoryEventBus) -> None:
    calls: list[str] = []

    async def h(event: DomainEvent) -> None:
        calls.append(event.event_type)

    bus.subscribe(UtSubOther, h)
    bus.subscribe("ut.wire.*", h, name="ut-wire-h")
    bus.unsubscribe(UtSubOther, h)
    await bus.publish(UtSubOther())
    await bus.publish(UtWireA())
    assert calls == ["ut.wire.a"]


# -- handler objects and routers -------------------------------------------------------
class UtSubHandler(EventHandler):
    event_types: ClassVar[tuple[Any, ...]] = (UtSubOther, "ut.wire.*")

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, event: DomainEvent) -> None:
        self.seen.append(event.event_type)


async def test_register_and_unregister_event_handler(bus: InMemoryEventBus) -> None:
    handler = UtSubHandler()
    bus.register(handler)
    bus.register(handler)  # idempotent too
    assert len(bus.subscriptions) == 2
    assert set(names(bus)) == {f"{__name__}.UtSubHandler"}
    await bus.publish(UtSubOther())
    await bus.publish(UtWireB())
    await bus.publish(UtSubParent())
    assert handler.seen == ["ut.sub.other", "ut.wire.b"]
    bus.unregister(handler)
    assert len(bus.subscriptions) == 0
    await bus.publish(UtSubOther())
    assert handler.seen == ["ut.sub.other", "ut.wire.b"]


async def test_register_rejects_objects_without_event_types(bus: InMemoryEventBus) -> None:
    class Empty(EventHandler):
        pass

    with pytest.raises(InvalidHandlerError):
        bus.register(Empty())
    with pytest.raises(InvalidHandlerError):
        bus.register(object())


async def test_include_router(bus: InMemoryEventBus) -> None:
    router = EventRouter()
    seen: list[str] = []

    @router.on(UtSubParent, UtSubOther)
    async def both(event: UtSubParent | UtSubOther) -> None:
        seen.append(event.event_type)

    assert len(router) == 2
    bus.include(router)
    await bus.publish(UtSubParent())
    await bus.publish(UtSubOther())
    await bus.publish(UtSubChild())  # exact match: not delivered
    assert seen == ["ut.sub.parent", "ut.sub.other"]


def test_router_on_without_targets_is_rejected() -> None:
    with pytest.raises(InvalidPatternError):
        EventRouter().on()


def test_router_checks_wiring_at_decoration_time() -> None:
    router = EventRouter()
    with pytest.raises(InvalidHandlerError):

        @router.on(UtSubOther)
        async def wrong(event: UtSubParent) -> None: ...

    assert len(router) == 0


@pytest.fixture
def clean_default_router() -> Any:
    before = list(default_router.entries)
    yield default_router
    default_router.entries[:] = before


async def test_on_event_and_default_router(
    bus: InMemoryEventBus, clean_default_router: EventRouter
) -> None:
    seen: list[str] = []

    @on_event(UtWireA, UtWireB)
    async def wired(event: UtSubBase) -> None:
        seen.append(event.event_type)

    assert [entry[1] for entry in default_router.entries].count(wired) == 2
    bus.include(default_router)
    await bus.publish(UtWireA())
    await bus.publish(UtWireB())
    assert seen == ["ut.wire.a", "ut.wire.b"]


def test_default_router_fixture_restored() -> None:
    # runs after the test above (file order): the handler it added must be gone
    assert not any(getattr(entry[1], "__name__", "") == "wired" for entry in default_router.entries)


# -- durable names -----------------------------------------------------------------------
async def test_default_name_is_module_qualname(bus: InMemoryEventBus) -> None:
    bus.subscribe(UtSubOther, module_level_handler)
    assert names(bus) == [f"{__name__}.module_level_handler"]


async def test_explicit_name_is_kept_and_must_be_unique(bus: InMemoryEventBus) -> None:
    async def one(event: UtSubOther) -> None: ...

    async def two(event: UtSubOther) -> None: ...

    bus.subscribe(UtSubOther, one, name="ut.sub.durable")
    assert names(bus) == ["ut.sub.durable"]
    with pytest.raises(InvalidHandlerError, match=re.escape("ut.sub.durable")):
        bus.subscribe(UtSubOther, two, name="ut.sub.durable")
    assert len(bus.subscriptions) == 1


async def test_clear_removes_everything(bus: InMemoryEventBus) -> None:
    calls: list[DomainEvent] = []

    async def h(event: DomainEvent) -> None:
        calls.append(event)

    bus.subscribe(UtSubOther, h)
    bus.subscribe("#", h, name="ut-all")
    bus.register(UtSubHandler())
    assert len(bus.subscriptions) == 4
    bus.clear()
    assert len(bus.subscriptions) == 0
    await bus.publish(UtSubOther())
    assert calls == []


# -- the wiring check ------------------------------------------------------------------
async def wrong_class(event: UtSubParent) -> None: ...


async def not_an_event(event: int) -> None: ...


async def only_a(event: UtWireA) -> None: ...


async def two_args(event: UtSubOther, extra: str) -> None: ...


def test_non_callable_handler_is_rejected() -> None:
    with pytest.raises(InvalidHandlerError):
        InMemoryEventBus().subscribe(UtSubOther, "not a function")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "handler"),
    [
        (UtSubOther, wrong_class),
        (UtSubParent, not_an_event),
        ("ut.wire.*", only_a),  # also matches UtWireB
        ("#", only_a),
        (UtSubOther, two_args),
    ],
    ids=["wrong-class", "int-annotation", "pattern-not-covered", "hash-not-covered", "two-args"],
)
def test_wiring_check_rejects(target: Any, handler: Any) -> None:
    bus = InMemoryEventBus()
    with pytest.raises(InvalidHandlerError) as info:
        bus.subscribe(target, handler)
    assert handler.__name__ in str(info.value)
    assert len(bus.subscriptions) == 0


def test_subclass_annotated_with_parent_is_accepted() -> None:
    async def h(event: UtSubParent) -> None: ...

    bus = InMemoryEventBus()
    bus.subscribe(UtSubChild, h)  # a child is a parent: fine
    assert len(bus.subscriptions) == 1


async def h_union(event: Union[UtSubOther, UtSubParent]) -> None: ...  # noqa: UP007


async def h_pipe_union(event: UtSubOther | UtSubParent) -> None: ...


async def h_optional(event: Optional[UtSubOther]) -> None: ...  # noqa: UP045


async def h_base(event: UtSubBase) -> None: ...


async def h_domain(event: DomainEvent) -> None: ...


async def h_any(event: Any) -> None: ...


async def h_bare(event) -> None: ...  # type: ignore[no-untyped-def]


def h_sync(event: UtSubOther) -> None: ...


async def h_kwargs(event: UtSubOther, *, flag: bool = False, **kw: Any) -> None: ...


class CallableObject:
    async def __call__(self, event: UtSubOther) -> None: ...


@pytest.mark.parametrize(
    ("target", "handler"),
    [
        (UtSubOther, h_union),
        (UtSubParent, h_pipe_union),
        (UtSubOther, h_optional),
        (UtWireA, h_base),
        ("ut.wire.*", h_base),
        ("#", h_domain),
        ("#", h_any),
        ("#", h_bare),
        (UtSubOther, h_sync),
        (UtSubOther, h_kwargs),
        (UtSubOther, CallableObject()),
    ],
    ids=[
        "union",
        "pipe-union",
        "optional",
        "base",
        "pattern-base",
        "hash-domain",
        "any",
        "unannotated",
        "sync",
        "kw-only-extras",
        "callable-object",
    ],
)
def test_wiring_check_accepts(target: Any, handler: Any) -> None:
    bus = InMemoryEventBus()
    bus.subscribe(target, handler)
    assert len(bus.subscriptions) == 1


def test_callable_object_with_wrong_annotation_is_rejected() -> None:
    class Wrong:
        async def __call__(self, event: UtSubParent) -> None: ...

    with pytest.raises(InvalidHandlerError):
        InMemoryEventBus().subscribe(UtSubOther, Wrong())


class NotAnEvent(BaseModel):
    x: int = 0


@pytest.mark.parametrize("target", [int, NotAnEvent, DomainEvent, object(), 3])
def test_subscribing_to_non_event_targets_is_rejected(target: Any) -> None:
    bus = InMemoryEventBus()
    with pytest.raises(InvalidPatternError):
        bus.subscribe(target, h_domain)
    assert len(bus.subscriptions) == 0


def test_subscribing_to_a_malformed_pattern_is_rejected() -> None:
    with pytest.raises(InvalidPatternError):
        InMemoryEventBus().subscribe("ut..sub", h_domain)
