"""The outbox under process-level faults: SIGKILL after commit, a relay killed mid-batch,
a broker outage under a running relay, and a graceful stop with a batch in flight.

Why processes: "the service died after its commit" only means something when the OS
takes the process away (SIGKILL: no ``finally``, no relay round, no clean stop). The
services here are ``outbox_service.py`` children built like a real service (a
``Container`` from ``HEXBUS_*`` settings); the test watches the database they share:
the outbox rows, the inbox, and ``side_effects``, the table the idempotent handler
writes one row per event into *in the inbox's transaction*. ``side_effects`` has no
unique constraint, so a handler run twice for one event shows as two rows: "exactly
once in effect" is ``count == distinct == N``.

Two checks recur:

- *deleted ⇒ sent*: a row the relay deleted was confirmed by the broker, so with no
  relay running at all, every event whose row is gone still reaches the consumer;
- *none lost, none doubled*: after a new relay ran, every written event has exactly one
  side-effect row and one inbox row, and the outbox is empty.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import aio_pika
import pytest
from bus_makers import delete_topics
from outbox_service import SUBSCRIPTION, OutboxFaultEvent, side_effects, side_effects_metadata
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from hexbus.infrastructure.memory import InMemoryEventBus
from hexbus.infrastructure.outbox import Outbox, create_tables, open_engine, outbox_tables
from hexbus.infrastructure.rabbitmq.topology import subscription_queues, work_queue_name
from hexbus.testing import eventually
from hexbus.testing.faults import broker_outage, require_restartable_broker
from hexbus.testing.processes import ChildProcess

pytestmark = pytest.mark.integration

SERVICE = Path(__file__).with_name("outbox_service.py")
RETRY_DELAYS = (0.1, 0.5)
#: How long a service child gets to start its bus (and be ready).
READY_TIMEOUT = 90.0
#: Deadline for a delivery that should happen (generous: 2 shared cores, 4 helpers).
DELIVERY_TIMEOUT = 120.0


# -- service processes -------------------------------------------------------------------
class Service(ChildProcess):
    """One ``outbox_service.py`` child; its files are ``<directory>/<label>.*``."""

    def __init__(
        self, directory: Path, label: str, mode: str, env: dict[str, str], args: Sequence[str]
    ) -> None:
        self.state = directory / label
        self.label = label
        self.mode = mode
        super().__init__(
            [sys.executable, str(SERVICE), mode, "--state", str(self.state), *args],
            name=f"{label} ({mode})",
            env=env,
            log=self.file("log"),
            ready_file=self.file("ready"),
            cwd=directory,
            ready_timeout=READY_TIMEOUT,
        )

    def file(self, suffix: str) -> Path:
        return self.state.with_name(f"{self.label}.{suffix}")

    async def start(self, *, until: str = "ready") -> Self:
        """Start the child; return once it created ``<label>.<until>``."""
        self.ready_file = self.file(until)
        return await super().start()

    def stats(self) -> dict[str, Any]:
        """What the child last wrote to ``<label>.stats`` (``{}`` before the first)."""
        try:
            return dict(json.loads(self.file("stats").read_text()))
        except FileNotFoundError:
            return {}


@dataclass
class World:
    """One test's broker namespace, database and service processes."""

    adapter: str
    port: int
    database_url: str
    env: dict[str, str]
    directory: Path
    engine: AsyncEngine
    service_name: str
    services: list[Service] = field(default_factory=list)
    written: list[str] = field(default_factory=list)

    def service(self, label: str, mode: str, *args: str, **env: str) -> Service:
        merged = {**self.env, **{f"HEXBUS_{k.upper()}": v for k, v in env.items()}}
        process = Service(self.directory, label, mode, merged, args)
        self.services.append(process)
        return process

    async def consumer(self, label: str = "consumer") -> Service:
        return await self.service(label, "consume").start()

    def close(self) -> None:
        for process in self.services:
            process.kill()

    # -- the shared database, as the test sees it ---------------------------------------
    async def outbox(self) -> tuple[int, int]:
        """(rows in the outbox, claims open).

        SQLite: the rows marked claimed. PostgreSQL: relay transactions holding claimed
        rows; a claim writes nothing to its rows there, it holds their locks, seen here
        in ``pg_stat_activity`` (reading the locks themselves would take them)."""
        table = outbox_tables().outbox
        async with self.engine.connect() as connection:
            rows = (await connection.execute(select(func.count()).select_from(table))).one()[0]
            if self.engine.dialect.name == "sqlite":  # SQLite marks the rows it claims
                claimed = select(func.count(table.c.claimed_by)).select_from(table)
                return int(rows), int((await connection.execute(claimed)).one()[0])
            claims = (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                        " current_database() AND pid <> pg_backend_pid() AND xact_start"
                        " IS NOT NULL AND query LIKE '%FOR UPDATE OF o SKIP LOCKED%'"
                    )
                )
            ).one()[0]
        return int(rows), int(claims)

    async def outbox_ids(self) -> set[str]:
        table = outbox_tables().outbox
        async with self.engine.connect() as connection:
            return set((await connection.execute(select(table.c.event_id))).scalars())

    async def effects(self) -> tuple[int, set[str]]:
        """(side-effect rows, the distinct event ids among them)."""
        async with self.engine.connect() as connection:
            ids = list((await connection.execute(select(side_effects.c.event_id))).scalars())
        return len(ids), set(ids)

    async def inbox(self) -> int:
        table = outbox_tables().inbox
        async with self.engine.connect() as connection:
            return int(
                (
                    await connection.execute(
                        select(func.count())
                        .select_from(table)
                        .where(table.c.subscription == SUBSCRIPTION)
                    )
                ).scalar_one()
            )

    async def write(self, count: int, *, chunk: int = 2500) -> list[str]:
        """Commit ``count`` events into the outbox from this process (``publish_many``
        with a session, through a memory bus: no broker needed, so this works during an
        outage too); their ids, also added to ``written``."""
        outbox = Outbox(self.engine, service_name=self.service_name, create=False)
        bus = InMemoryEventBus()
        outbox.attach(bus)
        first = len(self.written)
        events = [OutboxFaultEvent(seq=first + n) for n in range(count)]
        async with bus:
            for start in range(0, count, chunk):
                async with outbox.sessions() as session, session.begin():
                    await bus.publish_many(events[start : start + chunk], session=session)
        ids = [str(event.event_id) for event in events]
        self.written.extend(ids)
        return ids

    # -- the two checks -----------------------------------------------------------------
    async def wait_deleted_rows_delivered(self) -> int:
        """With no relay running: every written event whose outbox row is gone reaches
        the handler (a row is deleted only after the broker confirmed it). How many."""
        deleted = set(self.written) - await self.outbox_ids()

        async def delivered() -> bool:
            return deleted <= (await self.effects())[1]

        await eventually(
            delivered,
            timeout=DELIVERY_TIMEOUT,
            interval=0.2,
            message=lambda: f"{len(deleted)} events whose outbox rows were deleted delivered",
        )
        return len(deleted)

    async def wait_all_delivered_once(self, *, timeout: float = DELIVERY_TIMEOUT) -> None:
        """Every written event handled exactly once in effect, the outbox empty."""
        expected = set(self.written)
        state: dict[str, Any] = {}

        async def done() -> bool:
            rows, ids = await self.effects()
            state.update(rows=rows, ids=len(ids), outbox=await self.outbox())
            return ids == expected and (await self.outbox())[0] == 0

        await eventually(
            done,
            timeout=timeout,
            interval=0.2,
            message=lambda: f"{len(expected)} events delivered, outbox empty; now {state}",
        )
        rows, ids = await self.effects()
        assert ids == expected
        assert rows == len(expected), f"{rows - len(expected)} side effects ran twice"
        assert await self.inbox() == len(expected)

    async def final_check(self, consumers: Sequence[Service]) -> dict[str, Any]:
        """Stop the consumers cleanly (nothing can be handled after that) and check
        once more that nothing ran twice; the consumers' inbox counters."""
        for consumer in consumers:
            assert consumer.alive(), f"{consumer.label} died:\n{consumer.output()}"
            assert await consumer.stop() == 0, consumer.output()
        rows, ids = await self.effects()
        assert (rows, ids) == (len(self.written), set(self.written))
        return {c.label: c.stats() for c in consumers}


# -- fixtures ------------------------------------------------------------------------------
async def _delete_rabbit_objects(url: str, service: str, exchange: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        for queue in subscription_queues(work_queue_name(service, SUBSCRIPTION), RETRY_DELAYS):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(queue)
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.close()
        channel = await connection.channel()
        await channel.exchange_delete(exchange)


@contextlib.asynccontextmanager
async def world(
    request: pytest.FixtureRequest, adapter: str, database_url: str, unique: str, tmp: Path
) -> AsyncIterator[World]:
    env = {
        "HEXBUS_ADAPTER": adapter,
        "HEXBUS_SERVICE_NAME": unique,
        "HEXBUS_OUTBOX_URL": database_url,
        "HEXBUS_OUTBOX_POLL_INTERVAL": "0.2",
        "HEXBUS_MAX_ATTEMPTS": "10",
        "HEXBUS_RETRY_DELAYS": ",".join(str(d) for d in RETRY_DELAYS),
        "HEXBUS_DRAIN_TIMEOUT": "10",
    }
    if adapter == "rabbitmq":
        url = str(request.getfixturevalue("rabbitmq_url"))
        port = urlsplit(url).port or 5672
        exchange = f"{unique}.events"
        env |= {"HEXBUS_RABBITMQ_URL": url, "HEXBUS_RABBITMQ_EXCHANGE": exchange}
    else:
        servers = str(request.getfixturevalue("kafka_bootstrap_servers"))
        port = int(servers.split(",", maxsplit=1)[0].rsplit(":", 1)[1])
        env |= {
            "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": servers,
            "HEXBUS_KAFKA_TOPIC_PREFIX": f"{unique}.",
        }
    engine = open_engine(database_url)
    await create_tables(engine, outbox_tables())
    async with engine.begin() as connection:
        await connection.run_sync(side_effects_metadata.create_all)
    here = World(adapter, port, database_url, env, tmp, engine, unique)
    try:
        yield here
    finally:
        here.close()
        await engine.dispose()
        if adapter == "rabbitmq":
            await _delete_rabbit_objects(env["HEXBUS_RABBITMQ_URL"], unique, exchange)
        else:
            await delete_topics(env["HEXBUS_KAFKA_BOOTSTRAP_SERVERS"], f"{unique}.")


ADAPTERS = ["rabbitmq", "kafka"]


# -- 1. committed, then SIGKILLed before any relay ran --------------------------------------
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_events_committed_by_a_killed_process_are_delivered_once_after_restart(
    request: pytest.FixtureRequest,
    adapter: str,
    database_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    async with world(request, adapter, database_url, unique_name, tmp_path) as w:
        consumer = await w.consumer()
        writer = w.service("writer", "write", "--count", "5", "--chunk", "5")
        await writer.start(until="written")
        writer.kill()  # committed; its relay never existed (HEXBUS_OUTBOX_RELAY=false)
        assert await w.outbox() == (5, 0)
        w.written = sorted(await w.outbox_ids())
        assert (await w.effects())[0] == 0  # nothing was sent: no relay has run yet

        relay = await w.service("restarted", "serve").start()  # the service, restarted
        await w.wait_all_delivered_once()
        assert await relay.stop() == 0, relay.output()
        await w.final_check([consumer])


# -- 2. a relay SIGKILLed mid-batch, 10,000 events ---------------------------------------
N_EVENTS = 10_000


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_relay_killed_mid_batch_loses_nothing_and_doubles_nothing(
    request: pytest.FixtureRequest,
    adapter: str,
    postgres_database_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    async with world(request, adapter, postgres_database_url, unique_name, tmp_path) as w:
        consumer = await w.consumer()
        # A short lease: the restarted relay re-claims what the killed one held. Batches
        # of 50: at 500 the relay sends the 10,000 events over Kafka in ~0.1 s, less than
        # one round of this test's polling on a loaded machine, and was gone before the kill.
        relay_env = {"outbox_lease": "3", "outbox_batch_size": "50"}
        first = await w.service("relay-1", "relay", **relay_env).start()
        await w.write(N_EVENTS, chunk=N_EVENTS)  # one transaction; the relay wakes on commit
        seen: dict[str, int] = {}

        async def some_sent_some_held() -> bool:
            rows, claimed = await w.outbox()
            seen.update(rows=rows, claimed=claimed)
            return rows < N_EVENTS and claimed > 0

        await eventually(
            some_sent_some_held,
            timeout=DELIVERY_TIMEOUT,
            interval=0.005,
            message=lambda: f"relay-1 sent a batch and holds the next; outbox {seen}",
        )
        first.kill()
        left, held = await w.outbox()
        assert 0 < left < N_EVENTS, f"the relay was not killed mid-stream ({left} rows left)"

        # deleted => sent: with no relay at all, every deleted row's event arrives
        sent = await w.wait_deleted_rows_delivered()
        assert sent == N_EVENTS - left

        second = await w.service("relay-2", "relay", **relay_env).start()
        await w.wait_all_delivered_once()
        assert await second.stop() == 0, second.output()
        stats = await w.final_check([consumer])
        print(
            f"\n{adapter}: relay-1 killed with {left} rows left ({held} claim(s) open), "
            f"relay-1 {first.stats().get('stats')}, relay-2 {second.stats().get('stats')}, "
            f"inbox {stats}"
        )


# -- 3. the broker down for 15 s under a running relay ----------------------------------
OUTAGE = 15.0


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_the_relay_rides_out_a_broker_outage_and_delivers_everything(
    request: pytest.FixtureRequest,
    adapter: str,
    postgres_database_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    async with world(request, adapter, postgres_database_url, unique_name, tmp_path) as w:
        await require_restartable_broker(adapter, w.port)
        consumer = await w.consumer()
        relay = await w.service("relay", "relay", publish_timeout="2").start()
        await eventually(lambda: relay.stats().get("running"), timeout=10)
        before = relay.stats()
        await w.write(100)
        await w.wait_all_delivered_once()  # the relay works before the outage

        await w.write(50)  # just before the outage: sent before it, or caught by it
        async with broker_outage(adapter, w.port, at_least=OUTAGE):
            await w.write(50)  # during the outage: the relay tries, fails, backs off
            await eventually(
                lambda: relay.stats()["stats"]["send_failures"] > 0,
                timeout=OUTAGE,
                interval=0.1,
                message=lambda: f"the relay saw the outage: {relay.stats()}",
            )
            await w.write(50)  # during the outage, while the relay backs off
            assert (await w.outbox())[0] >= 100  # nothing of it can have gone out
            failing = relay.stats()

        await w.wait_all_delivered_once()
        after = relay.stats()
        assert relay.alive(), relay.output()
        assert (after["pid"], after["name"]) == (before["pid"], before["name"])  # same relay
        assert after["running"] is True
        assert after["stats"]["send_failures"] > 0
        assert after["stats"]["sent"] >= len(w.written)
        assert await relay.stop() == 0, relay.output()
        stats = await w.final_check([consumer])
        print(f"\n{adapter}: relay during the outage {failing['stats']}, after {after['stats']}")
        print(f"{adapter}: inbox {stats}")


# -- 4. a graceful stop with a batch in flight ---------------------------------------------
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_graceful_stop_mid_batch_deletes_only_what_was_sent(
    request: pytest.FixtureRequest,
    adapter: str,
    postgres_database_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    async with world(request, adapter, postgres_database_url, unique_name, tmp_path) as w:
        consumer = await w.consumer()
        total = 5000
        # The container's relay (serve mode), idle until the events come in one commit;
        # small batches keep it busy for a while; a long lease: a claim the stop left
        # behind would block the next relay for a minute, so leaving none is visible.
        service = await w.service(
            "service-1", "serve", outbox_batch_size="50", outbox_lease="60"
        ).start()
        await w.write(total, chunk=total)
        seen: dict[str, int] = {}

        async def sending() -> bool:
            rows, claimed = await w.outbox()
            seen.update(rows=rows, claimed=claimed)
            return rows < total and claimed > 0

        await eventually(
            sending,
            timeout=DELIVERY_TIMEOUT,
            interval=0.005,
            message=lambda: f"the relay is mid-stream; outbox {seen}",
        )
        began = time.monotonic()
        assert await service.stop() == 0, service.output()  # container.shutdown_resources()
        stopped_in = time.monotonic() - began
        left, claimed = await w.outbox()
        assert 0 < left < total, f"the stop was not mid-stream ({left} rows left)"
        assert claimed == 0, "the stop left a claim open behind it"

        sent = await w.wait_deleted_rows_delivered()  # deleted => sent, no relay running
        assert sent == total - left

        service2 = await w.service("service-2", "serve").start()
        await w.wait_all_delivered_once()
        assert await service2.stop() == 0, service2.output()
        stats = await w.final_check([consumer])
        print(f"\n{adapter}: stopped in {stopped_in:.1f}s with {left} rows left; inbox {stats}")


# -- 5. a service killed with its relay running, restarted right away -----------------------
async def test_a_service_killed_with_its_relay_running_can_be_restarted_right_away(
    request: pytest.FixtureRequest, database_url: str, unique_name: str, tmp_path: Path
) -> None:
    """SQLite: the dead relay's lock is taken over at once (its process is gone)."""
    async with world(request, "rabbitmq", database_url, unique_name, tmp_path) as w:
        consumer = await w.consumer()
        first = await w.service("service-1", "serve").start()
        await w.write(10)
        await w.wait_all_delivered_once()  # its relay runs
        first.kill()  # the relay dies holding whatever it held (SQLite: the relay lock)
        await w.write(10)  # committed while no relay runs

        restarted = await w.service("service-2", "serve").start()  # what a supervisor does
        await w.wait_all_delivered_once()
        assert await restarted.stop() == 0, restarted.output()
        await w.final_check([consumer])


# -- 6. the consumer SIGKILLed mid-stream: the inbox absorbs the redeliveries ---------------
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_consumer_killed_mid_stream_runs_each_handler_once_in_effect(
    request: pytest.FixtureRequest,
    adapter: str,
    postgres_database_url: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    async with world(request, adapter, postgres_database_url, unique_name, tmp_path) as w:
        first = await w.consumer("consumer-1")
        relay = await w.service("relay", "serve").start()
        total = 2000
        await w.write(total)
        seen: dict[str, int] = {}

        async def halfway() -> bool:
            seen["rows"] = (await w.effects())[0]
            return total // 10 <= seen["rows"] < total

        await eventually(
            halfway,
            timeout=DELIVERY_TIMEOUT,
            interval=0.01,
            message=lambda: f"consumer-1 mid-stream; side effects {seen}",
        )
        first.kill()  # handlers in flight: their inbox rows roll back with their writes
        rows, ids = await w.effects()
        assert rows == len(ids) < total

        second = await w.consumer("consumer-2")  # gets the unacknowledged ones again
        await w.wait_all_delivered_once()
        assert await relay.stop() == 0, relay.output()
        stats = await w.final_check([second])
        print(f"\n{adapter}: consumer-1 killed after {rows} side effects; inbox {stats}")
