"""The memory adapter's opt-in failure semantics: retries, dead letters, capabilities."""

from __future__ import annotations

import asyncio

import pytest

from hexbus import DomainEvent, InMemoryEventBus, MemoryConfig, current_context, load_settings
from hexbus.domain.ports import (
    DeadLetterReader,
    DeadLetterReplayer,
    Readiness,
    StatsReporter,
    SubscriptionAdmin,
)
from hexbus.infrastructure.adapters import build_bus
from hexbus.testing import eventually

# Each test runs with the compiled eager start and with the Python one (conftest.py).
pytestmark = pytest.mark.usefixtures("dispatcher_kind")


class Flaky(DomainEvent, event_type="memory.redelivery.flaky"):
    n: int


def retrying(**overrides: object) -> InMemoryEventBus:
    values: dict[str, object] = {
        "max_attempts": 3,
        "retry_delays": (0.01,),
        "dead_letter_limit": 10,
    }
    values.update(overrides)
    return InMemoryEventBus(MemoryConfig.model_validate(values))


async def test_default_stays_fail_open_one_attempt_and_no_dead_letters() -> None:
    calls: list[int] = []

    async def broken(event: Flaky) -> None:
        calls.append(current_context().attempt)
        raise RuntimeError("boom")

    async with InMemoryEventBus() as bus:
        bus.subscribe(Flaky, broken, name="broken")
        await bus.publish(Flaky(n=1))
        assert await bus.dead_letters("broken") == []
    assert calls == [1]
    assert (bus.stats.failed, bus.stats.retried, bus.stats.dead_lettered) == (1, 0, 0)


async def test_publish_returns_after_the_first_attempt_and_retries_in_background() -> None:
    attempts: list[int] = []

    async def flaky(event: Flaky) -> None:
        attempts.append(current_context().attempt)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    async with retrying(retry_delays=(0.05,)) as bus:
        bus.subscribe(Flaky, flaky, name="flaky")
        await bus.publish(Flaky(n=1))
        assert attempts == [1]  # the back-off is not the publisher's to wait for
        await eventually(lambda: attempts == [1, 2, 3], timeout=5)
    assert (bus.stats.failed, bus.stats.retried, bus.stats.handled) == (2, 2, 1)


async def test_dead_letter_record_after_max_attempts() -> None:
    async def broken(event: Flaky) -> None:
        raise ValueError("bad data")

    async with retrying() as bus:
        bus.subscribe(Flaky, broken, name="broken")
        sent = Flaky(n=7)
        await bus.publish(sent, metadata={"ip": "10.0.0.1"})
        await eventually(lambda: bus.stats.dead_lettered == 1, timeout=5)
        (letter,) = await bus.dead_letters("broken")
    assert letter.event_id == str(sent.event_id)
    assert (letter.event_type, letter.reason, letter.attempts) == (
        "memory.redelivery.flaky", "handler_failed", 3,
    )
    assert (letter.subscription, letter.handler, letter.origin) == ("broken", "broken", "memory")
    assert letter.error == "ValueError: bad data"
    assert b'"n":7' in letter.body
    assert dict(letter.headers) == {"ip": "10.0.0.1"}
    assert letter.event == sent


async def test_dead_letters_are_bounded_per_subscription() -> None:
    async def broken(event: Flaky) -> None:
        raise ValueError("x")

    async with retrying(max_attempts=1, dead_letter_limit=2) as bus:
        bus.subscribe(Flaky, broken, name="broken")
        for n in range(3):
            await bus.publish(Flaky(n=n))
        letters = await bus.dead_letters("broken")
    assert [letter.event.n for letter in letters if letter.event is not None] == [1, 2]  # type: ignore[attr-defined]
    assert bus.dead_letter_store.dropped == 1


async def test_replay_redelivers_to_that_subscription_only_from_attempt_one() -> None:
    healthy = asyncio.Event()
    seen: list[tuple[str, int]] = []

    async def fragile(event: Flaky) -> None:
        seen.append(("fragile", current_context().attempt))
        if not healthy.is_set():
            raise RuntimeError("down")

    async def other(event: Flaky) -> None:
        seen.append(("other", current_context().attempt))

    async with retrying(max_attempts=2) as bus:
        bus.subscribe(Flaky, fragile, name="fragile")
        bus.subscribe(Flaky, other, name="other")
        await bus.publish(Flaky(n=1))
        await eventually(lambda: bus.stats.dead_lettered == 1, timeout=5)
        healthy.set()
        seen.clear()
        assert (await bus.replay_dead_letters("fragile")).count == 1
        await eventually(lambda: seen == [("fragile", 1)], timeout=5)
        assert await bus.dead_letters("fragile") == []
        assert (await bus.replay_dead_letters("fragile")).count == 0


async def test_stop_cuts_back_offs_short_so_retries_finish_inside_the_drain() -> None:
    attempts: list[int] = []

    async def flaky(event: Flaky) -> None:
        attempts.append(current_context().attempt)
        if len(attempts) < 2:
            raise RuntimeError("once")

    bus = retrying(retry_delays=(60.0,), drain_timeout=5.0)
    await bus.start()
    bus.subscribe(Flaky, flaky, name="flaky")
    await bus.publish(Flaky(n=1))
    await asyncio.wait_for(bus.stop(), 5)  # not 60 s
    assert attempts == [1, 2]
    assert bus.stats.handled == 1


async def test_memory_implements_every_capability_port() -> None:
    bus = InMemoryEventBus()
    for port in (DeadLetterReader, DeadLetterReplayer, SubscriptionAdmin, Readiness, StatsReporter):
        assert isinstance(bus, port), port.__name__


async def test_delete_subscription_unsubscribes_and_forgets_its_dead_letters() -> None:
    calls: list[int] = []

    async def broken(event: Flaky) -> None:
        calls.append(1)
        raise RuntimeError("x")

    async with retrying(max_attempts=1) as bus:
        bus.subscribe(Flaky, broken, name="broken")
        await bus.publish(Flaky(n=1))
        assert len(await bus.dead_letters("broken")) == 1
        assert await bus.delete_subscription("broken") == []
        await bus.publish(Flaky(n=2))
        await bus.wait_ready()
        assert await bus.dead_letters("broken") == []
        assert "in process" in bus.subscription_address("broken")
    assert calls == [1]


def test_from_settings_applies_retries_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("HEXBUS_RETRY_DELAYS", "0.1,0.2")
    plain = build_bus(load_settings())
    assert isinstance(plain, InMemoryEventBus)
    assert (plain.config.max_attempts, plain.config.dead_letter_limit) == (1, 0)
    monkeypatch.setenv("HEXBUS_MEMORY_RETRIES", "true")
    monkeypatch.setenv("HEXBUS_MEMORY_DEAD_LETTER_LIMIT", "7")
    retrying_bus = build_bus(load_settings())
    assert isinstance(retrying_bus, InMemoryEventBus)
    assert retrying_bus.config.max_attempts == 4
    assert retrying_bus.config.retry_delays == (0.1, 0.2)
    assert retrying_bus.config.dead_letter_limit == 7


def test_memory_config_rejects_negative_delays() -> None:
    with pytest.raises(ValueError, match="delays"):
        MemoryConfig(retry_delays=(-1.0,))


class Other(DomainEvent, event_type="memory.redelivery.other"):
    n: int


async def test_replay_filters_by_type_limits_and_dry_runs() -> None:
    healthy = asyncio.Event()
    handled: list[str] = []

    async def fragile(event: DomainEvent) -> None:
        if not healthy.is_set():
            raise RuntimeError("down")
        handled.append(event.event_type)

    async with retrying(max_attempts=1) as bus:
        bus.subscribe("memory.redelivery.#", fragile, name="fragile")
        for n in range(3):
            await bus.publish(Flaky(n=n))
        await bus.publish(Other(n=9))
        healthy.set()
        preview = await bus.replay_dead_letters(
            "fragile", event_type="memory.redelivery.flaky", dry_run=True
        )
        assert preview.dry_run and preview.count == 3
        assert len(await bus.dead_letters("fragile")) == 4  # a dry run changes nothing
        report = await bus.replay_dead_letters("fragile", 2, event_type="memory.redelivery.flaky")
        assert [d.event.n for d in report.replayed if d.event is not None] == [0, 1]  # type: ignore[attr-defined]
        await eventually(lambda: len(handled) == 2, timeout=5)
        left = await bus.dead_letters("fragile")
        assert sorted(d.event_type or "" for d in left) == [
            "memory.redelivery.flaky", "memory.redelivery.other",
        ]
    assert handled == ["memory.redelivery.flaky"] * 2
