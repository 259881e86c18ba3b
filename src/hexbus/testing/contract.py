"""The adapter contract suite: one set of scenarios every ``EventBus`` adapter must pass.

Why a shared suite (in the spirit of Watermill's universal Pub/Sub tests): the memory,
RabbitMQ and Kafka adapters promise one behaviour behind one port, and the only way to
keep that promise is to run the *same* tests against each of them. Third-party adapters
get the same suite for free::

    from hexbus.testing import BusFactory, Capabilities, EventBusContract

    class TestMyAdapterContract(EventBusContract):
        capabilities = Capabilities(
            durable=True, redelivery=True, dead_letter=True, ordering="per_queue",
            consumer_groups=True, delivers_in_publish=False, max_attempts=3,
        )

        @pytest.fixture
        def bus_factory(self, unique_name: str) -> BusFactory:
            async def make() -> EventBus:
                return MyBus(namespace=unique_name, max_attempts=3)   # NOT started
            return make

The suite's tests are coroutines marked for pytest-asyncio, so they run in its ``auto``
and ``strict`` modes alike; in strict mode an ``async def bus_factory`` fixture needs
``@pytest_asyncio.fixture`` (a plain fixture returning the async callable, as above, works
everywhere).

Rules for ``bus_factory``: each call returns a fresh, *not started* bus. Every bus built
in one test must share one namespace (exchange / topic prefix) and one service name, and
that namespace must be unique to the test, so scenarios that use several buses (durable
subscriptions, consumer groups) meet on the broker and tests never see each other's
events. The bus must be built with ``capabilities.max_attempts`` handler attempts.

Differences between transports are *declared* in ``Capabilities``, never silently
skipped: a scenario either asserts the declared behaviour (e.g. "no redelivery" means
the failing handler is called exactly once), or, where nothing meaningful is left to
assert, it is skipped with a reason naming the missing capability.

Every assertion on delivery waits with a deadline (``eventually``) because broker
adapters deliver asynchronously; "X did not happen" is asserted against a *witness* (a
second handler that did get a later event), never after a blind sleep.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal, cast, get_args

import pytest

from hexbus.domain.context import DeliveryContext, current_context
from hexbus.domain.errors import (
    BusClosedError,
    InvalidHandlerError,
    InvalidMetadataError,
    NotADomainEventError,
    NotStartedError,
)
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import DeadLetterReader, EventBus, StatsReporter
from hexbus.testing.declared import DeclaredSuite
from hexbus.testing.waiting import eventually

__all__ = [
    "BusFactory",
    "Capabilities",
    "ContractAlpha",
    "ContractBeta",
    "ContractDeep",
    "EventBusContract",
    "Ordering",
    "Probe",
    "ProbeFailure",
]

Ordering = Literal["publisher", "per_key", "per_queue"]

#: Builds a fresh, not started bus; see the module docstring for the rules.
BusFactory = Callable[[], Awaitable[EventBus]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What an adapter promises; the suite asserts exactly this, nothing more.

    - ``durable``: a named subscription keeps events published while its consumer is down.
    - ``redelivery``: a failed handler is retried, up to ``max_attempts`` attempts in all,
      with ``current_context().attempt`` counting 1, 2, 3 ...
    - ``dead_letter``: after ``max_attempts`` failures the event lands in a dead-letter
      store the suite can read (see ``EventBusContract.dead_letters``).
    - ``ordering``: ``"publisher"`` (one publisher's events arrive in publish order),
      ``"per_queue"`` (in order per subscription queue, which for one publisher is the
      same) or ``"per_key"`` (only events with the same ``key`` keep their order).
    - ``consumer_groups``: buses with the same service name and subscription name share
      the work instead of each getting every event.
    - ``delivers_in_publish``: handlers have finished when ``publish`` returns (memory,
      await mode); otherwise delivery is asynchronous.
    - ``max_attempts``: the handler attempts the factory's buses are configured with.
    """

    durable: bool
    redelivery: bool
    dead_letter: bool
    ordering: Ordering
    consumer_groups: bool
    delivers_in_publish: bool
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.ordering not in get_args(Ordering):
            raise ValueError(
                f"Capabilities.ordering={self.ordering!r}; use one of {get_args(Ordering)}"
            )
        if self.max_attempts < 1:
            raise ValueError("Capabilities.max_attempts must be at least 1")
        if self.redelivery and self.max_attempts < 3:
            raise ValueError(
                "Capabilities(redelivery=True) needs max_attempts >= 3: the redelivery "
                "scenario fails a handler twice and expects the third attempt to succeed"
            )


# -- events used by the suite ----------------------------------------------------------
# Module-level because the event registry is process-global (a class defined inside a
# test would be registered again on every run); the ``contract.`` prefix keeps the wire
# names away from any application's events.


class ContractAlpha(DomainEvent, event_type="contract.alpha"):
    """The workhorse event: a few field types that must survive a broker round trip."""

    seq: int
    text: str = ""
    tags: tuple[str, ...] = ()


class ContractBeta(DomainEvent, event_type="contract.beta"):
    """A second type on the same ``contract.*`` level (fan-out, causation, patterns)."""

    seq: int


class ContractDeep(DomainEvent, event_type="contract.deep.gamma"):
    """Two words below ``contract``: matched by ``contract.#`` and ``#``, not ``contract.*``."""

    seq: int


class ProbeFailure(RuntimeError):
    """Raised on purpose by a failing ``Probe`` (so logs show it is expected)."""


FailWhen = Callable[[DomainEvent, int], bool]


class Probe:
    """A handler that records every call, and can fail or block on demand.

    ``fail_when(event, n)`` is asked on the n-th call for that event (1-based) and makes
    the call raise ``ProbeFailure`` when true. ``gate``: when given, each call waits for
    it after recording the call (to hold a handler "in flight"). ``yields``: how many
    times each call gives the loop a turn before completing (a handler that suspends).
    """

    def __init__(
        self,
        label: str,
        *,
        fail_when: FailWhen | None = None,
        gate: asyncio.Event | None = None,
        yields: int = 0,
    ) -> None:
        self.label = label
        self.fail_when = fail_when
        self.gate = gate
        self.yields = yields
        #: every call, in order (including failed ones)
        self.calls: list[DomainEvent] = []
        #: the delivery context of each call, same order as ``calls``
        self.contexts: list[DeliveryContext] = []
        #: events whose handling completed without error, in completion order
        self.handled: list[DomainEvent] = []

    async def __call__(self, event: DomainEvent) -> None:
        self.calls.append(event)
        self.contexts.append(current_context())
        nth = self.calls_for(event)
        if self.fail_when is not None and self.fail_when(event, nth):
            raise ProbeFailure(f"probe {self.label} fails {event.event_type} (call {nth})")
        if self.gate is not None:
            await self.gate.wait()
        for _ in range(self.yields):
            await asyncio.sleep(0)
        self.handled.append(event)

    def calls_for(self, event: DomainEvent) -> int:
        return sum(1 for seen in self.calls if seen.event_id == event.event_id)

    def attempts_for(self, event: DomainEvent) -> list[int]:
        return [
            ctx.attempt
            for seen, ctx in zip(self.calls, self.contexts, strict=True)
            if seen.event_id == event.event_id
        ]

    def has_handled(self, *events: DomainEvent) -> bool:
        done = {seen.event_id for seen in self.handled}
        return all(event.event_id in done for event in events)

    def handled_ids(self) -> set[uuid.UUID]:
        return {seen.event_id for seen in self.handled}

    def __repr__(self) -> str:
        seen = ", ".join(f"{e.event_type}#{getattr(e, 'seq', '?')}" for e in self.calls)
        return f"<Probe {self.label} calls=[{seen}] handled={len(self.handled)}>"


def _always(_event: DomainEvent, _nth: int) -> bool:
    return True


def assert_same_event(received: DomainEvent, sent: DomainEvent) -> None:
    """The parts of an event a transport must preserve exactly.

    ``occurred_at`` may lose sub-millisecond precision on the wire; ``source`` is not
    compared because broker adapters stamp it with the service name (CloudEvents
    ``source``).
    """
    assert type(received) is type(sent), f"got {type(received).__qualname__}"
    assert received.event_id == sent.event_id
    own = [n for n in type(sent).model_fields if n not in DomainEvent.model_fields]
    assert {n: getattr(received, n) for n in own} == {n: getattr(sent, n) for n in own}
    assert received.correlation_id == sent.correlation_id
    assert received.causation_id == sent.causation_id
    assert abs(received.occurred_at - sent.occurred_at) <= timedelta(milliseconds=1)


def _dead_letter_id(item: object) -> str | None:
    """The event id in one dead letter, whatever shape the adapter returns."""
    if isinstance(item, DomainEvent):
        return str(item.event_id)
    inner = getattr(item, "event", None)
    if isinstance(inner, DomainEvent):
        return str(inner.event_id)
    for attr in ("event_id", "id"):
        value = getattr(item, attr, None)
        if value is not None:
            return str(value)
    if isinstance(item, Mapping):
        for key in ("event_id", "id"):
            if key in item:
                return str(item[key])
    return None


#: The suite's scenarios are coroutines; marking them for pytest-asyncio explicitly makes
#: them run in projects using its ``strict`` mode too (in ``auto`` mode it is a no-op).
_SUITE_MARKS: list[pytest.MarkDecorator] = [pytest.mark.contract]
if importlib.util.find_spec("pytest_asyncio") is not None:
    _SUITE_MARKS.append(pytest.mark.asyncio)


class EventBusContract(DeclaredSuite[Capabilities]):
    """Subclass as ``Test<Adapter>Contract``; set ``capabilities``; define ``bus_factory``.

    Tunables (class attributes): ``timeout`` bounds each wait for a normal delivery,
    ``retry_timeout`` the waits that include broker retries with backoff,
    ``adapter_name`` names the adapter in skip reasons (default: the class name).
    Hooks to override: ``dead_letters(bus, subscription)`` and ``failure_count(bus)``.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = _SUITE_MARKS

    capabilities: ClassVar[Capabilities]
    capabilities_type = Capabilities
    timeout: ClassVar[float] = 10.0
    retry_timeout: ClassVar[float] = 60.0

    # -- what subclasses provide ---------------------------------------------------------
    @pytest.fixture
    def bus_factory(self) -> BusFactory:
        """Override me: return an async callable building a fresh, not started bus."""
        pytest.fail(
            f"{type(self).__qualname__} must define a `bus_factory` fixture returning an "
            "async callable that builds a fresh, not started EventBus",
            pytrace=False,
        )

    async def dead_letters(self, bus: EventBus, subscription: str) -> Sequence[object]:
        """The dead letters of one subscription (used when ``dead_letter`` is declared).

        Default: the ``DeadLetterReader`` port, ``await bus.dead_letters(subscription)``.
        Override for an adapter that keeps dead letters elsewhere; items may be
        ``DeadLetter`` records, events, or objects / mappings with ``event_id``.
        """
        if not isinstance(bus, DeadLetterReader):
            pytest.fail(
                f"{self.adapter} declares dead_letter but {type(bus).__name__} does not "
                "implement hexbus.domain.ports.DeadLetterReader (async dead_letters("
                "subscription, limit)); add it or override EventBusContract.dead_letters",
                pytrace=False,
            )
        return list(await bus.dead_letters(subscription))

    def failure_count(self, bus: EventBus) -> int | None:
        """Handler failures counted so far, or ``None`` if the adapter exposes no count."""
        return bus.stats.failed if isinstance(bus, StatsReporter) else None

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def sub_name(label: str) -> str:
        """A unique subscription name (a durable queue / consumer group on brokers)."""
        return f"contract-{label}-{uuid.uuid4().hex[:8]}"

    async def make_bus(self, bus_factory: BusFactory) -> EventBus:
        bus = await bus_factory()
        assert isinstance(bus, EventBus), f"bus_factory returned {bus!r}, not an EventBus"
        return bus

    @asynccontextmanager
    async def running(self, bus: EventBus) -> AsyncIterator[EventBus]:
        """Start ``bus`` and always stop it, even when the scenario fails."""
        await bus.start()
        try:
            yield bus
        finally:
            await bus.stop()

    async def wait_until(
        self,
        condition: Callable[[], object],
        what: str | Callable[[], str],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a polling deadline
    ) -> None:
        """``eventually`` with the class's default deadline."""
        await eventually(condition, timeout=timeout or self.timeout, message=what)

    # -- delivery ------------------------------------------------------------------------
    async def test_publish_delivers_equal_event(self, bus_factory: BusFactory) -> None:
        """The handler gets the same event: id, fields, correlation and causation."""
        probe = Probe("basic")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, probe, name=self.sub_name("basic"))
        sent = ContractAlpha(
            seq=1, text="héllo ✓", tags=("a", "b"), correlation_id="corr-1",
            causation_id="cause-1",
        )
        async with self.running(bus):
            await bus.publish(sent)
            await self.wait_until(lambda: probe.calls, lambda: f"delivery to {probe!r}")
        assert len(probe.calls) == 1, probe
        assert_same_event(probe.calls[0], sent)
        context = probe.contexts[0]
        assert context.attempt == 1
        assert context.event is not None and context.event.event_id == sent.event_id

    async def test_plain_def_handler_receives_event(self, bus_factory: BusFactory) -> None:
        """A synchronous ``def`` handler is supported (run off the event loop)."""
        seen: list[DomainEvent] = []

        def handler(event: ContractAlpha) -> None:
            seen.append(event)

        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, handler, name=self.sub_name("sync"))
        sent = ContractAlpha(seq=7)
        async with self.running(bus):
            await bus.publish(sent)
            await self.wait_until(lambda: seen, "delivery to a plain def handler")
        assert [e.event_id for e in seen] == [sent.event_id]

    async def test_pattern_subscription_matches_topic_syntax(
        self, bus_factory: BusFactory
    ) -> None:
        """``contract.*`` gets one-word types only; ``contract.#`` and ``#`` get all."""
        one_level, deep, everything = Probe("star"), Probe("hash"), Probe("all")
        bus = await self.make_bus(bus_factory)
        bus.subscribe("contract.*", one_level, name=self.sub_name("star"))
        bus.subscribe("contract.#", deep, name=self.sub_name("deep"))
        bus.subscribe("#", everything, name=self.sub_name("all"))
        gamma = ContractDeep(seq=1)
        alpha = ContractAlpha(seq=2)
        beta = ContractBeta(seq=3)
        async with self.running(bus):
            # gamma first: with ordered delivery, `contract.*` receiving beta proves gamma
            # was never routed to it; the `#` witness covers per-key transports.
            for event in (gamma, alpha, beta):
                await bus.publish(event, key="contract-pattern")
            await self.wait_until(
                lambda: one_level.has_handled(alpha, beta)
                and deep.has_handled(gamma, alpha, beta)
                and everything.has_handled(gamma, alpha, beta),
                lambda: f"pattern deliveries: {one_level!r} {deep!r} {everything!r}",
            )
        assert gamma.event_id not in {e.event_id for e in one_level.calls}, one_level
        assert len(one_level.calls) == 2, one_level
        assert len(everything.calls) == 3, everything

    async def test_exact_subscription_ignores_other_types(
        self, bus_factory: BusFactory
    ) -> None:
        """Subscribing to a class is an exact match: other types never reach it."""
        alphas, witness = Probe("alphas"), Probe("witness")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, alphas, name=self.sub_name("alphas"))
        bus.subscribe(ContractBeta, witness, name=self.sub_name("betas"))
        beta = ContractBeta(seq=1)
        async with self.running(bus):
            await bus.publish(beta)
            await self.wait_until(lambda: witness.has_handled(beta), "witness got beta")
        assert alphas.calls == [], alphas

    async def test_every_handler_receives_the_event(self, bus_factory: BusFactory) -> None:
        """Two handlers on one event type both get it (fan-out, one subscription each)."""
        first, second = Probe("first"), Probe("second")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, first, name=self.sub_name("first"))
        bus.subscribe(ContractAlpha, second, name=self.sub_name("second"))
        sent = ContractAlpha(seq=1)
        async with self.running(bus):
            await bus.publish(sent)
            await self.wait_until(
                lambda: first.has_handled(sent) and second.has_handled(sent),
                lambda: f"fan-out: {first!r} {second!r}",
            )
        assert first.calls_for(sent) == 1 and second.calls_for(sent) == 1

    async def test_failing_handler_does_not_affect_others(
        self, bus_factory: BusFactory
    ) -> None:
        """Fail-open: one handler raising neither reaches the publisher nor the others."""
        failing, healthy = Probe("failing", fail_when=_always), Probe("healthy")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, failing, name=self.sub_name("failing"))
        bus.subscribe(ContractAlpha, healthy, name=self.sub_name("healthy"))
        first, second = ContractAlpha(seq=1), ContractAlpha(seq=2)
        async with self.running(bus):
            await bus.publish(first)  # must not raise ProbeFailure
            await bus.publish(second)
            await self.wait_until(
                lambda: healthy.has_handled(first, second) and failing.calls_for(second),
                lambda: f"healthy handler kept going: {healthy!r} {failing!r}",
            )
        assert failing.handled == []

    async def test_metadata_reaches_handler_context(self, bus_factory: BusFactory) -> None:
        """``publish(metadata=...)`` is readable as ``current_context().metadata``."""
        probe = Probe("metadata")
        metadata = {"ip_address": "10.0.0.7", "user_agent": "pytest/9 (contract)",
                    "trace_id": "4bf92f3577b34da6"}
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, probe, name=self.sub_name("metadata"))
        async with self.running(bus):
            await bus.publish(ContractAlpha(seq=1), metadata=metadata)
            await self.wait_until(lambda: probe.calls, "delivery with metadata")
        received = dict(probe.contexts[0].metadata)
        assert {k: received.get(k) for k in metadata} == metadata, received

    async def test_publish_accepts_key(self, bus_factory: BusFactory) -> None:
        """``key`` is accepted; where the transport reports it, it is the key given."""
        probe = Probe("key")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, probe, name=self.sub_name("key"))
        sent = ContractAlpha(seq=1)
        async with self.running(bus):
            await bus.publish(sent, key="aggregate-42")
            await self.wait_until(lambda: probe.has_handled(sent), "delivery of a keyed event")
        assert probe.contexts[0].key in (None, "aggregate-42")

    async def test_event_published_by_handler_is_caused_by_the_handled_event(
        self, bus_factory: BusFactory
    ) -> None:
        """A handler's event carries causation_id = parent id, and the parent's correlation."""
        children = Probe("children")
        bus = await self.make_bus(bus_factory)

        async def react(event: ContractAlpha) -> None:
            await bus.publish(ContractBeta(seq=event.seq))

        bus.subscribe(ContractAlpha, react, name=self.sub_name("react"))
        bus.subscribe(ContractBeta, children, name=self.sub_name("children"))
        parent = ContractAlpha(seq=5, correlation_id="conversation-1")
        async with self.running(bus):
            await bus.publish(parent)
            await self.wait_until(lambda: children.handled, "the handler's event")
        child = children.handled[0]
        assert child.causation_id == str(parent.event_id)
        assert child.correlation_id == "conversation-1"

    # -- ordering ------------------------------------------------------------------------
    async def test_publish_many_delivers_all(self, bus_factory: BusFactory) -> None:
        """Every event of ``publish_many`` arrives; in publish order unless ``per_key``."""
        probe = Probe("many")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, probe, name=self.sub_name("many"))
        events = [ContractAlpha(seq=i) for i in range(20)]
        async with self.running(bus):
            await bus.publish_many(events)
            await self.wait_until(lambda: probe.has_handled(*events), lambda: repr(probe))
        received = [cast(ContractAlpha, e).seq for e in probe.handled]
        if self.caps.ordering in ("publisher", "per_queue"):
            assert received == list(range(20))
        else:  # per_key: default keys differ per event, so only completeness is promised
            assert sorted(received) == list(range(20))

    async def test_same_key_keeps_publish_order(self, bus_factory: BusFactory) -> None:
        """Events with one key arrive in publish order (every ordering mode promises it)."""
        probe = Probe("ordered")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, probe, name=self.sub_name("ordered"))
        events = [ContractAlpha(seq=i) for i in range(15)]
        async with self.running(bus):
            for event in events:
                await bus.publish(event, key="aggregate-1")
            await self.wait_until(lambda: probe.has_handled(*events), lambda: repr(probe))
        assert [cast(ContractAlpha, e).seq for e in probe.handled] == list(range(15))

    # -- subscriptions -------------------------------------------------------------------
    async def test_unsubscribe_stops_delivery(self, bus_factory: BusFactory) -> None:
        """After ``unsubscribe`` the handler sees no new events; a witness proves delivery."""
        leaving, witness = Probe("leaving"), Probe("witness")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, leaving, name=self.sub_name("leaving"))
        bus.subscribe(ContractAlpha, witness, name=self.sub_name("witness"))
        before, after = ContractAlpha(seq=1), ContractAlpha(seq=2)
        async with self.running(bus):
            await bus.publish(before)
            await self.wait_until(
                lambda: leaving.has_handled(before) and witness.has_handled(before),
                "both handlers wired",
            )
            bus.unsubscribe(ContractAlpha, leaving)
            await bus.publish(after)
            await self.wait_until(lambda: witness.has_handled(after), "witness got the event")
        assert after.event_id not in leaving.handled_ids(), leaving

    async def test_double_subscribe_is_idempotent(self, bus_factory: BusFactory) -> None:
        """Subscribing one handler twice delivers once."""
        twice, witness = Probe("twice"), Probe("witness")
        bus = await self.make_bus(bus_factory)
        name = self.sub_name("twice")
        bus.subscribe(ContractAlpha, twice, name=name)
        bus.subscribe(ContractAlpha, twice, name=name)
        bus.subscribe(ContractAlpha, witness, name=self.sub_name("witness"))
        sent, later = ContractAlpha(seq=1), ContractAlpha(seq=2)
        async with self.running(bus):
            await bus.publish(sent)
            await bus.publish(later)
            await self.wait_until(
                lambda: witness.has_handled(sent, later) and twice.has_handled(sent, later),
                lambda: f"{twice!r} {witness!r}",
            )
        assert twice.calls_for(sent) == 1, twice

    async def test_subscribe_rejects_mismatched_handler(
        self, bus_factory: BusFactory
    ) -> None:
        """The wiring check: a handler annotated for another type fails at subscribe."""

        async def wrong(event: ContractBeta) -> None:
            raise AssertionError("never called")

        bus = await self.make_bus(bus_factory)
        with pytest.raises(InvalidHandlerError):
            bus.subscribe(ContractAlpha, wrong, name=self.sub_name("wrong"))
        await bus.stop()

    # -- lifecycle -----------------------------------------------------------------------
    async def test_publish_before_start_raises(self, bus_factory: BusFactory) -> None:
        bus = await self.make_bus(bus_factory)
        try:
            with pytest.raises(NotStartedError) as info:
                await bus.publish(ContractAlpha(seq=1))
            assert not isinstance(info.value, BusClosedError)
        finally:
            await bus.stop()

    async def test_publish_after_stop_raises(self, bus_factory: BusFactory) -> None:
        """A stopped bus says so (``BusClosedError``); ``stop()`` twice is harmless."""
        bus = await self.make_bus(bus_factory)
        async with bus:
            pass
        await bus.stop()
        with pytest.raises(BusClosedError):
            await bus.publish(ContractAlpha(seq=1))

    async def test_publish_rejects_non_events(self, bus_factory: BusFactory) -> None:
        bus = await self.make_bus(bus_factory)
        async with self.running(bus):
            for bad in ({"event_type": "contract.alpha", "seq": 1}, "contract.alpha", None):
                with pytest.raises(NotADomainEventError):
                    await bus.publish(cast(Any, bad))

    # -- admission: the same steps in the same order on every adapter ------------------
    async def test_admission_checks_state_then_type_then_metadata(
        self, bus_factory: BusFactory
    ) -> None:
        """State first, then the event's type, then metadata (each error names its step)."""
        bad_metadata: Any = {"ip": 1}
        bus = await self.make_bus(bus_factory)
        try:
            with pytest.raises(NotStartedError):
                await bus.publish(cast(Any, "not an event"), metadata=bad_metadata)
            await bus.start()
            with pytest.raises(NotADomainEventError):
                await bus.publish(cast(Any, "not an event"), metadata=bad_metadata)
            with pytest.raises(InvalidMetadataError):
                await bus.publish(ContractAlpha(seq=1), metadata=bad_metadata)
        finally:
            await bus.stop()

    async def test_bad_metadata_raises_even_when_middleware_drops_the_event(
        self, bus_factory: BusFactory
    ) -> None:
        """The caller's mistake is reported whatever the middleware does; a dropped event
        is delivered nowhere (checked against a witness published after it)."""
        dropped = Probe("dropped")
        witness = Probe("witness")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, dropped, name=self.sub_name("dropped"))
        bus.subscribe(ContractBeta, witness, name=self.sub_name("witness"))

        def drop_alpha(event: DomainEvent) -> DomainEvent | None:
            return None if isinstance(event, ContractAlpha) else event

        bus.add_middleware(drop_alpha)
        bad_metadata: Any = {"ip": 1}
        async with self.running(bus):
            with pytest.raises(InvalidMetadataError):
                await bus.publish(ContractAlpha(seq=1), metadata=bad_metadata)
            await bus.publish(ContractAlpha(seq=2), metadata={"ip": "10.0.0.1"})
            later = ContractBeta(seq=3)
            await bus.publish(later)
            await self.wait_until(lambda: witness.has_handled(later), lambda: repr(witness))
        assert dropped.calls == [], f"middleware dropped it, yet it was delivered: {dropped!r}"

    async def test_publish_many_checks_every_event_before_sending_any(
        self, bus_factory: BusFactory
    ) -> None:
        """A non-event in the list fails the call before the first event is sent."""
        first = Probe("first")
        witness = Probe("witness")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, first, name=self.sub_name("first"))
        bus.subscribe(ContractBeta, witness, name=self.sub_name("witness"))
        async with self.running(bus):
            with pytest.raises(NotADomainEventError):
                await bus.publish_many([ContractAlpha(seq=1), cast(Any, {"seq": 2})])
            later = ContractBeta(seq=3)
            await bus.publish(later)
            await self.wait_until(lambda: witness.has_handled(later), lambda: repr(witness))
        assert first.calls == [], f"sent before the whole list was admitted: {first!r}"

    async def test_event_built_outside_a_handler_is_caused_by_the_one_it_is_published_in(
        self, bus_factory: BusFactory
    ) -> None:
        """Admission stamps causation at publish time too, not only at construction."""
        prepared = ContractBeta(seq=2)  # built before any handler runs: no cause yet
        assert prepared.causation_id is None
        children = Probe("children")
        bus = await self.make_bus(bus_factory)

        async def forward(event: ContractAlpha) -> None:
            await bus.publish(prepared)

        bus.subscribe(ContractAlpha, forward, name=self.sub_name("forward"))
        bus.subscribe(ContractBeta, children, name=self.sub_name("children"))
        parent = ContractAlpha(seq=1)
        async with self.running(bus):
            await bus.publish(parent)
            await self.wait_until(lambda: children.handled, lambda: repr(children))
        child = children.handled[0]
        assert child.event_id == prepared.event_id
        assert child.causation_id == str(parent.event_id)
        assert child.correlation_id == parent.correlation_id

    async def test_stop_lets_inflight_handler_finish(self, bus_factory: BusFactory) -> None:
        """``stop()`` drains: a handler already running completes, it is not cancelled."""
        gate = asyncio.Event()
        slow = Probe("slow", gate=gate)
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, slow, name=self.sub_name("slow"))
        sent = ContractAlpha(seq=1)
        await bus.start()
        publishing = asyncio.create_task(bus.publish(sent))
        stopping: asyncio.Task[None] | None = None
        try:
            await self.wait_until(lambda: slow.calls, "the handler started")
            stopping = asyncio.create_task(bus.stop())
            # Only a grace period for stop() to get going: it can make the check pass
            # wrongly (stop slower than this), never fail a correct adapter.
            await asyncio.sleep(min(0.1, self.timeout))
            assert not stopping.done(), "stop() returned while a handler was still running"
            gate.set()
            await asyncio.wait_for(asyncio.shield(stopping), self.timeout)
            await asyncio.wait_for(publishing, self.timeout)
        finally:
            gate.set()
            if stopping is None:
                await bus.stop()
            else:
                await asyncio.wait({stopping, publishing}, timeout=self.timeout)
        assert slow.handled == [sent], slow

    async def test_publish_completion_matches_declaration(
        self, bus_factory: BusFactory
    ) -> None:
        """``delivers_in_publish``: handlers done on return; else publish does not wait."""
        if self.caps.delivers_in_publish:
            probe = Probe("awaited", yields=3)  # suspends, so a Task finishes the work
            bus = await self.make_bus(bus_factory)
            bus.subscribe(ContractAlpha, probe, name=self.sub_name("awaited"))
            sent = ContractAlpha(seq=1)
            async with self.running(bus):
                await bus.publish(sent)
                assert probe.handled == [sent], "publish returned before its handler finished"
            return
        gate = asyncio.Event()
        blocked = Probe("blocked", gate=gate)
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, blocked, name=self.sub_name("blocked"))
        sent = ContractAlpha(seq=1)
        async with self.running(bus):
            try:
                await asyncio.wait_for(bus.publish(sent), self.timeout)
            finally:
                gate.set()
            await self.wait_until(lambda: blocked.has_handled(sent), lambda: repr(blocked))

    # -- failures ------------------------------------------------------------------------
    async def test_failed_handler_redelivery(self, bus_factory: BusFactory) -> None:
        """``redelivery``: retried with attempt 1, 2, 3. Without: called once, counted."""
        probe = Probe("flaky", fail_when=lambda _event, nth: nth <= 2)
        witness = Probe("witness")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, probe, name=self.sub_name("flaky"))
        bus.subscribe(ContractBeta, witness, name=self.sub_name("witness"))
        sent = ContractAlpha(seq=1)
        if self.caps.redelivery:
            async with self.running(bus):
                await bus.publish(sent)
                await self.wait_until(
                    lambda: probe.has_handled(sent),
                    lambda: f"the third attempt to succeed: {probe!r}",
                    timeout=self.retry_timeout,
                )
            assert probe.attempts_for(sent) == [1, 2, 3], probe.attempts_for(sent)
            return
        async with self.running(bus):
            failures_before = self.failure_count(bus)
            await bus.publish(sent)
            later = ContractBeta(seq=2)
            await bus.publish(later)
            await self.wait_until(
                lambda: probe.calls and witness.has_handled(later), "failure and witness"
            )
            failures_after = self.failure_count(bus)
        assert probe.attempts_for(sent) == [1], f"{self.adapter} declares no redelivery"
        assert probe.handled == []
        if failures_before is not None and failures_after is not None:
            assert failures_after == failures_before + 1, "the failure was not counted"

    async def test_dead_letter_after_max_attempts(self, bus_factory: BusFactory) -> None:
        """``dead_letter``: after ``max_attempts`` failures the event is in the DLQ."""
        if not self.caps.dead_letter:
            self.unsupported("dead_letter")
        attempts = self.caps.max_attempts
        doomed = Probe("doomed", fail_when=_always)
        name = self.sub_name("doomed")
        bus = await self.make_bus(bus_factory)
        bus.subscribe(ContractAlpha, doomed, name=name)
        sent = ContractAlpha(seq=1)
        letters: list[str | None] = []

        async def dead_lettered() -> bool:
            letters[:] = [_dead_letter_id(item) for item in await self.dead_letters(bus, name)]
            return str(sent.event_id) in letters

        async with self.running(bus):
            await bus.publish(sent)
            await self.wait_until(
                lambda: doomed.calls_for(sent) >= attempts,
                lambda: f"{attempts} attempts: {doomed!r}",
                timeout=self.retry_timeout,
            )
            await eventually(
                dead_lettered,
                timeout=self.retry_timeout,
                message=lambda: f"event {sent.event_id} in the dead letters of {name}: "
                f"{letters}",
            )
        assert doomed.attempts_for(sent) == list(range(1, attempts + 1))

    # -- broker features -----------------------------------------------------------------
    async def test_durable_subscription_keeps_events_while_down(
        self, bus_factory: BusFactory
    ) -> None:
        """``durable``: events published while a subscriber is stopped reach it later."""
        if not self.caps.durable:
            self.unsupported("durable")
        name = self.sub_name("durable")
        first, second = Probe("first-run"), Probe("second-run")
        consumer = await self.make_bus(bus_factory)
        consumer.subscribe(ContractAlpha, first, name=name)
        async with self.running(consumer):
            pass  # declares the durable subscription, then goes away
        publisher = await self.make_bus(bus_factory)
        sent = ContractAlpha(seq=1)
        async with self.running(publisher):
            await publisher.publish(sent)
        restarted = await self.make_bus(bus_factory)
        restarted.subscribe(ContractAlpha, second, name=name)
        async with self.running(restarted):
            await self.wait_until(
                lambda: second.has_handled(sent), "the event kept while the consumer was down"
            )
        assert first.calls == []

    async def test_consumer_group_shares_work(self, bus_factory: BusFactory) -> None:
        """``consumer_groups``: two members of one subscription share, not both get all."""
        if not self.caps.consumer_groups:
            self.unsupported("consumer_groups")
        name = self.sub_name("group")
        member_a, member_b = Probe("member-a"), Probe("member-b")
        bus_a, bus_b = await self.make_bus(bus_factory), await self.make_bus(bus_factory)
        bus_a.subscribe(ContractAlpha, member_a, name=name)
        bus_b.subscribe(ContractAlpha, member_b, name=name)
        events = [ContractAlpha(seq=i) for i in range(10)]
        sent = {e.event_id for e in events}
        async with self.running(bus_a), self.running(bus_b):
            await bus_a.publish_many(events)
            await self.wait_until(
                lambda: member_a.handled_ids() | member_b.handled_ids() >= sent,
                lambda: f"group delivery: {member_a!r} {member_b!r}",
            )
        both_got_all = member_a.handled_ids() >= sent and member_b.handled_ids() >= sent
        assert not both_got_all, "each member got every event: a broadcast, not a group"
