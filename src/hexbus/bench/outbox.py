"""The outbox's costs, measured on a real database and broker (``hexbus bench --outbox``).

Three figures, each against a baseline taken in the same run (interleaved rounds,
medians), on whatever adapter the settings select:

- relay throughput: ``events`` rows already committed, sent by the relay (claim, send,
  delete, in batches) vs the same adapter's direct ``publish_many`` of the same number
  of events in batches of the same size. Target: at least 70% on PostgreSQL.
- the write: the time a use case's transaction takes with one event written into the
  outbox vs the same transaction without it (one INSERT row; on PostgreSQL also the
  NOTIFY); per event for a batch of 100 (``publish_many(..., session=s)``).
- commit → handler latency: events committed one at a time at a steady pace by a
  writer that shares nothing with the relay but the database, so only ``NOTIFY`` (or
  the poll) wakes the relay; p50 and p99 from the commit's return to the handler.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import Readiness
from hexbus.infrastructure.outbox import Outbox, open_engine

__all__ = ["OutboxBenchEvent", "OutboxFigures", "run_outbox_bench"]


class OutboxBenchEvent(DomainEvent, event_type="hexbus.bench.outbox"):
    """About 200 bytes of JSON, like the broker benchmarks."""

    order_id: str
    sku: str
    quantity: int
    note: str


def _event(n: int) -> OutboxBenchEvent:
    return OutboxBenchEvent(
        order_id=f"order-{n:08d}", sku="SKU-123456", quantity=n % 7 + 1, note="x" * 96
    )


@dataclass(slots=True)
class OutboxFigures:
    adapter: str
    dialect: str
    events: int
    batch: int
    relay_per_s: list[float] = field(default_factory=list)
    direct_per_s: list[float] = field(default_factory=list)
    write_with_us: list[float] = field(default_factory=list)
    write_without_us: list[float] = field(default_factory=list)
    write_many_per_event_us: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        med = statistics.median
        relay, direct = med(self.relay_per_s), med(self.direct_per_s)
        lat = sorted(self.latency_ms)
        return {
            "adapter": self.adapter,
            "database": self.dialect,
            "events": self.events,
            "batch": self.batch,
            "relay_events_per_s": round(relay),
            "publish_many_events_per_s": round(direct),
            "relay_vs_publish_many": round(relay / direct, 3) if direct else None,
            "transaction_with_outbox_write_us": round(med(self.write_with_us), 1),
            "transaction_without_us": round(med(self.write_without_us), 1),
            "outbox_write_cost_us": round(med(self.write_with_us) - med(self.write_without_us), 1),
            "publish_many_100_per_event_us": round(med(self.write_many_per_event_us), 1),
            "commit_to_handler_p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
            "commit_to_handler_p99_ms": (
                round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None
            ),
        }


async def run_outbox_bench(
    make_bus: Callable[[], Any],
    database_url: str,
    *,
    adapter: str,
    events: int = 20_000,
    batch: int = 500,
    rounds: int = 3,
    paced: int = 200,
    pace: float = 0.01,
    progress: Callable[[str], None] | None = None,
) -> OutboxFigures:
    """Measure on the database at ``database_url`` with buses from ``make_bus()``.

    ``make_bus`` returns a new, not started bus of the adapter under test (one that
    can subscribe and receive its own events). The tables are created if missing and
    emptied of this benchmark's rows.
    """
    say = progress or (lambda _text: None)
    box = Outbox(open_engine(database_url), batch_size=batch, poll_interval=0.5, owns_engine=True)
    await box.open()
    figures = OutboxFigures(adapter, box.engine.dialect.name, events, batch)
    try:
        async with box.engine.begin() as connection:
            await connection.execute(text(f"DELETE FROM {box.tables.outbox.name}"))
        for round_ in range(1, rounds + 1):
            say(f"round {round_}/{rounds}: publish_many")
            figures.direct_per_s.append(await _direct(make_bus, events, batch))
            say(f"round {round_}/{rounds}: relay")
            figures.relay_per_s.append(await _relay(box, make_bus, events))
            say(f"round {round_}/{rounds}: transaction cost")
            with_, without, many = await _write_cost(box, make_bus)
            figures.write_with_us.append(with_)
            figures.write_without_us.append(without)
            figures.write_many_per_event_us.append(many)
        say("commit → handler latency")
        figures.latency_ms = await _latency(box, database_url, make_bus, paced, pace)
    finally:
        await box.close()
    return figures


async def _direct(make_bus: Callable[[], Any], events: int, batch: int) -> float:
    items = [_event(n) for n in range(events)]
    async with make_bus() as bus:
        await bus.publish_many(items[:batch])  # warm: topics, channels
        started = time.perf_counter()
        for start in range(0, events, batch):
            await bus.publish_many(items[start : start + batch])
        return events / (time.perf_counter() - started)


async def _relay(box: Outbox, make_bus: Callable[[], Any], events: int) -> float:
    items = [_event(n) for n in range(events)]
    async with make_bus() as bus:
        box.attach(bus)
        await bus.publish_many(items[:10])  # warm
        async with box.sessions() as session, session.begin():
            for start in range(0, events, 1000):
                await bus.publish_many(items[start : start + 1000], session=session)
        relay = box.relay(bus)
        started = time.perf_counter()
        await relay.drain(timeout=600)
        return events / (time.perf_counter() - started)


async def _write_cost(box: Outbox, make_bus: Callable[[], Any]) -> tuple[float, float, float]:
    """(µs per transaction with one outbox write, µs without, µs per event of 100)."""
    samples = 200
    with_, without, many = [], [], []
    async with make_bus() as bus:
        box.attach(bus)
        probe = text("SELECT 1")
        for n in range(samples):
            event = _event(n)
            started = time.perf_counter()
            async with box.sessions() as session, session.begin():
                await session.execute(probe)  # stands for the use case's own statement
            without.append(time.perf_counter() - started)
            started = time.perf_counter()
            async with box.sessions() as session, session.begin():
                await session.execute(probe)
                await bus.publish(event, session=session)
            with_.append(time.perf_counter() - started)
        hundred = [_event(n) for n in range(100)]
        for _ in range(10):
            started = time.perf_counter()
            async with box.sessions() as session, session.begin():
                await bus.publish_many(hundred, session=session)
            many.append((time.perf_counter() - started) / 100)
        async with box.engine.begin() as connection:
            await connection.execute(text(f"DELETE FROM {box.tables.outbox.name}"))
    med = statistics.median
    return med(with_) * 1e6, med(without) * 1e6, med(many) * 1e6


async def _latency(
    box: Outbox, database_url: str, make_bus: Callable[[], Any], paced: int, pace: float
) -> list[float]:
    """Commit → handler, with the writer on an engine of its own (NOTIFY is the wake-up)."""
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    done = asyncio.Event()
    # Ids of this run only: a broker's consumer may first read the events the
    # throughput rounds left on the topic, which must count neither as arrivals nor
    # towards the end (they made the p99 the time to read through that backlog).
    run = uuid.uuid4().hex[:8]

    probed = asyncio.Event()

    async def handler(event: OutboxBenchEvent) -> None:
        if event.order_id == f"{run}-probe":
            probed.set()
        elif event.order_id.startswith(run):
            arrived[event.order_id] = time.perf_counter()
            if len(arrived) >= paced:
                done.set()

    writer = Outbox(open_engine(database_url), owns_engine=True)
    consumer = make_bus()
    consumer.subscribe(OutboxBenchEvent, handler, name=f"bench-outbox-{uuid.uuid4().hex[:8]}")
    in_process = consumer.adapter_name == "memory"  # memory delivers only in its own bus
    try:
        async with consumer, make_bus() as other, make_bus() as writer_bus:
            sender = consumer if in_process else other
            if isinstance(consumer, Readiness):
                await consumer.wait_ready()
            writer.attach(writer_bus)
            relay = box.relay(sender)
            await relay.start()
            try:
                # Untimed: a probe through the outbox, so the consumer has read past
                # whatever the throughput rounds left on the topic before timing starts.
                async with writer.sessions() as session, session.begin():
                    probe = _event(-1).model_copy(update={"order_id": f"{run}-probe"})
                    await writer_bus.publish(probe, session=session)
                async with asyncio.timeout(120):
                    await probed.wait()
                for n in range(paced):
                    event = _event(n).model_copy(update={"order_id": f"{run}-{n:08d}"})
                    async with writer.sessions() as session, session.begin():
                        await writer_bus.publish(event, session=session)
                    committed[event.order_id] = time.perf_counter()
                    await asyncio.sleep(pace)
                async with asyncio.timeout(120):
                    await done.wait()
            finally:
                await relay.stop()
    finally:
        await writer.close()
    return [max(0.0, (arrived[k] - committed[k]) * 1000) for k in committed if k in arrived]
