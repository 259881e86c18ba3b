"""``hexbus tail`` / ``hexbus dlq`` without a broker: exit codes, messages, formatting."""

from __future__ import annotations

import json
import socket
import uuid
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from hexbus.cli import app
from hexbus.cli.dlq import describe_dead_letter
from hexbus.cli.tail import event_line, event_record
from hexbus.demo.events import UserCreated

runner = CliRunner()
SECRET = "s3cr3t-pw"

COMMANDS = [
    ["tail"],
    ["tail", "user.*", "--count", "1"],
    ["dlq", "list", "x"],
    ["dlq", "replay", "x"],
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
    else:
        assert "dead letters exist only on broker adapters" in flat


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


def test_kafka_replay_is_refused_with_the_reason_before_connecting() -> None:
    servers = f"127.0.0.1:{_closed_port()}"
    env = {"HEXBUS_ADAPTER": "kafka", "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": servers}
    result = runner.invoke(app, ["dlq", "replay", "x"], env=env)

    assert result.exit_code == 2
    flat = _flat(result.output)
    assert "RabbitMQ-only" in flat
    assert "every consumer group" in flat


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


def test_describe_dead_letter_reads_both_adapters_shapes() -> None:
    rabbit = SimpleNamespace(
        event_id="e1",
        event_type="user.created",
        error="RuntimeError: boom",
        attempts=5,
        handler="mail",
        original_routing_key="user.created",
        failed_at="2024-01-01T00:00:00+00:00",
        body=b'{"name": "Ada"}',
        headers={},
    )
    row = describe_dead_letter(rabbit)
    assert row["event_type"] == "user.created"
    assert row["error"] == "RuntimeError: boom"
    assert row["origin"] == "user.created"
    assert row["body"] == '{"name": "Ada"}'
    assert "dlq_position" not in row

    headers = {"ce_type": "user.created", "ce_id": "e2"}
    kafka = SimpleNamespace(
        topic="svc.mail.dlq",
        partition=0,
        offset=7,
        value=b"{}",
        event_id="e2",
        error="ValueError: bad",
        attempts=3,
        handler="mail",
        original_topic="user.created",
        original_partition=2,
        original_offset=41,
        header=headers.get,
    )
    row = describe_dead_letter(kafka)
    assert row["event_type"] == "user.created"
    assert row["event_id"] == "e2"
    assert row["origin"] == "user.created[2]@41"
    assert row["dlq_position"] == "svc.mail.dlq[0]@7"
    assert row["failed_at"] is None
