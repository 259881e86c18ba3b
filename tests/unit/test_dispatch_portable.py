"""The portable dispatch path (Python 3.12+, or no ``asyncio.tasks._current_tasks``).

On 3.11 the hand-made eager start is used; these tests force the fallback so the code
that newer interpreters run is exercised here too: a Task per handler, the same
fail-open, timeout and isolation guarantees.
"""

from __future__ import annotations

import asyncio
import contextvars

import pytest

import hexbus.application.dispatch as dispatch
from hexbus import DomainEvent, InMemoryEventBus, current_context


class PortablePing(DomainEvent, event_type="ut.portable.ping"):
    n: int = 0


marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="publisher")


@pytest.fixture(autouse=True)
def portable_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_current_tasks", None)


async def test_handlers_run_concurrently_and_fail_open() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def a(event: PortablePing) -> None:
        first.set()
        await second.wait()
        seen.append("a")

    async def b(event: PortablePing) -> None:
        second.set()
        await first.wait()
        seen.append("b")

    async def boom(event: PortablePing) -> None:
        raise RuntimeError("boom")

    async with InMemoryEventBus() as bus:
        for handler in (a, b, boom):
            bus.subscribe(PortablePing, handler)
        async with asyncio.timeout(5):
            await bus.publish(PortablePing())
        assert sorted(seen) == ["a", "b"]
        assert bus.stats.failed == 1
        assert bus.stats.handled == 2


async def test_context_isolation_metadata_and_timeout() -> None:
    seen: list[tuple[str, str]] = []

    async def setter(event: PortablePing) -> None:
        marker.set("setter")
        await asyncio.sleep(0)
        seen.append(("setter", marker.get()))

    async def reader(event: PortablePing) -> None:
        await asyncio.sleep(0)
        seen.append(("reader", current_context().metadata["who"] + ":" + marker.get()))

    async def hang(event: PortablePing) -> None:
        await asyncio.Event().wait()

    async with InMemoryEventBus(handler_timeout=0.05) as bus:
        for handler in (setter, reader, hang):
            bus.subscribe(PortablePing, handler)
        await bus.publish(PortablePing(), metadata={"who": "me"})
    assert sorted(seen) == [("reader", "me:publisher"), ("setter", "setter")]
    assert marker.get() == "publisher"
    assert bus.stats.timed_out == 1
