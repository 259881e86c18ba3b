"""Dead-letter replay and consumer lag, end to end, on both brokers, through the CLI.

Replay: a poison subscription (pattern ``replaylag.*``) fails every event once, so each
becomes a dead letter; a record of a type nobody registered is written past hexbus and
is dead-lettered as ``unknown_type``. The handler is fixed, then ``hexbus dlq replay``:

- ``--dry-run`` lists what would go and what is refused, and changes nothing;
- ``--event-type`` + ``--limit`` replay exactly those, oldest first, to the poison
  subscription only (the healthy subscription of the same events does not run again);
- a second replay does not send the same dead letters again;
- the dead letter of the unregistered type is refused (exit 1, the reason printed) and
  kept: it is still listed.

Lag: events published while the subscription's consumer is down are counted as waiting
(``hexbus lag``, by name and from ``--app``), and go back to 0 once it consumed them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from bus_makers import KafkaBusMaker, RabbitBusMaker
from dependency_injector import providers
from typer.testing import CliRunner, Result

from hexbus import Container, DomainEvent, EventBus, EventRouter, current_context
from hexbus.cli import app
from hexbus.domain.ports import DeadLetter, DeadLetterReader, LagReporter
from hexbus.infrastructure.codec import CloudEventCodec
from hexbus.infrastructure.kafka import KafkaEventBus
from hexbus.infrastructure.kafka.marshal import encode_record
from hexbus.infrastructure.rabbitmq import RabbitMQEventBus
from hexbus.infrastructure.rabbitmq.marshal import encode_message
from hexbus.testing import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

runner = CliRunner()
TIMEOUT = 30.0
GONE = "replaylag.gone"  # a type no class declares (any more)


class ReplayEvent(DomainEvent, event_type="replaylag.event"):
    seq: int


class ReplayOther(DomainEvent, event_type="replaylag.other"):
    seq: int


class LagEvent(DomainEvent, event_type="replaylag.lag"):
    seq: int


#: What the ``slow`` subscription of ``LagContainer`` handled (the app ``--app`` names).
SLOW: list[int] = []
lag_router = EventRouter()


@lag_router.on(LagEvent, name="slow")
async def slow(event: LagEvent) -> None:
    SLOW.append(event.seq)


class LagContainer(Container):
    """The service ``hexbus lag --app test_replay_lag:LagContainer`` reports on."""

    routers = providers.List(providers.Object(lag_router))


def _rabbit_env(maker: RabbitBusMaker) -> dict[str, str]:
    return {
        "HEXBUS_ADAPTER": "rabbitmq",
        "HEXBUS_RABBITMQ_URL": maker.url,
        "HEXBUS_RABBITMQ_EXCHANGE": maker.exchange,
        "HEXBUS_SERVICE_NAME": maker.service,
        "HEXBUS_RETRY_DELAYS": "0.05,0.1",  # the makers' tiers: lag reports those
        "HEXBUS_APP": "",
    }


def _kafka_env(maker: KafkaBusMaker) -> dict[str, str]:
    return {
        "HEXBUS_ADAPTER": "kafka",
        "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": maker.bootstrap_servers,
        "HEXBUS_KAFKA_TOPIC_PREFIX": maker.prefix,
        "HEXBUS_SERVICE_NAME": maker.service,
        "HEXBUS_APP": "",
    }


async def _cli(args: list[str], env: dict[str, str]) -> Result:
    """The CLI runs its own event loop: run it in a thread, off this test's loop."""
    return await asyncio.to_thread(runner.invoke, app, args, env=env)


async def _cli_json(args: list[str], env: dict[str, str], exit_code: int = 0) -> Any:
    result = await _cli([*args, "--json"], env)
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


class _Poison:
    """Fails until ``fixed``; then records (event id, attempt) of what it handled."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[tuple[str, int]] = []

    async def __call__(self, event: DomainEvent) -> None:
        if not self.fixed:
            raise RuntimeError(f"poisoned {event.event_type}")
        self.handled.append((str(event.event_id), current_context().attempt))

    def ids(self) -> list[str]:
        return [event_id for event_id, _ in self.handled]


async def _letters(bus: EventBus, name: str) -> list[DeadLetter]:
    assert isinstance(bus, DeadLetterReader)
    return await bus.dead_letters(name)


async def _wait_letters(bus: EventBus, name: str, count: int) -> list[DeadLetter]:
    letters: list[DeadLetter] = []

    async def arrived() -> bool:
        letters[:] = await _letters(bus, name)
        return len(letters) == count

    await eventually(arrived, timeout=TIMEOUT, interval=0.2, message=lambda: repr(letters))
    return letters


async def _replay_scenario(
    bus: EventBus,
    env: dict[str, str],
    inject_unknown: Callable[[], Awaitable[None]],
    nothing_written: Callable[[], Awaitable[None]],
) -> None:
    """The replay story of the module docstring on ``bus`` (not started, max_attempts=1)."""
    poison = _Poison()
    healthy: list[str] = []

    async def record(event: ReplayEvent) -> None:
        healthy.append(str(event.event_id))

    bus.subscribe("replaylag.*", poison, name="poison")
    bus.subscribe(ReplayEvent, record, name="healthy")
    await bus.start()
    assert isinstance(bus, LagReporter)
    await bus.wait_ready(TIMEOUT)  # type: ignore[attr-defined]

    # One at a time, each dead-lettered before the next: "oldest first" is known.
    e0, e1, e2 = (ReplayEvent(seq=i) for i in range(3))
    o0, o1 = (ReplayOther(seq=i) for i in range(2))
    published = [e0, o0, e1, o1, e2]
    for number, event in enumerate(published, 1):
        await bus.publish(event)
        await _wait_letters(bus, "poison", number)
    await inject_unknown()
    letters = await _wait_letters(bus, "poison", len(published) + 1)
    ids = [str(e.event_id) for e in published]
    assert [d.event_id for d in letters[:-1]] == ids
    gone = letters[-1]
    assert (gone.event_type, gone.reason) == (GONE, "unknown_type")
    await eventually(lambda: sorted(healthy) == sorted(str(e.event_id) for e in (e0, e1, e2)))
    poison.fixed = True

    # --dry-run: all five would go, the unknown type is refused; nothing moves.
    dry = await _cli_json(["dlq", "replay", "poison", "--dry-run"], env, exit_code=1)
    assert dry["dry_run"] is True
    assert [d["event_id"] for d in dry["replayed"]] == ids
    assert [(d["event_type"], d["event_id"]) for d in dry["refused"]] == [
        (GONE, gone.event_id)
    ]
    assert "is not registered in this process" in dry["refused"][0]["why"]
    await nothing_written()
    assert [d.event_id for d in await _letters(bus, "poison")] == [*ids, gone.event_id]
    assert poison.handled == []

    # --event-type + --limit: the two oldest of that type, to "poison" only, attempt 1.
    first = await _cli_json(
        ["dlq", "replay", "poison", "--event-type", ReplayEvent.event_type, "--limit", "2"], env
    )
    assert first["dry_run"] is False and first["refused"] == []
    assert [d["event_id"] for d in first["replayed"]] == [str(e0.event_id), str(e1.event_id)]
    await eventually(
        lambda: sorted(poison.ids()) == sorted([str(e0.event_id), str(e1.event_id)]),
        message=lambda: repr(poison.handled),
    )
    left = [str(o0.event_id), str(o1.event_id), str(e2.event_id), gone.event_id]
    assert sorted(str(d.event_id) for d in await _letters(bus, "poison")) == sorted(left)

    # Again, same type, no limit: only the one not replayed yet.
    second = await _cli_json(
        ["dlq", "replay", "poison", "--event-type", ReplayEvent.event_type], env
    )
    assert [d["event_id"] for d in second["replayed"]] == [str(e2.event_id)]
    await eventually(lambda: len(poison.handled) == 3, message=lambda: repr(poison.handled))

    # Everything else: the two others go, the unknown type is refused and kept (exit 1).
    rest = await _cli(["dlq", "replay", "poison"], env)
    assert rest.exit_code == 1, rest.output
    flat = _flat(rest.output)
    assert "replayed 2 dead letter(s) of poison" in flat
    assert "refused 1 (kept)" in flat
    assert f"its event type '{GONE}' is not registered in this process" in flat
    assert "hint: without --app this process may not know your event classes" in flat
    await eventually(lambda: len(poison.handled) == 5, message=lambda: repr(poison.handled))

    kept = await _letters(bus, "poison")
    assert [(d.event_id, d.event_type, d.reason) for d in kept] == [
        (gone.event_id, GONE, "unknown_type")
    ]
    again = await _cli_json(["dlq", "replay", "poison"], env, exit_code=1)
    assert again["replayed"] == [] and len(again["refused"]) == 1
    assert sorted(poison.ids()) == sorted(ids), "a dead letter was replayed twice"
    assert all(attempt == 1 for _, attempt in poison.handled), poison.handled
    assert sorted(healthy) == sorted(str(e.event_id) for e in (e0, e1, e2)), (
        "the replay re-ran the healthy subscription"
    )
    assert await _letters(bus, "healthy") == []


# -- replay ---------------------------------------------------------------------------------
async def test_rabbitmq_replay_dry_run_filter_limit_and_refusal(
    rabbit_bus_maker: RabbitBusMaker,
) -> None:
    maker = rabbit_bus_maker
    bus = maker(max_attempts=1, retry_delays=(0.05,))
    assert isinstance(bus, RabbitMQEventBus)

    async def inject_unknown() -> None:
        """A foreign producer's message of a type nobody registered, straight into the
        poison subscription's queue."""
        headers, content_type, body = encode_message(
            CloudEventCodec(source="elsewhere"), ReplayOther(seq=99)
        )
        headers = {**headers, "cloudEvents:type": GONE}
        connection = await aio_pika.connect(maker.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body, headers=headers, content_type=content_type, message_id="gone-1"
                ),
                routing_key=bus.queue_name("poison"),
            )

    async def nothing_written() -> None:
        (lag,) = await bus.lag(["poison"])
        assert lag.waiting == 0
        assert lag.detail[bus.dlq_name("poison")] == 6

    await _replay_scenario(bus, _rabbit_env(maker), inject_unknown, nothing_written)


async def test_kafka_replay_dry_run_filter_limit_and_refusal(
    kafka_bus_maker: KafkaBusMaker,
) -> None:
    maker = kafka_bus_maker
    bus = maker(max_attempts=1, retry_delays=(0.01,), partitions=1)
    assert isinstance(bus, KafkaEventBus)

    async def inject_unknown() -> None:
        """A foreign producer's record of a type nobody registered, on a topic the poison
        subscription reads."""
        headers, value = encode_record(CloudEventCodec(source="elsewhere"), ReplayOther(seq=99))
        headers = [(k, GONE.encode() if k == "ce_type" else v) for k, v in headers]
        producer = AIOKafkaProducer(bootstrap_servers=maker.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                bus.topic_for(ReplayOther), value, key=b"gone", headers=headers
            )
        finally:
            await producer.stop()

    async def nothing_written() -> None:
        """No copy in the replay topic, no marker topic."""
        admin = AIOKafkaAdminClient(bootstrap_servers=maker.bootstrap_servers)
        await admin.start()
        try:
            topics = set(await admin.list_topics())
        finally:
            await admin.close()
        replay = bus.replay_topic("poison")
        assert replay in topics
        assert f"{bus.dlq_topic('poison')}.replayed" not in topics
        consumer = AIOKafkaConsumer(bootstrap_servers=maker.bootstrap_servers, group_id=None)
        await consumer.start()
        try:
            ends = await consumer.end_offsets([TopicPartition(replay, 0)])
        finally:
            await consumer.stop()
        assert sum(ends.values()) == 0

    await _replay_scenario(bus, _kafka_env(maker), inject_unknown, nothing_written)


# -- lag ------------------------------------------------------------------------------------
async def _lag_scenario(
    make: Callable[..., EventBus], env: dict[str, str], address: str
) -> None:
    """Consume one (so the subscription exists on the broker), stop; publish four while it
    is down: four waiting; consume them: none waiting."""
    SLOW.clear()
    first = make()
    first.include(lag_router)
    async with first:
        await first.wait_ready(TIMEOUT)  # type: ignore[attr-defined]
        await first.publish(LagEvent(seq=0))
        await eventually(lambda: SLOW == [0])

        async def caught_up() -> bool:
            assert isinstance(first, LagReporter)
            return [lag.waiting for lag in await first.lag()] == [0]

        await eventually(caught_up, timeout=TIMEOUT, interval=0.2)

    publisher = make()
    async with publisher:
        await publisher.publish_many([LagEvent(seq=i) for i in range(1, 5)])
        # A bus that does not consume "slow" measures it too.
        assert isinstance(publisher, LagReporter)
        (measured,) = await publisher.lag(["slow"])
        assert (measured.subscription, measured.waiting) == ("slow", 4)
        assert measured.address == address

    named = await _cli_json(["lag", "slow", "nosuch"], env)
    assert [(r["subscription"], r["waiting"]) for r in named] == [("slow", 4), ("nosuch", None)]
    assert named[0]["address"] == address
    from_app = await _cli_json(["lag", "--app", "test_replay_lag:LagContainer"], env)
    assert [(r["subscription"], r["waiting"]) for r in from_app] == [("slow", 4)]
    table = await _cli(["lag", "slow", "nosuch"], env)
    assert table.exit_code == 0, table.output
    flat = _flat(table.stdout)
    assert "unknown (nosuch): the broker has nothing to measure" in flat
    assert "4 event(s) waiting in 2 subscription(s)" in flat

    second = make()
    second.include(lag_router)
    async with second:
        await eventually(lambda: sorted(SLOW) == [0, 1, 2, 3, 4], timeout=TIMEOUT)

        async def drained() -> bool:
            rows = await _cli_json(["lag", "slow"], env)
            return [r["waiting"] for r in rows] == [0]

        await eventually(drained, timeout=TIMEOUT, interval=0.5)
    assert sorted(SLOW) == [0, 1, 2, 3, 4]


async def test_rabbitmq_lag_counts_ready_messages(rabbit_bus_maker: RabbitBusMaker) -> None:
    maker = rabbit_bus_maker
    env = _rabbit_env(maker)
    await _lag_scenario(maker, env, f"queue '{maker.service}.slow'")
    rows = await _cli_json(["lag", "slow"], env)
    assert rows[0]["in_flight"] is None  # AMQP does not say
    assert rows[0]["detail"] == {
        f"{maker.service}.slow.retry.50ms": 0,
        f"{maker.service}.slow.retry.100ms": 0,
        f"{maker.service}.slow.dlq": 0,
    }


async def test_kafka_lag_counts_uncommitted_records(kafka_bus_maker: KafkaBusMaker) -> None:
    maker = kafka_bus_maker
    env = _kafka_env(maker)
    await _lag_scenario(
        lambda: maker(partitions=2), env, f"consumer group '{maker.service}.slow'"
    )
    (row,) = await _cli_json(["lag", "slow"], env)
    topic = f"{maker.prefix}{LagEvent.event_type}"
    replay = f"{maker.prefix}{maker.service}.slow.replay"
    assert set(row["detail"]) >= {f"{topic}[0]", f"{topic}[1]"}
    assert set(row["detail"]) <= {f"{topic}[0]", f"{topic}[1]", f"{replay}[0]", f"{replay}[1]"}
    assert sum(row["detail"].values()) == row["waiting"] == 0
