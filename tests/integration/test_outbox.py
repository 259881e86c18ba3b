"""The transactional outbox and the inbox on real databases (SQLite and PostgreSQL).

The relay's sender here is mostly the memory adapter: it delivers in the order it is
given, so what the relay sends (and in which order) is exactly what the handlers see.
The broker round trips are in ``test_outbox_brokers.py`` and the process-level faults
(SIGKILL, a broker outage) in ``test_outbox_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from hexbus import DomainEvent, current_context, idempotent
from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.container import Container
from hexbus.infrastructure.memory import InMemoryEventBus, MemoryConfig
from hexbus.infrastructure.outbox import Outbox, OutboxRelay, open_engine, outbox_tables
from hexbus.infrastructure.outbox.store import Claim
from hexbus.testing import eventually
from hexbus.testing.telemetry import TelemetryCapture

pytestmark = pytest.mark.integration


class Placed(DomainEvent, event_type="outbox.test.placed"):
    order: str
    seq: int = 0


class Noted(DomainEvent, event_type="outbox.test.noted"):
    text: str


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[Outbox]:
    box = Outbox(open_engine(database_url), batch_size=100, poll_interval=0.2, owns_engine=True)
    await box.open()
    try:
        yield box
    finally:
        await box.close()


@pytest.fixture
async def bus() -> AsyncIterator[InMemoryEventBus]:
    async with InMemoryEventBus() as running:
        yield running


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())


# -- writing: commit, rollback, one INSERT -------------------------------------------------
async def test_rollback_sends_nothing_commit_sends_once(
    outbox: Outbox, bus: InMemoryEventBus
) -> None:
    seen: list[str] = []

    async def handler(event: Placed) -> None:
        seen.append(event.order)

    bus.subscribe(Placed, handler)
    outbox.attach(bus)
    with pytest.raises(RuntimeError):
        async with outbox.sessions() as session, session.begin():
            await bus.publish(Placed(order="rolled-back"), session=session, key="k")
            raise RuntimeError("the use case failed")
    async with outbox.sessions() as session, session.begin():
        await bus.publish(Placed(order="committed"), session=session, key="k")
        assert seen == []  # nothing is sent before commit, not even in process
    relay = outbox.relay(bus)
    await relay.drain(timeout=10)
    await relay.drain(timeout=10)  # a second pass finds nothing more to send
    assert seen == ["committed"]
    assert await count(outbox.engine, outbox.tables.outbox) == 0
    assert relay.stats.sent == 1


async def test_publish_many_writes_in_one_transaction_in_order(
    outbox: Outbox, bus: InMemoryEventBus
) -> None:
    seen: list[int] = []
    bus.subscribe(Placed, lambda e: seen.append(e.seq))
    outbox.attach(bus)
    async with outbox.sessions() as session, session.begin():
        await bus.publish_many([Placed(order="o", seq=i) for i in range(50)], session=session)
        rows = (
            await session.execute(select(outbox.tables.outbox.c.position).order_by("position"))
        ).all()
        assert len(rows) == 50  # visible inside the transaction, not outside yet
    await outbox.relay(bus).drain(timeout=10)
    assert seen == list(range(50))


async def test_the_row_holds_the_encoded_cloudevent(outbox: Outbox, bus: InMemoryEventBus) -> None:
    outbox.attach(bus)
    event = Placed(order="o-1")
    async with outbox.sessions() as session, session.begin():
        await bus.publish(event, session=session, metadata={"tenant": "acme"}, key="o-1")
    async with outbox.engine.connect() as connection:
        row = (await connection.execute(select(outbox.tables.outbox))).one()._mapping
    assert row["event_id"] == str(event.event_id)
    assert row["event_type"] == "outbox.test.placed"
    assert row["key"] == "o-1"
    assert '"tenant":"acme"' in row["attributes"]
    assert '"order":"o-1"' in row["data"]


async def test_a_session_of_another_database_is_refused_clearly(
    outbox: Outbox, bus: InMemoryEventBus, tmp_path: Any
) -> None:
    outbox.attach(bus)
    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    try:
        async with async_sessionmaker(other)() as session:
            with pytest.raises(ConfigurationError, match=r"does not exist.*HEXBUS_OUTBOX_URL"):
                await bus.publish(Placed(order="x"), session=session)
    finally:
        await other.dispose()


# -- order --------------------------------------------------------------------------------
async def test_same_key_leaves_in_commit_order_under_concurrent_writers(
    outbox: Outbox, bus: InMemoryEventBus
) -> None:
    """eventsourcing's non-interleaving test, per key: many writers, a few keys; for each
    key the relay's order is the order the transactions committed in. The commit order is
    taken inside each transaction, after its outbox write (which holds the key until
    commit), from a counter row that transactions of the same key update in turn."""
    keys = ["a", "b", "c"]
    metadata = MetaData()
    commits = Table(
        "commit_order", metadata, Column("key", String(8), primary_key=True),
        Column("n", Integer, nullable=False),
    )
    async with outbox.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.execute(commits.insert(), [{"key": k, "n": 0} for k in keys])
    seen: dict[str, list[int]] = {k: [] for k in keys}
    bus.subscribe(Placed, lambda e: seen[e.order].append(e.seq))
    outbox.attach(bus)
    order: dict[str, list[int]] = {k: [] for k in keys}

    async def writer(index: int) -> None:
        key = keys[index % len(keys)]
        async with outbox.sessions() as session, session.begin():
            await bus.publish(Placed(order=key, seq=index), session=session, key=key)
            await asyncio.sleep(0.001 * (index % 5))  # let other writers interleave
            n = (
                await session.execute(
                    update(commits).where(commits.c.key == key).values(n=commits.c.n + 1)
                    .returning(commits.c.n)
                )
            ).scalar_one()
            order[key].append((n, index))  # type: ignore[arg-type]

    relay = outbox.relay(bus)
    await relay.start()
    try:
        await asyncio.gather(*(writer(i) for i in range(60)))
        await eventually(lambda: sum(map(len, seen.values())) == 60, timeout=20)
    finally:
        await relay.stop()
    for key in keys:
        committed = [index for _, index in sorted(order[key])]  # type: ignore[misc]
        assert seen[key] == committed, f"key {key}: relayed {seen[key]}, committed {committed}"


async def test_a_later_writer_of_a_key_waits_for_the_earlier_transaction(
    postgres_database_url: str, bus: InMemoryEventBus
) -> None:
    """Transactions that insert in one order and would commit in the other: the second
    writer of key k waits (advisory lock) until the first commits, so positions, and the
    relay, follow commit order; a writer of another key does not wait."""
    box = Outbox(open_engine(postgres_database_url), poll_interval=0.2, owns_engine=True)
    await box.open()
    seen: list[str] = []
    bus.subscribe(Placed, lambda e: seen.append(e.order))
    box.attach(bus)
    try:
        first = box.sessions()
        await first.begin()
        await bus.publish(Placed(order="first"), session=first, key="k")
        second_done = asyncio.Event()

        async def second() -> None:
            async with box.sessions() as session, session.begin():
                await bus.publish(Placed(order="second"), session=session, key="k")
            second_done.set()

        task = asyncio.create_task(second())

        async def waiting_on_lock() -> bool:
            async with box.engine.connect() as connection:
                waiting = await connection.execute(
                    text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                         "AND NOT granted")
                )
                return bool(waiting.scalar_one())

        for _ in range(200):  # the second writer is blocked on the key, not finished
            if await waiting_on_lock():
                break
            await asyncio.sleep(0.02)
        assert await waiting_on_lock() and not second_done.is_set()
        async with box.sessions() as other, other.begin():  # another key does not wait
            await bus.publish(Placed(order="other-key"), session=other, key="x")
        await first.commit()
        await first.close()
        await asyncio.wait_for(task, 10)
        await box.relay(bus).drain(timeout=10)
        assert seen.index("first") < seen.index("second")
        assert sorted(seen) == ["first", "other-key", "second"]
    finally:
        await box.close()


# -- two relays, leases --------------------------------------------------------------------
async def test_two_relays_share_a_postgres_outbox_without_loss_keeping_key_order(
    postgres_database_url: str,
) -> None:
    box = Outbox(
        open_engine(postgres_database_url), batch_size=50, poll_interval=0.1, owns_engine=True
    )
    await box.open()
    seen: dict[str, list[int]] = {}
    by_relay: list[int] = [0, 0]
    buses = [InMemoryEventBus(), InMemoryEventBus()]
    for index, sender in enumerate(buses):

        async def handler(event: Placed, index: int = index) -> None:
            seen.setdefault(event.order, []).append(event.seq)
            by_relay[index] += 1
            await asyncio.sleep(0)  # let the other relay run between deliveries

        sender.subscribe(Placed, handler, name=f"h{index}")
        await sender.start()
    box.attach(buses[0])
    keys = [f"key-{n}" for n in range(10)]
    relays = [box.relay(sender, name=f"relay-{n}") for n, sender in enumerate(buses)]
    try:
        for relay in relays:  # both idle, both woken by the commit's NOTIFY
            await relay.start()
        try:
            async with box.sessions() as session, session.begin():
                for key in keys:  # a batch (50) holds half a key: the other relay
                    for seq in range(100):  # takes the next key meanwhile
                        event = Placed(order=key, seq=seq)
                        await buses[0].publish(event, session=session, key=key)
            await eventually(lambda: sum(map(len, seen.values())) >= 1000, timeout=60)
        finally:
            for relay in relays:
                await relay.stop()
        assert await count(box.engine, box.tables.outbox) == 0
        for key in keys:
            assert seen[key] == list(range(100)), f"{key} out of order or lost"
        assert all(by_relay), f"both relays should have sent some: {by_relay}"
    finally:
        for sender in buses:
            await sender.stop()
        await box.close()


@pytest.fixture
async def pg_outbox(postgres_database_url: str) -> AsyncIterator[tuple[Outbox, InMemoryEventBus]]:
    """A PostgreSQL outbox and a running memory bus writing into it."""
    box = Outbox(open_engine(postgres_database_url), owns_engine=True)
    await box.open()
    try:
        async with InMemoryEventBus() as sender:
            box.attach(sender)
            yield box, sender
    finally:
        await box.close()


async def test_a_relay_whose_lease_expired_cannot_delete_rows_another_relay_holds(
    pg_outbox: tuple[Outbox, InMemoryEventBus],
) -> None:
    box, sender = pg_outbox
    async with box.sessions() as session, session.begin():
        await sender.publish(Placed(order="o"), session=session)
    store = box.store
    late = await store.claim(10, lease=0.3)
    assert len(late.rows) == 1
    assert (await store.claim(10, lease=60)).rows == []  # held: nobody else gets it
    # The late relay stalls past its lease: PostgreSQL ends its session, which frees the
    # row for the next claim.
    taken: list[Claim] = []

    async def claimed_again() -> bool:
        claim = await store.claim(10, lease=60)
        taken.extend([claim] if claim.rows else [])
        return bool(taken)

    await eventually(claimed_again, timeout=10)
    [current] = taken
    assert [r.position for r in current.rows] == [late.rows[0].position]
    assert await store.complete(late) == 0  # its hold is gone: deletes nothing
    assert await count(box.engine, box.tables.outbox) == 1
    assert await store.complete(current) == 1
    assert await count(box.engine, box.tables.outbox) == 0


async def test_rows_of_a_key_held_by_one_claim_wait_while_other_rows_are_claimed(
    pg_outbox: tuple[Outbox, InMemoryEventBus],
) -> None:
    box, sender = pg_outbox
    async with box.sessions() as session, session.begin():
        for order, key in (("k1", "k"), ("k2", "k"), ("u", None), ("j1", "j")):
            await sender.publish(Placed(order=order), session=session, key=key)
    store = box.store


    def orders(claim: Claim) -> list[str]:
        return [json.loads(row.data)["order"] for row in claim.rows]

    first = await store.claim(1, lease=60)
    assert orders(first) == ["k1"]
    second = await store.claim(10, lease=60)  # k2 waits behind k1's holder
    assert orders(second) == ["u", "j1"]
    await store.release(first)
    third = await store.claim(10, lease=60)
    assert orders(third) == ["k1", "k2"]
    assert await store.complete(second) == 2
    assert await store.complete(third) == 2
    assert await count(box.engine, box.tables.outbox) == 0


async def test_a_key_with_an_earlier_row_outside_the_claim_is_held_back(
    pg_outbox: tuple[Outbox, InMemoryEventBus],
) -> None:
    """The claim's per-key check: an earlier row of a key that the claim could not take
    (here locked by another transaction that holds no key lock, which the advisory locks
    alone would not notice) holds back the key's later rows; other keys go out."""
    box, sender = pg_outbox
    async with box.sessions() as session, session.begin():
        for order, key in (("k1", "k"), ("k2", "k"), ("u", None)):
            await sender.publish(Placed(order=order), session=session, key=key)
    table = box.tables.outbox
    async with box.engine.connect() as other, other.begin():
        await other.execute(
            select(table.c.position)
            .where(table.c.key == "k")
            .order_by(table.c.position)
            .limit(1)
            .with_for_update()
        )
        claim = await box.store.claim(10, lease=60)
        assert [json.loads(row.data)["order"] for row in claim.rows] == ["u"]
        assert await box.store.complete(claim) == 1
    after = await box.store.claim(10, lease=60)  # the outside lock is gone
    assert [json.loads(row.data)["order"] for row in after.rows] == ["k1", "k2"]
    assert await box.store.complete(after) == 2


async def test_sqlite_allows_one_relay_at_a_time(sqlite_url: str) -> None:
    box = Outbox(open_engine(sqlite_url), owns_engine=True)
    await box.open()
    async with InMemoryEventBus() as sender:
        first = box.relay(sender, name="first")
        await first.start()
        try:
            with pytest.raises(ConfigurationError, match=r"\(first\).*one relay at a time"):
                await box.relay(sender, name="second").start()
        finally:
            await first.stop()
        second = box.relay(sender, name="second")  # free again once the first stopped
        await second.start()
        await second.stop()
    await box.close()


# -- bad input ----------------------------------------------------------------------------
async def test_a_row_that_no_longer_decodes_is_dead_lettered_and_the_relay_goes_on(
    outbox: Outbox, bus: InMemoryEventBus, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    bus.subscribe(Placed, lambda e: seen.append(e.order))
    outbox.attach(bus)
    async with outbox.sessions() as session, session.begin():
        for name in ("before", "broken", "after"):
            await bus.publish(Placed(order=name), session=session)
    table = outbox.tables.outbox
    async with outbox.engine.begin() as connection:
        await connection.execute(
            update(table).where(table.c.data.contains('"broken"')).values(attributes="{not json")
        )
    relay = outbox.relay(bus)
    await relay.start()
    try:
        await eventually(lambda: seen == ["before", "after"], timeout=10)
        await eventually(lambda: relay.stats.dead_lettered == 1, timeout=5)
    finally:
        await relay.stop()
    [dead] = await outbox.store.dead_letters()
    assert dead["reason"] == "malformed"
    assert "not JSON" in dead["error"]
    assert dead["attributes"] == "{not json"  # the original row is kept as it was
    assert await count(outbox.engine, table) == 0
    stats = await relay.stats_now()
    assert (stats.pending, stats.dead_letters) == (0, 1)
    assert "moved to the outbox dead letters" in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://hexbus:s3cret-pw@127.0.0.1:1/nowhere",
        "postgresql://hexbus:s3cret-pw@127.0.0.1/db",
        "mysql+aiomysql://hexbus:s3cret-pw@127.0.0.1/db",
    ],
)
async def test_a_bad_database_url_fails_at_start_naming_the_variable_without_the_password(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    container = Container()
    container.config.from_dict({"adapter": "memory", "outbox_url": url})
    with pytest.raises(ConfigurationError) as failure:
        await container.init_resources()
    assert "HEXBUS_OUTBOX_URL" in str(failure.value)
    assert "s3cret-pw" not in str(failure.value)
    assert "s3cret-pw" not in caplog.text


async def test_a_wrong_password_is_reported_masked(postgres_database_url: str) -> None:
    parts = urlsplit(postgres_database_url)
    if parts.password is None:  # a trust-auth dev server accepts any password
        pytest.skip("the PostgreSQL under test does not check passwords")
    wrong = postgres_database_url.replace(f":{parts.password}@", ":Wr0ng-pass-42@", 1)
    container = Container()
    container.config.from_dict({"adapter": "memory", "outbox_url": wrong})
    with pytest.raises(ConfigurationError) as failure:
        await container.init_resources()
    assert "HEXBUS_OUTBOX_URL" in str(failure.value)
    assert "Wr0ng-pass-42" not in str(failure.value)
    assert "Wr0ng-pass-42" not in repr(container.settings())


# -- the inbox ----------------------------------------------------------------------------
async def test_a_duplicate_delivery_is_acknowledged_without_running_the_handler(
    outbox: Outbox,
) -> None:
    side_effects = Table(
        "side_effects", MetaData(), Column("event_id", String(64), primary_key=True)
    )
    async with outbox.engine.begin() as connection:
        await connection.run_sync(side_effects.metadata.create_all)
    runs: list[str] = []

    @idempotent
    async def handler(event: Placed) -> None:
        session = current_context().session
        runs.append(event.order)
        await session.execute(side_effects.insert().values(event_id=str(event.event_id)))

    async with InMemoryEventBus() as bus:
        bus.subscribe(Placed, handler)
        outbox.attach(bus)
        async with outbox.sessions() as session, session.begin():
            await bus.publish(Placed(order="once"), session=session)
        claim = await outbox.store.claim(10, 60)
        [row] = claim.rows
        await outbox.store.release(claim)
        encoded = row.encoded()
        await bus.send_encoded([encoded])
        await bus.send_encoded([encoded])  # redelivered: the broker's at-least-once
    assert runs == ["once"]
    assert outbox.inbox.stats.duplicates == 1
    assert await count(outbox.engine, side_effects) == 1
    name = f"{handler.__module__}.{handler.__qualname__}"
    assert await outbox.inbox.seen(name, "", row.event_id)


async def test_a_failed_handler_rolls_back_its_writes_and_its_inbox_row(outbox: Outbox) -> None:
    side_effects = Table(
        "side_effects2", MetaData(), Column("n", Integer, primary_key=True, autoincrement=True)
    )
    async with outbox.engine.begin() as connection:
        await connection.run_sync(side_effects.metadata.create_all)
    attempts: list[int] = []

    async def handler(event: Noted) -> None:
        attempts.append(current_context().attempt)
        await current_context().session.execute(side_effects.insert().values())
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails after writing")

    config = MemoryConfig(max_attempts=3, retry_delays=(0.01,))
    async with InMemoryEventBus(config) as bus:
        bus.subscribe(Noted, handler, name="noted", idempotent=True)
        outbox.attach(bus)
        await bus.publish(Noted(text="t"))
        await eventually(lambda: len(attempts) == 2, timeout=5)
    assert await count(outbox.engine, side_effects) == 1  # the failed attempt left nothing
    assert await count(outbox.engine, outbox.tables.inbox) == 1


async def test_inbox_rows_past_retention_are_cleaned_up(outbox: Outbox) -> None:
    inbox = outbox.tables.inbox
    old, fresh = time.time() - 8 * 86400, time.time() - 3600
    async with outbox.engine.begin() as connection:
        await connection.execute(
            inbox.insert(),
            [
                {"subscription": "s", "source": "", "event_id": "old", "received_at": old},
                {"subscription": "s", "source": "", "event_id": "new", "received_at": fresh},
            ],
        )
    assert await outbox.inbox.cleanup() == 1
    assert await outbox.inbox.seen("s", "", "new")
    assert not await outbox.inbox.seen("s", "", "old")


async def test_an_idempotent_subscription_without_an_inbox_refuses_to_start() -> None:
    bus = InMemoryEventBus()
    bus.subscribe(Noted, lambda e: None, name="needs-inbox", idempotent=True)
    with pytest.raises(ConfigurationError, match=r"needs-inbox.*HEXBUS_OUTBOX_URL"):
        await bus.start()


# -- waking, stats, the container --------------------------------------------------------
async def test_notify_wakes_a_relay_in_another_process_long_before_its_poll(
    postgres_database_url: str,
) -> None:
    relay_box = Outbox(open_engine(postgres_database_url), poll_interval=60, owns_engine=True)
    writer_box = Outbox(open_engine(postgres_database_url), owns_engine=True)  # "elsewhere"
    await relay_box.open()
    seen: list[str] = []
    async with InMemoryEventBus() as relay_bus, InMemoryEventBus() as writer_bus:
        relay_bus.subscribe(Noted, lambda e: seen.append(e.text))
        writer_box.attach(writer_bus)
        relay = relay_box.relay(relay_bus)
        await relay.start()
        try:
            await relay.drain(timeout=5)  # idle now, waiting up to 60 s
            started = time.monotonic()
            async with writer_box.sessions() as session, session.begin():
                await writer_bus.publish(Noted(text="wake up"), session=session)
            await eventually(lambda: seen == ["wake up"], timeout=10)
            assert time.monotonic() - started < 30  # not the 60 s poll
        finally:
            await relay.stop()
    await writer_box.close()
    await relay_box.close()


async def test_stats_show_pending_rows_their_age_and_what_the_relay_did(
    outbox: Outbox, bus: InMemoryEventBus
) -> None:
    outbox.attach(bus)
    async with outbox.sessions() as session, session.begin():
        await bus.publish_many([Noted(text=str(i)) for i in range(7)], session=session)
    relay = outbox.relay(bus)
    before = await relay.stats_now()
    assert before.pending == 7 and before.oldest_pending_age >= 0
    await relay.drain(timeout=10)
    after = await relay.stats_now()
    assert (after.pending, after.oldest_pending_age) == (0, 0.0)
    assert (after.relay.sent, after.relay.batches, after.relay.last_batch_size) == (7, 1, 7)


async def test_the_container_runs_the_relay_with_the_bus(sqlite_url: str) -> None:
    container = Container()
    container.config.from_dict(
        {"adapter": "memory", "outbox_url": sqlite_url, "outbox_poll_interval": 0.1}
    )
    seen: list[str] = []
    bus = container.event_bus()
    bus.subscribe(Noted, lambda e: seen.append(e.text), name="container-relay")
    await container.init_resources()
    try:
        box = container.outbox()
        assert box is not None
        async with box.sessions() as session, session.begin():
            await bus.publish(Noted(text="via the container"), session=session)
        await eventually(lambda: seen == ["via the container"], timeout=10)
    finally:
        await container.shutdown_resources()


async def test_tables_live_on_the_applications_metadata(sqlite_url: str) -> None:
    metadata = MetaData()
    Table("orders", metadata, Column("id", Integer, primary_key=True))
    tables = outbox_tables(metadata)
    assert {"orders", "hexbus_outbox", "hexbus_inbox"} <= set(metadata.tables)
    assert outbox_tables(metadata) == tables  # defined once
    engine = open_engine(sqlite_url)
    box = Outbox(engine, metadata=metadata, owns_engine=True)
    assert "CREATE TABLE hexbus_outbox" in box.ddl()
    await box.close()


def test_relay_type_is_public() -> None:
    assert OutboxRelay.__module__ == "hexbus.infrastructure.outbox.relay"


async def test_the_relay_reports_pending_rows_and_lag_as_gauges(outbox: Outbox) -> None:
    class Down:
        """A transport that is down: nothing leaves, the backlog grows."""

        async def send_encoded(self, items: Any) -> None:
            raise ConnectionError("broker down")

    capture = TelemetryCapture()
    async with InMemoryEventBus() as bus:
        outbox.attach(bus)
        async with outbox.sessions() as session, session.begin():
            await bus.publish_many([Noted(text=str(i)) for i in range(4)], session=session)
        relay = OutboxRelay(outbox.store, Down(), poll_interval=0.05)
        relay.stats_interval = 0.0
        relay.register_metrics(meter_provider=capture.meter_provider)
        await relay.start()
        try:
            await eventually(lambda: relay.stats.send_failures >= 1, timeout=10)

            def gauges() -> dict[str, float]:
                return {name: points[-1].value for name, points in capture.metrics().items()}

            def backlog_reported() -> bool:
                values = gauges()
                assert values["hexbus.outbox.pending"] == 4
                assert values["hexbus.outbox.relay.lag"] > 0
                assert values["hexbus.outbox.dead_letters"] == 0
                return True

            await eventually(backlog_reported, timeout=10, message=lambda: str(gauges()))
        finally:
            await relay.stop()
    capture.close()


async def test_a_handler_publishing_through_its_inbox_session_is_atomic_with_it(
    outbox: Outbox,
) -> None:
    """The chain that makes "exactly once in effect" compose: an idempotent handler that
    publishes a follow-up with its own session writes it into the same transaction as
    its inbox row, so a failed attempt leaves neither, and a retry writes both once."""
    attempts: list[int] = []

    async def handler(event: Placed) -> None:
        context = current_context()
        attempts.append(context.attempt)
        await bus.publish(Noted(text=f"for {event.order}"), session=context.session)
        if context.attempt == 1:
            raise RuntimeError("fails after publishing")

    config = MemoryConfig(max_attempts=3, retry_delays=(0.01,))
    async with InMemoryEventBus(config) as bus:
        bus.subscribe(Placed, handler, name="follow-up", idempotent=True)
        outbox.attach(bus)
        await bus.publish(Placed(order="o-7"))
        await eventually(lambda: attempts == [1, 2], timeout=5)
        await eventually(lambda: outbox.inbox.stats.handled == 1, timeout=5)
    async with outbox.engine.connect() as connection:
        rows = (await connection.execute(select(outbox.tables.outbox.c.data))).all()
    assert [row[0] for row in rows] == ['{"text":"for o-7"}']
