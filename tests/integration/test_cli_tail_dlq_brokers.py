"""``hexbus tail`` and ``hexbus dlq`` against the real brokers.

dlq: a poison handler (max_attempts=1) dead-letters an event; ``dlq list`` shows it with
the error; the handler is fixed; ``dlq replay`` brings it back to that handler (RabbitMQ:
its queue; Kafka: its replay topic). Filters, dry runs, refusals and ``hexbus lag``:
``test_replay_lag.py``.
tail: the real console script in a subprocess; the test publishes once tail printed its
``tailing`` line on stderr, and reads the JSON line tail printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from bus_makers import KafkaBusMaker, RabbitBusMaker
from typer.testing import CliRunner, Result

from hexbus import DomainEvent
from hexbus.cli import app
from hexbus.demo.events import UserCreated
from hexbus.testing import eventually

pytestmark = pytest.mark.integration

runner = CliRunner()
HEXBUS = Path(sys.executable).with_name("hexbus")
READY_TIMEOUT = 45.0


def _user() -> UserCreated:
    return UserCreated(user_id=uuid.uuid4(), email="ada@example.org", name="Ada")


def _rabbit_env(maker: RabbitBusMaker) -> dict[str, str]:
    return {
        "HEXBUS_ADAPTER": "rabbitmq",
        "HEXBUS_RABBITMQ_URL": maker.url,
        "HEXBUS_RABBITMQ_EXCHANGE": maker.exchange,
        "HEXBUS_SERVICE_NAME": maker.service,
    }


def _kafka_env(maker: KafkaBusMaker) -> dict[str, str]:
    return {
        "HEXBUS_ADAPTER": "kafka",
        "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": maker.bootstrap_servers,
        "HEXBUS_KAFKA_TOPIC_PREFIX": maker.prefix,
        "HEXBUS_SERVICE_NAME": maker.service,
    }


async def _cli(args: list[str], env: dict[str, str]) -> Result:
    """The CLI runs its own event loop: run it in a thread, off this test's loop."""
    return await asyncio.to_thread(runner.invoke, app, args, env=env)


@pytest.fixture
def rabbit(rabbit_bus_maker: RabbitBusMaker) -> RabbitBusMaker:
    """The shared maker (conftest): this test's namespace, cleaned up afterwards."""
    return rabbit_bus_maker


@pytest.fixture
def kafka(kafka_bus_maker: KafkaBusMaker) -> KafkaBusMaker:
    """The shared maker (conftest): this test's topic prefix, cleaned up afterwards."""
    return kafka_bus_maker


class _Poison:
    """A handler that fails until ``fixed``; records what it handled afterwards."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[DomainEvent] = []

    async def __call__(self, event: UserCreated) -> None:
        if not self.fixed:
            raise RuntimeError("poisoned handler")
        self.handled.append(event)


async def _single_dead_letter(env: dict[str, str], event: UserCreated) -> dict[str, Any]:
    """``dlq list poison --json`` shows exactly ``event``, dead-lettered by the poison."""
    listed = await _cli(["dlq", "list", "poison", "--json"], env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert len(rows) == 1
    row: dict[str, Any] = rows[0]
    assert row["event_id"] == str(event.event_id)
    assert row["event_type"] == "user.created"
    assert row["error"] == "RuntimeError: poisoned handler"
    assert row["attempts"] == 1
    assert row["handler"] == "poison"
    return row


# -- dlq on RabbitMQ ---------------------------------------------------------------------
async def test_rabbitmq_dlq_list_then_replay_after_the_fix(rabbit: RabbitBusMaker) -> None:
    env = _rabbit_env(rabbit)
    poison = _Poison()
    bus = rabbit(max_attempts=1, retry_delays=(0.05,))
    bus.subscribe(UserCreated, poison, name="poison")
    await bus.start()
    event = _user()
    await bus.publish(event, metadata={"ip_address": "10.0.0.1"})
    await eventually(lambda: bus.stats.dead_lettered == 1, timeout=15)

    row = await _single_dead_letter(env, event)
    assert row["failed_at"]

    table = await _cli(["dlq", "list", "poison"], env)
    assert table.exit_code == 0, table.output
    flat = " ".join(table.stdout.split())
    assert "poisoned" in flat
    assert "1 dead letter(s)" in flat

    poison.fixed = True
    replayed = await _cli(["dlq", "replay", "poison"], env)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead letter(s)" in replayed.stdout
    await eventually(lambda: [e.event_id for e in poison.handled] == [event.event_id], timeout=15)

    empty = await _cli(["dlq", "list", "poison", "--json"], env)
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout) == []


async def test_rabbitmq_dlq_unknown_subscription_and_bad_password(
    rabbit: RabbitBusMaker,
) -> None:
    env = _rabbit_env(rabbit)
    # DeadLetterReader: an unknown subscription has no dead letters (not an error); the
    # message says it may be unknown and where to look.
    unknown = await _cli(["dlq", "list", "no-such-subscription"], env)
    assert unknown.exit_code == 0, unknown.output
    flat = " ".join(unknown.output.split())
    assert f"no dead letters for no-such-subscription (queue '{rabbit.service}." in flat
    assert "unknown subscription" in flat
    assert "hexbus check" in flat
    unknown_json = await _cli(["dlq", "list", "no-such-subscription", "--json"], env)
    assert unknown_json.exit_code == 0, unknown_json.output
    assert json.loads(unknown_json.stdout) == []
    connection = await aio_pika.connect(rabbit.url)
    async with connection:  # reading created nothing on the broker
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(f"{rabbit.service}.no-such-subscription.dlq", passive=True)

    secret = "not-the-password-42"
    parts = urlsplit(rabbit.url)
    netloc = f"{parts.username or 'guest'}:{secret}@{parts.hostname}:{parts.port or 5672}"
    wrong = {**env, "HEXBUS_RABBITMQ_URL": urlunsplit(parts._replace(netloc=netloc))}
    for args in (["dlq", "list", "poison"], ["dlq", "replay", "poison"]):
        result = await _cli(args, wrong)
        assert result.exit_code == 1, result.output
        assert secret not in result.output
        assert "***" in result.output


# -- dlq on Kafka ------------------------------------------------------------------------
async def test_kafka_dlq_list_then_replay_after_the_fix(kafka: KafkaBusMaker) -> None:
    env = _kafka_env(kafka)
    poison = _Poison()
    bus = kafka(max_attempts=1, retry_delays=(0.01,))
    bus.subscribe(UserCreated, poison, name="poison")
    await bus.start()
    await bus.wait_ready(30)
    event = _user()
    await bus.publish(event)
    await eventually(lambda: bus.stats.dead_lettered == 1, timeout=30)

    row = await _single_dead_letter(env, event)
    assert row["origin"].startswith(f"{kafka.prefix}user.created[")

    poison.fixed = True
    replayed = await _cli(["dlq", "replay", "poison"], env)
    assert replayed.exit_code == 0, replayed.output
    flat = " ".join(replayed.stdout.split())
    assert "replayed 1 dead letter(s) of poison to consumer group" in flat
    await eventually(lambda: [e.event_id for e in poison.handled] == [event.event_id], timeout=30)

    # Marked as replayed: no longer listed, and a second replay sends nothing.
    empty = await _cli(["dlq", "list", "poison", "--json"], env)
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout) == []
    again = await _cli(["dlq", "replay", "poison", "--json"], env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["replayed"] == []
    assert [e.event_id for e in poison.handled] == [event.event_id]


# -- tail ----------------------------------------------------------------------------------
class _TailProcess:
    """``hexbus tail ... --json`` in a subprocess; stderr lines are read by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(HEXBUS), "tail", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    async def ready_line(self) -> str:
        """The ``tailing ...`` line (bounded wait); fails with tail's stderr otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while loop.time() < deadline:
            try:
                line = await asyncio.to_thread(self._lines.get, True, 0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.stderr.append(line)
            if line.startswith("tailing"):
                return line
        self.kill()
        pytest.fail("tail never printed its ready line; stderr:\n" + "".join(self.stderr))

    async def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        try:  # stdout is one line here: no pipe can fill up while we wait
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("tail did not stop after --count")
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self._reader.join(5)
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                self.stderr.append(line)
        return self.proc.returncode, out, "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _check_tailed(code: int, out: str, err: str, event: DomainEvent) -> dict[str, Any]:
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    record: dict[str, Any] = json.loads(lines[0])
    assert record["event_id"] == str(event.event_id)
    assert record["event_type"] == "user.created"
    assert record["metadata"] == {"ip_address": "10.0.0.1"}
    assert record["data"]["email"] == "ada@example.org"
    assert record["correlation_id"] == event.correlation_id
    assert "tail: 1 event(s) shown" in err
    return record


async def test_rabbitmq_tail_prints_a_published_event_and_removes_its_queue(
    rabbit: RabbitBusMaker,
) -> None:
    publisher = rabbit()
    await publisher.start()
    args = ["user.*", "--count", "1", "--timeout", "20", "--json"]
    tail = _TailProcess(args, _rabbit_env(rabbit))
    try:
        ready = await tail.ready_line()
        event = _user()
        await publisher.publish(event, metadata={"ip_address": "10.0.0.1"})
        code, out, err = await tail.finish()
    finally:
        tail.kill()
    _check_tailed(code, out, err, event)
    assert "warning" not in err

    queue_name = ready.split("temporary queue '", 1)[1].split("'", 1)[0]
    assert queue_name.startswith(f"{rabbit.service}.tail.")
    connection = await aio_pika.connect(rabbit.url)
    async with connection:
        for name in (queue_name, f"{queue_name}.dlq"):
            channel = await connection.channel()
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue(name, passive=True)


async def test_kafka_tail_prints_a_published_event(kafka: KafkaBusMaker) -> None:
    publisher = kafka()
    await publisher.start()
    await publisher.publish(_user())  # history: tail must not show it
    args = ["user.*", "--count", "1", "--timeout", "30", "--json"]
    tail = _TailProcess(args, _kafka_env(kafka))
    try:
        ready = await tail.ready_line()
        event = _user()
        await publisher.publish(event, metadata={"ip_address": "10.0.0.1"})
        code, out, err = await tail.finish(timeout=45)
    finally:
        tail.kill()
    _check_tailed(code, out, err, event)

    group = ready.split("temporary consumer group '", 1)[1].split("'", 1)[0]
    assert group.startswith(f"{kafka.service}.tail.")
    # Its dead-letter topic is deleted; the consumer group is what the adapter reports it
    # could not delete (aiokafka has no delete_consumer_groups): tail names it, and only it.
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(
        f"warning: left on the broker, delete by hand: consumer group '{group}'"
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    dlq = f"{kafka.prefix}{group}.dlq"
    assert dlq not in topics
    assert not [t for t in topics if ".tail." in t and t.startswith(kafka.prefix)]
