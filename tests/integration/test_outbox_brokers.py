"""The outbox and the inbox over the real brokers, and the ``hexbus relay`` / ``outbox``
commands.

One service writes events into its outbox in a database transaction; the relay sends
them through RabbitMQ or Kafka; another bus instance consumes them with an idempotent
handler whose side effect is a row in the same database. Exactly once in effect means
one side-effect row per committed event, none for a rolled-back one, even when the
broker delivers a copy twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bus_makers import KafkaBusMaker, RabbitBusMaker
from sqlalchemy import Column, MetaData, String, Table, func, select
from typer.testing import CliRunner

from hexbus import DomainEvent, current_context
from hexbus.cli import app
from hexbus.infrastructure.memory import InMemoryEventBus
from hexbus.infrastructure.outbox import Outbox, open_engine
from hexbus.testing import eventually

pytestmark = pytest.mark.integration

runner = CliRunner()


class Shipped(DomainEvent, event_type="outbox.brokers.shipped"):
    parcel: str


_effects_metadata = MetaData()
effects = Table(
    "parcel_effects", _effects_metadata, Column("event_id", String(64), primary_key=True),
    Column("parcel", String(64), nullable=False),
)


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[Outbox]:
    box = Outbox(open_engine(database_url), poll_interval=0.2, owns_engine=True)
    await box.open()
    async with box.engine.begin() as connection:
        await connection.run_sync(_effects_metadata.create_all)
    try:
        yield box
    finally:
        await box.close()


async def effect_rows(box: Outbox) -> list[str]:
    async with box.engine.connect() as connection:
        result = await connection.execute(select(effects.c.parcel).order_by(effects.c.parcel))
        return [row[0] for row in result]


async def record(event: Shipped) -> None:
    """The idempotent handler: its write commits with the inbox row, or not at all."""
    session = current_context().session
    row = {"event_id": str(event.event_id), "parcel": event.parcel}
    await session.execute(effects.insert().values(**row))


Maker = Callable[..., Any]


@pytest.fixture(params=["rabbitmq", "kafka"])
def make_bus(
    request: pytest.FixtureRequest,
) -> Maker:
    fixture = "rabbit_bus_maker" if request.param == "rabbitmq" else "kafka_bus_maker"
    maker: RabbitBusMaker | KafkaBusMaker = request.getfixturevalue(fixture)
    return maker


async def test_committed_events_arrive_once_in_effect_rolled_back_ones_never(
    outbox: Outbox, make_bus: Maker
) -> None:
    consumer = make_bus()
    consumer.subscribe(Shipped, record, name="parcels", idempotent=True)
    outbox.attach(consumer)
    publisher = make_bus()
    outbox.attach(publisher)
    async with consumer, publisher:
        await consumer.wait_ready()
        relay = outbox.relay(publisher)
        await relay.start()
        try:
            with pytest.raises(RuntimeError):
                async with outbox.sessions() as session, session.begin():
                    doomed = Shipped(parcel="p0-rolled-back")
                    await publisher.publish(doomed, session=session, key="k")
                    raise RuntimeError("the use case failed after publishing")
            async with outbox.sessions() as session, session.begin():
                for n in (1, 2, 3):
                    await publisher.publish(Shipped(parcel=f"p{n}"), session=session, key="k")
            async with outbox.sessions() as session, session.begin():  # the last, same key:
                await publisher.publish(Shipped(parcel="p4"), session=session, key="k")
            await eventually(lambda: outbox.inbox.stats.handled >= 4, timeout=30)
        finally:
            await relay.stop()
        assert await effect_rows(outbox) == ["p1", "p2", "p3", "p4"]
        # The broker delivers a copy again (at-least-once): the inbox absorbs it.
        async with outbox.sessions() as session, session.begin():
            await publisher.publish(Shipped(parcel="p5"), session=session, key="k")
        claim = await outbox.store.claim(10, 60)
        copies = [row.encoded() for row in claim.rows]
        await publisher.send_encoded(copies)
        await publisher.send_encoded(copies)
        await outbox.store.complete(claim)
        await eventually(lambda: outbox.inbox.stats.duplicates >= 1, timeout=30)
    assert await effect_rows(outbox) == ["p1", "p2", "p3", "p4", "p5"]
    assert outbox.inbox.stats.handled == 5


def _env(maker: Any, url: str) -> dict[str, str]:
    env = {"HEXBUS_OUTBOX_URL": url, "HEXBUS_SERVICE_NAME": maker.service}
    if isinstance(maker, RabbitBusMaker):
        env |= {
            "HEXBUS_ADAPTER": "rabbitmq",
            "HEXBUS_RABBITMQ_URL": maker.url,
            "HEXBUS_RABBITMQ_EXCHANGE": maker.exchange,
        }
    else:
        config = maker.config()
        env |= {
            "HEXBUS_ADAPTER": "kafka",
            "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": config.bootstrap_servers,
            "HEXBUS_KAFKA_TOPIC_PREFIX": config.topic_prefix,
        }
    return env


async def test_hexbus_relay_once_sends_the_outbox_through_the_configured_broker(
    sqlite_url: str, make_bus: Maker
) -> None:
    box = Outbox(open_engine(sqlite_url), owns_engine=True)
    await box.open()
    seen: list[str] = []
    consumer = make_bus()
    consumer.subscribe(Shipped, lambda e: seen.append(e.parcel), name="cli-parcels")
    writer = make_bus()
    box.attach(writer)
    try:
        async with consumer, writer:
            await consumer.wait_ready()
            async with box.sessions() as session, session.begin():
                events = [Shipped(parcel=f"c{n}") for n in range(5)]
                await writer.publish_many(events, session=session)
            env = _env(make_bus, sqlite_url)
            args = ["relay", "--once", "--timeout", "60"]
            result = await asyncio.to_thread(runner.invoke, app, args, env=env)
            assert result.exit_code == 0, result.output
            assert "relayed 5 event(s)" in result.output
            await eventually(lambda: sorted(seen) == [f"c{n}" for n in range(5)], timeout=30)
            args = ["outbox", "stats", "--json"]
            stats = await asyncio.to_thread(runner.invoke, app, args, env=env)
            assert stats.exit_code == 0, stats.output
            assert json.loads(stats.output)["pending"] == 0
    finally:
        await box.close()


def test_outbox_ddl_for_both_dialects() -> None:
    for dialect, marker in (("postgresql", "BIGSERIAL"), ("sqlite", "INTEGER NOT NULL")):
        result = runner.invoke(app, ["outbox", "ddl", "--dialect", dialect], env={})
        assert result.exit_code == 0, result.output
        assert "CREATE TABLE hexbus_outbox (" in result.output
        assert "CREATE TABLE hexbus_inbox (" in result.output
        assert marker in result.output


def test_the_commands_say_when_no_outbox_is_configured() -> None:
    result = runner.invoke(app, ["relay", "--once"], env={"HEXBUS_OUTBOX_URL": ""})
    assert result.exit_code == 2
    assert "HEXBUS_OUTBOX_URL" in result.output


def test_a_bad_url_fails_without_its_password() -> None:
    env = {"HEXBUS_OUTBOX_URL": "postgresql+asyncpg://u:Pa55-w0rd@127.0.0.1:1/db"}
    result = runner.invoke(app, ["outbox", "stats"], env=env)
    assert result.exit_code == 1
    assert "HEXBUS_OUTBOX_URL" in result.output
    assert "Pa55-w0rd" not in result.output


async def test_outbox_dead_letters_lists_unreadable_rows(sqlite_url: str) -> None:
    box = Outbox(open_engine(sqlite_url), owns_engine=True)
    await box.open()
    try:
        table = box.tables.outbox
        async with box.engine.begin() as connection:
            await connection.execute(
                table.insert().values(
                    event_id="bad-1", event_type="x", attributes="[]", data="{}", created_at=0.0
                )
            )
        async with InMemoryEventBus() as sender:
            await box.relay(sender).drain(timeout=10)
        async with box.engine.connect() as connection:
            left = (await connection.execute(select(func.count()).select_from(table))).scalar_one()
        assert left == 0
    finally:
        await box.close()
    args = ["outbox", "dead-letters", "--json"]
    env = {"HEXBUS_OUTBOX_URL": sqlite_url}
    result = await asyncio.to_thread(runner.invoke, app, args, env=env)
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert (row["event_id"], row["reason"]) == ("bad-1", "malformed")


async def test_bench_outbox_measures_the_relay_against_publish_many(sqlite_url: str) -> None:
    args = ["bench", "--adapter", "memory", "--outbox", sqlite_url, "--events", "300"]
    result = await asyncio.to_thread(
        runner.invoke, app, [*args, "--repeats", "1", "--json"], env={}
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert (figures["adapter"], figures["database"], figures["events"]) == ("memory", "sqlite", 300)
    assert figures["relay_events_per_s"] > 0 and figures["publish_many_events_per_s"] > 0
    assert figures["commit_to_handler_p50_ms"] is not None


def test_bench_outbox_masks_the_database_password() -> None:
    url = "postgresql+asyncpg://u:Secr3t-Pw@127.0.0.1:1/x"
    result = runner.invoke(app, ["bench", "--outbox", url, "--events", "10"], env={})
    assert result.exit_code == 1
    assert "HEXBUS_OUTBOX_URL" in result.output
    assert "Secr3t-Pw" not in result.output
