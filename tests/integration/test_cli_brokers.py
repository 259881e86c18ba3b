"""The command line against the real brokers: check, demo, bench, publish."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

from hexbus.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'guest'}:{password}@{parts.hostname}:{parts.port or 5672}"
    return urlunsplit(parts._replace(netloc=netloc))


def _env(adapter: str, rabbitmq_url: str, kafka: str, service: str) -> dict[str, str]:
    return {
        "HEXBUS_ADAPTER": adapter,
        "HEXBUS_RABBITMQ_URL": rabbitmq_url,
        "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "HEXBUS_SERVICE_NAME": service,
        "HEXBUS_RABBITMQ_EXCHANGE": f"{service}.events",
        "HEXBUS_KAFKA_TOPIC_PREFIX": f"{service}.",
    }


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka"])
def test_check_opens_a_real_session(
    adapter: str, rabbitmq_url: str, kafka_bootstrap_servers: str, unique_name: str
) -> None:
    env = _env(adapter, rabbitmq_url, kafka_bootstrap_servers, unique_name)
    result = runner.invoke(app, ["check", "--json"], env=env)

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    assert report["session"].startswith("ok")
    assert all(b["reachable"] for b in report["brokers"])


def test_check_of_an_app_reports_its_session_and_its_wiring(
    rabbitmq_url: str, kafka_bootstrap_servers: str, unique_name: str
) -> None:
    env = _env("rabbitmq", rabbitmq_url, kafka_bootstrap_servers, unique_name)
    args = ["check", "--json", "--app", "hexbus.demo:DemoContainer"]
    result = runner.invoke(app, args, env=env)

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["session"].startswith("ok") and report["brokers_skipped"] is False
    assert report["wiring"]["ok"] is True
    assert all(s["ok"] for s in report["subscriptions"])
    assert "demo.event_tap" in {s["name"] for s in report["subscriptions"]}


def test_check_with_wrong_credentials_fails_without_the_password(
    rabbitmq_url: str, kafka_bootstrap_servers: str, unique_name: str
) -> None:
    secret = "not-the-password-42"
    wrong = _with_password(rabbitmq_url, secret)
    env = _env("rabbitmq", wrong, kafka_bootstrap_servers, unique_name)
    result = runner.invoke(app, ["check"], env=env)

    assert result.exit_code == 1
    assert "session" in result.output
    assert secret not in result.output


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka"])
def test_demo_runs_on_the_broker(
    adapter: str, rabbitmq_url: str, kafka_bootstrap_servers: str, unique_name: str
) -> None:
    env = _env(adapter, rabbitmq_url, kafka_bootstrap_servers, unique_name)
    result = runner.invoke(app, ["demo"], env=env)

    assert result.exit_code == 0, result.output
    assert "SECURITY ALERT" in result.output
    assert "invalidated" in result.output


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka"])
def test_bench_against_the_broker_reports_every_side_and_row(
    adapter: str, rabbitmq_url: str, kafka_bootstrap_servers: str, unique_name: str
) -> None:
    env = _env(adapter, rabbitmq_url, kafka_bootstrap_servers, unique_name)
    args = ["bench", "--adapter", adapter, "--events", "200", "--repeats", "1"]
    result = runner.invoke(app, [*args, "--rate", "400", "--json"], env=env)

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    sides = ["hexbus", "raw_plain", "raw_same_bytes", "faststream"]
    assert data["adapter"] == adapter and list(data["sides"]) == sides
    assert ("confirms" if adapter == "rabbitmq" else "acks=all") in data["durability"]
    assert [row["row"] for row in data["rows"]] == ["single", "concurrent", "batch", "e2e", "paced"]
    for row in data["rows"]:
        for side in sides:
            figures = row[side]
            if row["row"] == "paced":
                assert figures["p99_ms"] >= figures["p50_ms"] > 0, (row["row"], side)
            else:
                assert figures["events_per_s"] > 0, (row["row"], side)
            assert len(figures["repeats"]) == 1
        assert set(row["ratios"]) == {f"hexbus/{side}" for side in sides[1:]}
        assert all(ratio > 0 for ratio in row["ratios"].values())


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka"])
def test_bench_soak_on_the_broker_reads_memory_at_checkpoints(
    adapter: str, rabbitmq_url: str, kafka_bootstrap_servers: str, unique_name: str
) -> None:
    env = _env(adapter, rabbitmq_url, kafka_bootstrap_servers, unique_name)
    result = runner.invoke(
        app, ["bench", "--adapter", adapter, "--soak", "1000", "--json"], env=env
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["adapter"] == adapter and data["handled"] >= 1_000
    assert [point["checkpoint"] for point in data["checkpoints"]] == [10, 100, 500, 1_000]
    assert all(point["peak_rss_mib"] > 0 for point in data["checkpoints"])
