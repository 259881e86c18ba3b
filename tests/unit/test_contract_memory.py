"""The adapter contract suite against the in-memory adapter and ``RecordingEventBus``.

Why every mode: await mode is what tests use (handlers finished when ``publish``
returns), background mode is what latency-sensitive services use (delivery after
``publish`` returns, like a broker), and with retries enabled the memory adapter has the
brokers' failure semantics (redelivery, dead letters), which the suite then asserts
instead of declaring them unsupported. ``RecordingEventBus`` is the port's test double:
it must pass the same scenarios (admission above all), or tests written against it lie.
"""

from __future__ import annotations

import asyncio

import pytest

from hexbus import EventBus, InMemoryEventBus, MemoryConfig
from hexbus.testing import (
    BusFactory,
    Capabilities,
    EventBusContract,
    RecordingEventBus,
    eventually,
)

_MEMORY = Capabilities(
    durable=False,
    redelivery=False,
    dead_letter=False,
    ordering="publisher",
    consumer_groups=False,
    delivers_in_publish=True,
)

# Each test runs with the compiled eager start and with the Python one (conftest.py).
pytestmark = pytest.mark.usefixtures("dispatcher_kind")


class TestMemoryAwaitContract(EventBusContract):
    capabilities = _MEMORY
    adapter_name = "memory (await mode)"
    timeout = 5.0

    @pytest.fixture
    def bus_factory(self) -> BusFactory:
        async def make() -> EventBus:
            return InMemoryEventBus(mode="await")

        return make


class TestMemoryBackgroundContract(EventBusContract):
    capabilities = Capabilities(
        durable=False,
        redelivery=False,
        dead_letter=False,
        ordering="publisher",
        consumer_groups=False,
        delivers_in_publish=False,
    )
    adapter_name = "memory (background mode)"
    timeout = 5.0

    @pytest.fixture
    def bus_factory(self) -> BusFactory:
        async def make() -> EventBus:
            return InMemoryEventBus(mode="background")

        return make


class TestMemoryRetriesContract(EventBusContract):
    """``HEXBUS_MEMORY_RETRIES``: attempts 1, 2, 3 and a dead-letter store, in process."""

    capabilities = Capabilities(
        durable=False,
        redelivery=True,
        dead_letter=True,
        ordering="publisher",
        consumer_groups=False,
        delivers_in_publish=True,
        max_attempts=3,
    )
    adapter_name = "memory (retries and dead letters)"
    timeout = 5.0
    retry_timeout = 5.0

    @pytest.fixture
    def bus_factory(self) -> BusFactory:
        async def make() -> EventBus:
            return InMemoryEventBus(
                MemoryConfig(max_attempts=3, retry_delays=(0.01, 0.02), dead_letter_limit=100)
            )

        return make


class TestRecordingBusContract(EventBusContract):
    """The test double keeps the port's promises (``dispatch=True``, no autostart)."""

    capabilities = _MEMORY
    adapter_name = "RecordingEventBus"
    timeout = 5.0

    @pytest.fixture
    def bus_factory(self) -> BusFactory:
        async def make() -> EventBus:
            return RecordingEventBus(dispatch=True, autostart=False)

        return make


# -- the suite's own building blocks ---------------------------------------------------


def test_capabilities_reject_unknown_ordering() -> None:
    with pytest.raises(ValueError, match="ordering"):
        Capabilities(
            durable=False, redelivery=False, dead_letter=False,
            ordering="random",  # type: ignore[arg-type]
            consumer_groups=False, delivers_in_publish=True,
        )


def test_capabilities_with_redelivery_need_three_attempts() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Capabilities(
            durable=True, redelivery=True, dead_letter=True, ordering="per_queue",
            consumer_groups=True, delivers_in_publish=False, max_attempts=2,
        )


def test_capabilities_are_frozen() -> None:
    with pytest.raises(AttributeError):
        _MEMORY.durable = True  # type: ignore[misc]


async def test_eventually_waits_for_a_later_truth() -> None:
    loop = asyncio.get_running_loop()
    flag: list[bool] = []
    loop.call_later(0.05, flag.append, True)
    await eventually(lambda: flag, timeout=2)
    assert flag == [True]


async def test_eventually_accepts_async_conditions_and_asserts() -> None:
    seen: list[int] = []

    async def grows() -> bool:
        seen.append(1)
        assert len(seen) >= 3, "not yet"
        return True

    await eventually(grows, timeout=2, interval=0.001)
    assert len(seen) == 3


async def test_eventually_fails_with_message_and_last_assertion() -> None:
    def never() -> None:
        raise AssertionError("still 0 events")

    with pytest.raises(AssertionError, match=r"within 0.05s \(the handler ran\): still 0") as info:
        await eventually(never, timeout=0.05, message=lambda: "the handler ran")
    assert isinstance(info.value.__cause__, AssertionError)


async def test_eventually_rejects_a_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        await eventually(lambda: True, timeout=0)


def test_the_contract_base_is_not_collected_and_is_marked() -> None:
    """Users import the base into test modules; pytest must not run it on its own."""
    assert not EventBusContract.__name__.startswith("Test")
    assert "contract" in [m.name for m in EventBusContract.pytestmark]
