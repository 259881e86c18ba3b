"""``hexbus tail`` / ``hexbus dlq`` / ``hexbus lag`` without a broker: exit codes, messages,
formatting, and the commands' work on the memory adapter and on a bus that lacks (or
has) a capability."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from typer.testing import CliRunner

import hexbus.cli._common
from hexbus.application.bus import EventBusBase
from hexbus.cli import app
from hexbus.cli.dlq import (
    describe_dead_letter,
    list_dead_letters,
    print_dead_letters,
    print_replay,
    where,
)
from hexbus.cli.lag import print_lag
from hexbus.cli.tail import Tail, event_line, event_record
from hexbus.demo.events import UserCreated
from hexbus.domain.events import DomainEvent
from hexbus.domain.ports import (
    DeadLetter,
    DeadLetterReader,
    DeadLetterReplayer,
    EventBus,
    LagReporter,
    ReplayReport,
    SubscriptionLag,
)
from hexbus.infrastructure.kafka import KafkaEventBus
from hexbus.infrastructure.memory import InMemoryEventBus, MemoryConfig
from hexbus.infrastructure.rabbitmq import RabbitMQEventBus
from hexbus.infrastructure.settings import load_settings
from hexbus.testing import eventually

runner = CliRunner()
SECRET = "s3cr3t-pw"

COMMANDS = [
    ["tail"],
    ["tail", "user.*", "--count", "1"],
    ["dlq", "list", "x"],
    ["dlq", "replay", "x"],
    ["lag", "x"],
]


def _flat(text: str) -> str:
    """Output without rich's line breaks and box borders."""
    return " ".join(text.replace("│", " ").split())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("args", COMMANDS)
def test_memory_adapter_exits_2_with_an_explanation(args: list[str]) -> None:
    result = runner.invoke(app, args, env={"HEXBUS_ADAPTER": "memory"})

    assert result.exit_code == 2
    flat = _flat(result.output)
    if args[0] == "tail":
        assert "only inside the process that publishes them" in flat
    elif args[0] == "lag":
        assert "nothing waits anywhere a `hexbus lag` process could look" in flat
        assert "HEXBUS_ADAPTER=rabbitmq or kafka" in flat
    else:
        assert "keeps dead letters only inside the process whose handlers failed" in flat
        assert "HEXBUS_ADAPTER=rabbitmq or kafka" in flat


@pytest.mark.parametrize("args", COMMANDS)
def test_bad_configuration_exits_1_and_names_the_variable(args: list[str]) -> None:
    result = runner.invoke(app, args, env={"HEXBUS_ADAPTER": "bogus"})

    assert result.exit_code == 1
    assert "HEXBUS_ADAPTER='bogus'" in _flat(result.output)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", COMMANDS)
def test_unreachable_rabbitmq_exits_1_without_the_password(args: list[str]) -> None:
    url = f"amqp://app:{SECRET}@127.0.0.1:{_closed_port()}/"
    env = {"HEXBUS_ADAPTER": "rabbitmq", "HEXBUS_RABBITMQ_URL": url}
    result = runner.invoke(app, args, env=env)

    assert result.exit_code == 1, result.output
    assert "cannot connect to RabbitMQ" in _flat(result.output)
    assert SECRET not in result.output
    assert "Traceback" not in result.output


def test_every_broker_adapter_replays_and_reports_lag() -> None:
    """Kafka replays too now (through its replay topic): nothing to refuse by adapter."""
    for bus in (KafkaEventBus(), RabbitMQEventBus(), _memory_bus()):
        assert isinstance(bus, DeadLetterReplayer), type(bus).__name__
        assert isinstance(bus, LagReporter), type(bus).__name__


def test_an_invalid_pattern_is_a_usage_error() -> None:
    env = {"HEXBUS_ADAPTER": "rabbitmq", "HEXBUS_RABBITMQ_URL": "amqp://g:g@127.0.0.1:1/"}
    result = runner.invoke(app, ["tail", "user..x*"], env=env)

    assert result.exit_code == 2
    assert "has an invalid word" in _flat(result.output)


def test_dlq_help_lists_list_and_replay() -> None:
    result = runner.invoke(app, ["dlq", "--help"])

    assert result.exit_code == 0
    assert "list" in result.output
    assert "replay" in result.output
    replay = runner.invoke(app, ["dlq", "replay", "--help"])
    assert replay.exit_code == 0
    for option in ("--limit", "--event-type", "--dry-run", "--json", "--app"):
        assert option in replay.output, option


def test_lag_needs_subscription_names_or_an_app() -> None:
    env = {"HEXBUS_ADAPTER": "rabbitmq", "HEXBUS_RABBITMQ_URL": "amqp://g:g@127.0.0.1:1/"}
    result = runner.invoke(app, ["lag"], env={**env, "HEXBUS_APP": ""})

    assert result.exit_code == 2, result.output
    flat = _flat(result.output)
    assert "name the subscriptions to report" in flat
    assert "--app" in flat


def test_event_record_separates_envelope_metadata_and_fields() -> None:
    event = UserCreated(user_id=uuid.uuid4(), email="ada@example.org", name="Ada")
    record = event_record(event, {"ip_address": "10.0.0.1"})

    assert record["event_type"] == "user.created"
    assert record["event_id"] == str(event.event_id)
    assert record["correlation_id"] == event.correlation_id
    assert record["metadata"] == {"ip_address": "10.0.0.1"}
    fields = {"user_id": str(event.user_id), "email": "ada@example.org", "name": "Ada"}
    assert record["data"] == fields
    json.dumps(record)  # JSON-ready

    line = event_line(record).plain
    assert line.startswith(record["occurred_at"])
    for part in ("user.created", f"id={event.event_id}", "ip_address=10.0.0.1", '"name": "Ada"'):
        assert part in line


def test_describe_dead_letter_reads_the_unified_record() -> None:
    rabbit = DeadLetter(
        subscription="mail",
        event_id="e1",
        event_type="user.created",
        error="RuntimeError: boom",
        reason="handler_failed",
        attempts=5,
        handler="mail",
        failed_at="2024-01-01T00:00:00+00:00",
        origin="user.created",
        body=b'{"name": "Ada"}',
        headers={"x": "y"},
    )
    row = describe_dead_letter(rabbit)
    assert row == {
        "event_type": "user.created",
        "event_id": "e1",
        "error": "RuntimeError: boom",
        "reason": "handler_failed",
        "attempts": 5,
        "handler": "mail",
        "failed_at": "2024-01-01T00:00:00+00:00",
        "origin": "user.created",
        "position": None,
        "body": '{"name": "Ada"}',
    }

    undecodable = DeadLetter(
        subscription="mail",
        event_id=None,
        event_type=None,
        error="DecodeError: not JSON",
        reason="malformed",
        attempts=1,
        handler=None,
        failed_at=None,
        origin="user.created[2]@41",
        position="svc.mail.dlq[0]@7",
        body=b"\xff{",
    )
    row = describe_dead_letter(undecodable)
    assert row["origin"] == "user.created[2]@41"
    assert row["position"] == "svc.mail.dlq[0]@7"
    assert row["event_type"] is None and row["failed_at"] is None
    assert row["body"] == "\ufffd{"  # undecodable bytes stay visible, as text
    json.dumps(row)


# -- dlq on the memory adapter (the functions the commands run) ---------------------------
class _Poison:
    """Fails until ``fixed``; records what it handled afterwards."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[DomainEvent] = []

    async def __call__(self, event: UserCreated) -> None:
        if not self.fixed:
            raise RuntimeError("poisoned handler")
        self.handled.append(event)


def _memory_bus() -> InMemoryEventBus:
    return InMemoryEventBus(
        MemoryConfig(max_attempts=2, retry_delays=(0.01,), dead_letter_limit=100)
    )


async def test_dlq_list_then_replay_on_the_memory_adapter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bus = _memory_bus()
    poison = _Poison()
    bus.subscribe(UserCreated, poison, name="poison")
    event = UserCreated(user_id=uuid.uuid4(), email="ada@example.org", name="Ada")
    async with bus:
        await bus.publish(event, metadata={"ip_address": "10.0.0.1"})
        await eventually(lambda: bus.stats.dead_lettered == 1)

        assert isinstance(bus, DeadLetterReader) and isinstance(bus, DeadLetterReplayer)
        rows = await list_dead_letters(bus, "poison")
        assert len(rows) == 1
        row = rows[0]
        assert row["event_id"] == str(event.event_id)
        assert row["event_type"] == "user.created"
        assert row["error"] == "RuntimeError: poisoned handler"
        assert row["reason"] == "handler_failed"
        assert row["attempts"] == 2
        assert row["handler"] == "poison"
        assert row["failed_at"]
        assert json.loads(row["body"])["email"] == "ada@example.org"
        assert await list_dead_letters(bus, "poison", limit=0) == []
        assert await list_dead_letters(bus, "no-such-subscription") == []

        print_dead_letters("poison", where(bus, "poison"), rows)
        table = " ".join(capsys.readouterr().out.replace("│", " ").split())
        assert "Dead letters of poison" in table
        assert "in process (memory)" in table
        assert "poisoned" in table
        assert "1 dead letter(s)" in table

        print_dead_letters("poison", "here", rows, as_json=True)
        assert json.loads(capsys.readouterr().out) == rows

        poison.fixed = True
        assert (await bus.replay_dead_letters("poison")).count == 1
        await eventually(lambda: [e.event_id for e in poison.handled] == [event.event_id])
        assert await list_dead_letters(bus, "poison") == []

    print_dead_letters("poison", "subscription 'poison' in process (memory)", [])
    assert "no dead letters for poison" in capsys.readouterr().out


# -- an adapter without the capability (a tiny fake bus) -----------------------------------
class _ListOnlyBus(EventBusBase):
    """Implements ``EventBus`` and ``DeadLetterReader``, not ``DeadLetterReplayer``."""

    adapter_name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.started = False

    async def publish(
        self,
        event: DomainEvent,
        *,
        metadata: Mapping[str, str] | None = None,
        key: str | None = None,
        session: Any = None,
    ) -> None:
        self.admission.check(event)

    async def _start(self) -> None:
        self.started = True

    async def dead_letters(self, subscription: str, limit: int = 100) -> list[DeadLetter]:
        dead = DeadLetter(
            subscription=subscription,
            event_id="e1",
            event_type="user.created",
            error="RuntimeError: boom",
            reason="handler_failed",
            attempts=3,
            handler=subscription,
            failed_at="2024-01-01T00:00:00+00:00",
            body=b"{}",
        )
        return [dead][:limit]


class _PlainBus(_ListOnlyBus):
    """An ``EventBus`` with no dead-letter capability at all."""

    dead_letters = None  # type: ignore[assignment]


@pytest.fixture
def fake_bus(monkeypatch: pytest.MonkeyPatch) -> list[EventBus]:
    """Make the CLI's registry calls return the buses the test puts in the list, in turn."""
    buses: list[EventBus] = []

    def build(settings: Any, **overrides: Any) -> EventBus:
        return buses.pop(0)

    monkeypatch.setattr(hexbus.cli._common, "build_bus", build)
    return buses


FAKE_ENV = {"HEXBUS_ADAPTER": "rabbitmq", "HEXBUS_RABBITMQ_URL": "amqp://g:g@127.0.0.1:1/"}


def test_replay_on_an_adapter_without_the_capability_exits_2_before_starting(
    fake_bus: list[EventBus],
) -> None:
    bus = _ListOnlyBus()
    fake_bus.append(bus)
    assert isinstance(bus, EventBus) and not isinstance(bus, DeadLetterReplayer)

    result = runner.invoke(app, ["dlq", "replay", "mail"], env=FAKE_ENV)

    assert result.exit_code == 2, result.output
    flat = _flat(result.output)
    assert "the rabbitmq adapter (_ListOnlyBus) cannot replay dead letters" in flat
    assert "DeadLetterReplayer" in flat
    assert "`hexbus dlq list --json` shows them" in flat  # it can list them
    assert "hexbus publish" in flat
    assert not bus.started


def test_list_on_an_adapter_without_the_capability_exits_2(fake_bus: list[EventBus]) -> None:
    bus = _PlainBus()
    fake_bus.extend([bus, bus])
    assert not isinstance(bus, DeadLetterReader)

    listed = runner.invoke(app, ["dlq", "list", "mail"], env=FAKE_ENV)
    assert listed.exit_code == 2, listed.output
    assert "cannot list dead letters" in _flat(listed.output)

    replayed = runner.invoke(app, ["dlq", "replay", "mail"], env=FAKE_ENV)
    assert replayed.exit_code == 2, replayed.output
    flat = _flat(replayed.output)
    assert "cannot replay dead letters" in flat
    assert "dlq list" not in flat  # it cannot list them either
    assert not bus.started


def test_list_runs_on_any_dead_letter_reader(fake_bus: list[EventBus]) -> None:
    bus = _ListOnlyBus()
    fake_bus.append(bus)

    result = runner.invoke(app, ["dlq", "list", "mail", "--json"], env=FAKE_ENV)

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["event_id"], r["handler"], r["attempts"]) for r in rows] == [("e1", "mail", 3)]
    assert bus.started  # started for the read, and stopped again
    assert bus.state.value == "closed"

    fake_bus.append(_ListOnlyBus())  # a stopped bus is not restarted: one per command
    table = runner.invoke(app, ["dlq", "list", "mail"], env=FAKE_ENV)
    assert table.exit_code == 0, table.output
    flat = _flat(table.stdout)
    assert "subscription 'mail'" in flat  # no SubscriptionAdmin: the plain name
    assert "1 dead letter(s)" in flat


# -- replay and lag on any adapter that has the capability (tiny fake buses) ---------------
def _letter(event_id: str, event_type: str | None = "user.created") -> DeadLetter:
    return DeadLetter(
        subscription="mail",
        event_id=event_id,
        event_type=event_type,
        error="RuntimeError: boom",
        reason="handler_failed" if event_type else "malformed",
        attempts=3,
        handler="mail",
        failed_at="2024-01-01T00:00:00+00:00",
        body=b"{}",
    )


class _ReplayBus(_ListOnlyBus):
    """A ``DeadLetterReplayer`` that reports one replayed and one refused dead letter and
    remembers how it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, int | None, str | None, bool]] = []

    async def replay_dead_letters(
        self,
        subscription: str,
        limit: int | None = None,
        *,
        event_type: str | None = None,
        dry_run: bool = False,
    ) -> ReplayReport:
        self.asked.append((subscription, limit, event_type, dry_run))
        refused = [] if event_type == "user.created" else [(_letter("e2", "gone.type"), "gone")]
        return ReplayReport([_letter("e1")], refused, dry_run)


class _LagBus(_ListOnlyBus):
    """A ``LagReporter``: 3 waiting for every name, none for ``nosuch``."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[list[str]] = []

    async def lag(self, subscriptions: Any = None) -> list[SubscriptionLag]:
        names = list(subscriptions or [])
        self.asked.append(names)
        return [
            SubscriptionLag(n, f"queue 'svc.{n}'", None if n == "nosuch" else 3, None, {"q": 1})
            for n in names
        ]


def test_replay_passes_the_options_and_exits_1_when_something_was_refused(
    fake_bus: list[EventBus],
) -> None:
    bus = _ReplayBus()
    fake_bus.append(bus)
    args = ["dlq", "replay", "mail", "--limit", "5", "--event-type", "order.paid", "--dry-run"]

    result = runner.invoke(app, args, env={**FAKE_ENV, "HEXBUS_APP": ""})

    assert result.exit_code == 1, result.output
    assert bus.asked == [("mail", 5, "order.paid", True)]
    flat = _flat(result.stdout)
    assert "Would be replayed to subscription 'mail'" in flat
    assert "Refused (kept in the dead letters): 1. gone.type e2: gone" in flat
    assert "would replay 1 dead letter(s) of mail" in flat
    assert "refused 1 (kept); dry run: nothing was changed" in flat
    assert "hint: without --app" in flat


def test_replay_json_and_exit_0_when_nothing_was_refused(fake_bus: list[EventBus]) -> None:
    bus = _ReplayBus()
    fake_bus.append(bus)

    result = runner.invoke(
        app, ["dlq", "replay", "mail", "--event-type", "user.created", "--json"], env=FAKE_ENV
    )

    assert result.exit_code == 0, result.output
    assert bus.asked == [("mail", None, "user.created", False)]
    report = json.loads(result.stdout)
    assert report["subscription"] == "mail"
    assert report["dry_run"] is False
    assert [r["event_id"] for r in report["replayed"]] == ["e1"]
    assert report["refused"] == []


def test_print_replay_names_undecodable_letters(capsys: pytest.CaptureFixture[str]) -> None:
    report = ReplayReport([], [(_letter("e3", None), "it names no event type")])
    print_replay("mail", "queue 'svc.mail'", report)
    out = _flat(capsys.readouterr().out)
    assert "1. ? (undecodable) e3: it names no event type" in out
    assert "replayed 0 dead letter(s) of mail to queue 'svc.mail'; refused 1 (kept)" in out
    assert "hint" not in out  # an app was given (the default)


def test_lag_reports_the_named_subscriptions(fake_bus: list[EventBus]) -> None:
    bus = _LagBus()
    fake_bus.append(bus)

    result = runner.invoke(app, ["lag", "mail", "nosuch", "--json"], env=FAKE_ENV)

    assert result.exit_code == 0, result.output
    assert bus.asked == [["mail", "nosuch"]]
    rows = json.loads(result.stdout)
    assert rows == [
        {
            "subscription": "mail",
            "address": "queue 'svc.mail'",
            "waiting": 3,
            "in_flight": None,
            "detail": {"q": 1},
        },
        {
            "subscription": "nosuch",
            "address": "queue 'svc.nosuch'",
            "waiting": None,
            "in_flight": None,
            "detail": {"q": 1},
        },
    ]
    assert bus.state.value == "closed"


def test_lag_defaults_to_the_subscriptions_of_the_app(fake_bus: list[EventBus]) -> None:
    bus = _LagBus()
    fake_bus.append(bus)

    result = runner.invoke(app, ["lag", "--app", "hexbus.demo:DemoContainer"], env=FAKE_ENV)

    assert result.exit_code == 0, result.output
    (names,) = bus.asked
    assert "hexbus.demo.handlers.WelcomeMailHandler" in names
    assert "demo.event_tap" in names
    flat = _flat(result.stdout)
    assert f"{3 * len(names)} event(s) waiting in {len(names)} subscription(s)" in flat


def test_lag_on_an_adapter_without_the_capability_exits_2(fake_bus: list[EventBus]) -> None:
    bus = _ListOnlyBus()
    fake_bus.append(bus)
    assert not isinstance(bus, LagReporter)

    result = runner.invoke(app, ["lag", "mail"], env=FAKE_ENV)

    assert result.exit_code == 2, result.output
    flat = _flat(result.output)
    assert "the rabbitmq adapter (_ListOnlyBus) cannot report consumer lag" in flat
    assert "LagReporter" in flat
    assert not bus.started


def test_print_lag_shows_in_flight_only_where_a_broker_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [SubscriptionLag("a", "x", 1, None), SubscriptionLag("b", "y", 2, None)]
    print_lag(rows)
    assert "in flight" not in capsys.readouterr().out
    print_lag([*rows, SubscriptionLag("c", "z", 3, 7)])
    out = _flat(capsys.readouterr().out)
    assert "in flight" in out
    assert "c z 3 7" in out
    assert "6 event(s) waiting in 3 subscription(s)" in out


async def test_memory_lag_counts_nothing_waiting_and_the_dead_letters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bus = _memory_bus()
    bus.subscribe(UserCreated, _Poison(), name="poison")
    async with bus:
        await bus.publish(UserCreated(user_id=uuid.uuid4(), email="a@example.org", name="A"))
        await eventually(lambda: bus.stats.dead_lettered == 1)
        (lag,) = await bus.lag()
        assert (lag.subscription, lag.waiting, lag.in_flight) == ("poison", 0, None)
        assert lag.detail == {"dead_letters": 1}
        assert lag.address == "subscription 'poison' in process (memory)"
        assert [x.waiting for x in await bus.lag(["other"])] == [0]
    print_lag([lag])
    out = _flat(capsys.readouterr().out)
    assert "dead_letters=1" in out
    assert "0 event(s) waiting in 1 subscription(s)" in out
    assert "unknown" not in out


# -- tail on the memory adapter (the session the command runs) -----------------------------
async def test_tail_session_prints_then_deletes_its_subscription(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", "memory")
    bus = _memory_bus()
    tail = Tail(bus, load_settings(), "user.*", "tail.test", count=1, as_json=True)
    bus.subscribe("user.*", tail.show, name="tail.test")
    running = asyncio.create_task(tail.run(timeout=10))
    await eventually(lambda: bus.state.value == "running" and tail.done is not None)
    event = UserCreated(user_id=uuid.uuid4(), email="ada@example.org", name="Ada")
    await bus.publish(event, metadata={"ip_address": "10.0.0.1"})
    await asyncio.wait_for(running, 10)
    tail.summary()

    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["event_id"] == str(event.event_id)
    assert record["metadata"] == {"ip_address": "10.0.0.1"}
    assert "tailing 'user.*' on memory (temporary subscription 'tail.test' in process" in err
    assert "tail: 1 event(s) shown" in err
    assert "warning" not in err
    assert "tail.test" not in bus.subscriptions.by_name()  # delete_subscription ran
    assert bus.state.value == "closed"
