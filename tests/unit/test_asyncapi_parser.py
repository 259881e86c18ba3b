"""The documents pass the official AsyncAPI parser with 0 errors and 0 warnings.

Why the real parser (``@asyncapi/parser`` 3.x, pinned in ``tools/asyncapi``'s lockfile,
installed by ``make test``): it is what every AsyncAPI tool (generator, Studio, CLI)
parses with, so "valid" here means "usable there". ``validate.mjs`` also checks what
the parser does not: each example against its schemas, and address variables against
parameters; these tests add that every address the parser read is the real topic,
routing key or queue.

Without Node or the installed parser the tests skip locally (say how to install) and
fail under ``CI=true``: CI must never pass without having parsed anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hexbus.cli import app
from hexbus.infrastructure.kafka import topology as kafka_topology
from hexbus.infrastructure.rabbitmq import topology as amqp_topology

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "asyncapi"
VALIDATE = TOOLS / "validate.mjs"
APPS = Path(__file__).parent
runner = CliRunner()
ENV = {
    "HEXBUS_APP": "",
    "HEXBUS_ADAPTER": "memory",
    "HEXBUS_SERVICE_NAME": "shop",
    "HEXBUS_RABBITMQ_URL": "amqps://shopper:pw@rabbit.internal/sales",
    "HEXBUS_RABBITMQ_EXCHANGE": "shop.events",
    "HEXBUS_KAFKA_BOOTSTRAP_SERVERS": "k1.internal:9092,k2.internal:9092",
    "HEXBUS_KAFKA_TOPIC_PREFIX": "prod.",
}
APPS_UNDER_TEST = ["hexbus.demo:DemoContainer", "asyncapi_apps.shop:ShopContainer"]


def _node() -> str:
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "Node.js is not installed (the project needs node >= 18 on PATH)"
    elif not (TOOLS / "node_modules" / "@asyncapi" / "parser").is_dir():
        missing = f"the AsyncAPI parser is not installed in {TOOLS} (run: make test, or make unit)"
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {missing}")
        pytest.skip(missing)
    assert node is not None
    return node


def validate(text: str) -> tuple[int, dict[str, Any]]:
    """Run the parser on a document; (exit code, its JSON report)."""
    proc = subprocess.run(
        [_node(), str(VALIDATE), "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, report


@pytest.fixture(autouse=True)
def _apps_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(APPS))


def generate(path: str, adapter: str, fmt: str) -> str:
    result = runner.invoke(
        app, ["asyncapi", "--app", path, "--adapter", adapter, "--format", fmt], env=ENV
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def _expected_addresses(doc: dict[str, Any], adapter: str) -> set[str]:
    """The addresses the adapters would use, computed with the adapters' own functions."""
    from hexbus.domain.events import event_registry  # noqa: PLC0415

    events = [event_registry.get(m["name"]) for m in doc["components"]["messages"].values()]
    if adapter == "kafka":
        return {kafka_topology.event_topic("prod.", cls) for cls in events}
    expected = {cls.event_type for cls in events}
    if adapter == "rabbitmq":
        for op in doc["operations"].values():
            sub = op.get("x-hexbus-subscription")
            if sub is not None:
                expected.add(amqp_topology.work_queue_name("shop", sub["name"]))
    return expected


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka", "memory"])
@pytest.mark.parametrize("path", APPS_UNDER_TEST)
def test_the_official_parser_finds_no_error_and_no_warning(path: str, adapter: str) -> None:
    fmt = "yaml" if adapter != "kafka" else "json"  # both formats go through the parser
    text = generate(path, adapter, fmt)

    code, report = validate(text)

    assert report["errors"] == 0, report["diagnostics"]
    assert report["warnings"] == 0, report["diagnostics"]
    assert report["problems"] == []  # examples fit their schemas; addresses pair
    assert code == 0 and report["valid"] is True
    # What the parser read is the real topology (it cannot know that by itself).
    doc = json.loads(generate(path, adapter, "json"))
    read = {c["address"] for c in report["channels"]}
    assert read == _expected_addresses(doc, adapter)
    assert all(c["parameters"] == [] for c in report["channels"])  # no variables anywhere
    assert {o["id"] for o in report["operations"]} == set(doc["operations"])
    assert any(o["action"] == "receive" for o in report["operations"])
    assert any(o["action"] == "send" for o in report["operations"])
    if adapter != "memory":
        protocol = "amqp" if adapter == "rabbitmq" else "kafka"
        assert all(protocol in c["bindings"] for c in report["channels"])


def test_the_validator_fails_on_what_the_parser_lets_through() -> None:
    """A wrong example and an address variable without parameter: the parser is silent on
    both (3.x), the script's own checks are not."""
    doc = json.loads(generate("asyncapi_apps.shop:ShopContainer", "kafka", "json"))
    message = doc["components"]["messages"]["StockLow"]
    message["examples"][0]["payload"]["left"] = "many"
    message["examples"][0]["headers"]["ce_type"] = "asyncapitest.other"
    doc["channels"]["prod.asyncapitest.stock.low"]["address"] = "prod.{region}.stock.low"

    code, report = validate(json.dumps(doc))

    assert code == 1 and report["valid"] is False
    problems = " | ".join(report["problems"])
    assert "StockLow: example 0 payload: /left must be integer" in problems
    assert "StockLow: example 0 headers: /ce_type must be equal to constant" in problems
    assert "uses {region} without a parameter" in problems


def test_the_validator_reports_parser_errors() -> None:
    doc = json.loads(generate("hexbus.demo:DemoContainer", "rabbitmq", "json"))
    del doc["info"]["version"]
    doc["operations"]["send:user.created"]["channel"] = {"$ref": "#/channels/nowhere"}

    code, report = validate(json.dumps(doc))

    assert code == 1 and report["valid"] is False
    assert report["errors"] >= 2
    errors = {
        (d["code"], tuple(d["path"])) for d in report["diagnostics"] if d["severity"] == "error"
    }
    assert ("asyncapi-document-resolved", ("info",)) in errors  # info.version is required
    assert ("invalid-ref", ("operations", "send:user.created", "channel", "$ref")) in errors
