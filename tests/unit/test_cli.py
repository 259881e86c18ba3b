"""The ``hexbus`` command line through typer's CliRunner: outputs, exit codes, messages.

Why exit codes and messages matter: scripts and CI act on them, and an operator reads
them at 3 a.m.; "error: HEXBUS_ADAPTER='bogus' … allowed values" must say what to fix.
"""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hexbus.cli import app
from hexbus.cli.check import broker_endpoints
from hexbus.infrastructure.adapters import ADAPTERS, availability, missing_extra
from hexbus.infrastructure.settings import load_settings

runner = CliRunner()
SECRET_URL = "amqp://app:s3cr3t-pw@127.0.0.1:{port}/"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "check", "bench", "tail", "publish", "dlq", "asyncapi"):
        assert command in result.output


def test_check_prints_adapter_and_masks_the_password() -> None:
    env = {"HEXBUS_ADAPTER": "memory", "HEXBUS_RABBITMQ_URL": SECRET_URL.format(port=5672)}
    result = runner.invoke(app, ["check", "--app", "hexbus.demo:DemoContainer"], env=env)

    assert result.exit_code == 0, result.output
    assert "adapter: memory" in result.output
    assert "app:***@" in result.output
    assert "s3cr3t" not in result.output
    assert "user.login_failed" in result.output  # the demo's wiring
    assert "demo.audit_counter" in result.output


def test_check_json_reports_unreachable_broker_and_fails() -> None:
    env = {
        "HEXBUS_ADAPTER": "rabbitmq",
        "HEXBUS_RABBITMQ_URL": SECRET_URL.format(port=_closed_port()),
    }
    args = ["check", "--json", "--timeout", "0.5", "--app", "hexbus.demo:DemoContainer"]
    result = runner.invoke(app, args, env=env)

    assert result.exit_code == 1
    assert "s3cr3t" not in result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["adapter"]["name"] == "rabbitmq"
    assert report["brokers"][0]["reachable"] is False
    assert {"target": "user.login_failed"}.items() <= next(
        s for s in report["subscriptions"] if s["target"] == "user.login_failed"
    ).items()


def test_check_rejects_an_invalid_adapter_naming_the_variable() -> None:
    result = runner.invoke(app, ["check"], env={"HEXBUS_ADAPTER": "bogus"})

    assert result.exit_code != 0
    assert "HEXBUS_ADAPTER" in result.output
    assert "memory, rabbitmq, kafka" in " ".join(result.output.split())


def test_kafka_bootstrap_servers_become_probe_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", "kafka")
    monkeypatch.setenv("HEXBUS_KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:19092,k3")
    assert broker_endpoints(load_settings()) == [("k1", 9092), ("k2", 19092), ("k3", 9092)]


def test_publish_a_demo_event_prints_its_id() -> None:
    data = {"user_id": "6f1c2b9e-8d2a-4a55-9a51-0d7d1b0c1f00", "email": "a@b.io", "name": "A"}
    result = runner.invoke(
        app,
        ["publish", "user.created", json.dumps(data), "-m", "ip_address=10.0.0.1"],
        env={"HEXBUS_ADAPTER": "memory", "HEXBUS_APP": "hexbus.demo:DemoContainer"},
    )

    assert result.exit_code == 0, result.output
    event_id = result.stdout.strip()
    assert len(event_id) == 36 and event_id.count("-") == 4


@pytest.mark.parametrize(
    ("event_type", "data", "expected", "code"),
    [
        ("user.nope", "{}", "unknown event type 'user.nope' for --app", 2),
        ("user.created", '{"email": "a@b.io"}', "user_id: Field required", 1),
        ("user.created", "{oops", "not valid JSON", 1),
        ("user.created", "[1, 2]", "must be a JSON object", 1),
    ],
)
def test_publish_rejects_bad_input_clearly(
    event_type: str, data: str, expected: str, code: int
) -> None:
    result = runner.invoke(
        app,
        ["publish", event_type, data, "--app", "hexbus.demo:DemoContainer"],
        env={"HEXBUS_ADAPTER": "memory"},
    )

    assert result.exit_code == code
    assert "error:" in result.output
    assert expected in " ".join(result.output.split())


def test_asyncapi_document_has_a_channel_per_event_type() -> None:
    result = runner.invoke(app, ["asyncapi", "--app", "hexbus.demo:DemoContainer"])

    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["asyncapi"] == "3.0.0"
    channel = doc["channels"]["user.created"]
    assert channel["address"] == "user.created"
    schema = doc["components"]["schemas"]["UserCreated"]
    assert set(schema["required"]) == {"user_id", "email", "name"}
    assert "event_id" not in schema["properties"]  # the envelope travels as CE attributes
    assert "hexbus.bench.ping" not in doc["channels"]


@pytest.fixture
def without_aiokafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the ``kafka`` extra were not installed (the registry asks ``find_spec``)."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "aiokafka" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.usefixtures("without_aiokafka")
def test_check_names_the_missing_extra_in_the_registrys_words() -> None:
    env = {
        "HEXBUS_ADAPTER": "kafka",
        "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}",
    }
    result = runner.invoke(app, ["check", "--json", "--timeout", "0.5"], env=env)

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["adapter"]["available"] is False
    assert report["adapter"]["detail"] == str(missing_extra(ADAPTERS["kafka"]))
    assert report["session"] is None  # no session attempted without the client


def test_check_reports_the_registrys_description_of_the_adapter() -> None:
    result = runner.invoke(app, ["check", "--json"], env={"HEXBUS_ADAPTER": "memory"})

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["adapter"] == {
        "name": "memory",
        "available": True,
        "detail": availability("memory")[1],
    }


def test_unknown_event_type_lists_the_apps_event_types() -> None:
    result = runner.invoke(
        app, ["publish", "user.nope", "{}", "--app", "hexbus.demo:DemoContainer"]
    )

    text = " ".join(result.output.split())
    assert "user.created" in text and "item.created" in text
    assert "contract." not in text  # hexbus's own test events are no part of any app


@pytest.mark.parametrize("command", [["publish", "user.created", "{}"], ["asyncapi"]])
def test_commands_that_need_the_catalogue_say_how_to_name_the_app(command: list[str]) -> None:
    result = runner.invoke(app, command, env={"HEXBUS_APP": ""})

    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--app module:attribute" in text and "HEXBUS_APP" in text
    assert "hexbus.demo:DemoContainer" in text


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("nodots", "is not module:attribute"),
        ("no_such_module_xyz:container", "no module named 'no_such_module_xyz'"),
        ("hexbus.demo:nothing_here", "has no attribute 'nothing_here'; expected your hexbus"),
        ("hexbus:__version__", "is a str, not a hexbus Container"),
    ],
)
def test_a_wrong_app_path_names_what_was_not_found(path: str, expected: str) -> None:
    result = runner.invoke(app, ["asyncapi", "--app", path])

    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())


def test_app_may_be_a_container_class_or_a_factory(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "cli_app_sample.py").write_text(
        "from hexbus import Container\n"
        "class MyContainer(Container):\n    pass\n"
        "def make():\n    c = MyContainer()\n    c.config.from_dict({'service_name': 'mine'})\n"
        "    return c\n"
    )
    monkeypatch.chdir(tmp_path)
    for path in ("cli_app_sample:MyContainer", "cli_app_sample:make"):
        result = runner.invoke(
            app, ["check", "--json", "--app", path], env={"HEXBUS_ADAPTER": "memory"}
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        expected = "mine" if path.endswith("make") else "hexbus"
        assert report["config"]["service_name"] == expected


def test_broker_endpoints_cover_every_node_of_a_rabbitmq_url_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", "rabbitmq")
    monkeypatch.setenv(
        "HEXBUS_RABBITMQ_URL", "amqp://u:p@n1:5672/,amqps://u:p@n2/,amqp://u:p@n3:25672/"
    )
    assert broker_endpoints(load_settings()) == [("n1", 5672), ("n2", 5671), ("n3", 25672)]
