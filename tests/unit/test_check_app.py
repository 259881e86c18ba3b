"""``hexbus check --app``: the app's wiring, checked subscription by subscription, as a CI step.

Why through the CLI with real app modules: a user's CI runs exactly
``hexbus check --app myservice.main:container --skip-brokers`` and acts on its exit
code; the apps under ``check_apps/`` are imported by ``module:attribute`` the same way.
Each bad app also contains good handlers, so the tests prove one error does not hide
the others (and that everything is printed before the non-zero exit).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hexbus.cli import app

runner = CliRunner()
APPS = Path(__file__).parent
MEMORY = {"HEXBUS_ADAPTER": "memory", "HEXBUS_APP": ""}


@pytest.fixture(autouse=True)
def _apps_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``check_apps`` is a package next to this file (``tests`` itself is no package)."""
    monkeypatch.syspath_prepend(str(APPS))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_json(path: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, Any]:
    result = runner.invoke(app, ["check", "--json", "--app", path, *extra], env=env or MEMORY)
    return result.exit_code, json.loads(result.stdout)


def _rows(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["handler"], s["target"]): s for s in report["subscriptions"]}


def _text(output: str) -> str:
    return " ".join(output.split())


def test_a_good_app_lists_every_subscription_and_passes() -> None:
    code, report = _check_json("check_apps.good:GoodContainer")

    assert code == 0, report
    assert report["ok"] is True
    assert report["app"] == "check_apps.good:GoodContainer"
    assert report["wiring"]["checked"] is True
    assert report["wiring"]["errors"] == [] and report["wiring"]["warnings"] == []
    rows = _rows(report)
    assert set(rows) == {
        ("check_apps.good.on_placed", "checkapp.good.order_placed"),
        ("check_apps.good.audit", "checkapp.good.*"),
        ("check_apps.good.ShippingHandler.handle", "checkapp.good.order_shipped"),
    }
    placed = rows[("check_apps.good.on_placed", "checkapp.good.order_placed")]
    assert placed == {
        "name": "check_apps.good.on_placed",
        "handler": "check_apps.good.on_placed",
        "kind": "async",
        "target": "checkapp.good.order_placed",
        "target_kind": "event",
        "source": "routers[0]",
        "errors": [],
        "warnings": [],
        "ok": True,
    }
    audit = rows[("check_apps.good.audit", "checkapp.good.*")]
    assert (audit["name"], audit["kind"], audit["target_kind"]) == (
        "checkapp.good.audit",
        "def (thread)",
        "pattern",
    )
    shipping = rows[("check_apps.good.ShippingHandler.handle", "checkapp.good.order_shipped")]
    assert (shipping["name"], shipping["source"]) == (
        "check_apps.good.ShippingHandler",
        "handlers[0]",
    )
    assert {"checkapp.good.order_placed", "checkapp.good.order_shipped"} <= set(
        report["wiring"]["catalogue"]
    )


def test_the_text_report_shows_each_subscription_with_its_check() -> None:
    result = runner.invoke(app, ["check", "--app", "check_apps.good:GoodContainer"], env=MEMORY)

    assert result.exit_code == 0, result.output
    text = result.output
    assert "Handler wiring of check_apps.good:GoodContainer" in text
    assert "checkapp.good.audit" in text
    assert "wiring: 3 subscriptions, 0 errors, 0 warnings" in _text(text)


def test_every_annotation_mismatch_is_reported_and_the_check_fails() -> None:
    code, report = _check_json("check_apps.mismatched:MismatchedContainer")

    assert code == 1
    assert report["ok"] is False and report["wiring"]["ok"] is False
    rows = _rows(report)
    good = rows[("check_apps.mismatched.on_captured", "checkapp.mismatch.payment.captured")]
    assert good["ok"] is True and good["errors"] == []
    pattern = rows[("check_apps.mismatched.on_any_payment", "checkapp.mismatch.payment.*")]
    assert pattern["ok"] is False
    (pattern_error,) = pattern["errors"]
    assert "on_any_payment" in pattern_error
    assert "'checkapp.mismatch.payment.*', which also matches PaymentFailed" in pattern_error
    assert "narrow the pattern" in pattern_error
    refund = rows[("check_apps.mismatched.RefundHandler.handle", "checkapp.mismatch.refund.issued")]
    (refund_error,) = refund["errors"]
    assert "subscribed to RefundIssued" in refund_error
    assert "RefundDenied" in refund_error and "fix the annotation" in refund_error
    assert report["wiring"]["errors"] == [pattern_error, refund_error]


def test_the_text_report_prints_all_errors_before_failing() -> None:
    result = runner.invoke(
        app, ["check", "--app", "check_apps.mismatched:MismatchedContainer"], env=MEMORY
    )

    assert result.exit_code == 1
    text = _text(result.output)
    assert "E1 error: handler check_apps.mismatched.on_any_payment" in text
    assert "E2 error: handler check_apps.mismatched.RefundHandler.handle" in text
    assert "wiring: 3 subscriptions, 2 errors, 0 warnings" in text
    assert "check failed: 2 wiring errors in check_apps.mismatched:MismatchedContainer" in text


def test_two_handlers_sharing_a_durable_name_is_an_error_on_both() -> None:
    code, report = _check_json("check_apps.duplicate:DuplicateContainer")

    assert code == 1
    rows = _rows(report)
    sent = rows[("check_apps.duplicate.on_sent", "checkapp.dup.invoice_sent")]
    paid = rows[("check_apps.duplicate.on_paid", "checkapp.dup.invoice_paid")]
    assert sent["name"] == paid["name"] == "checkapp.dup.shared"
    assert sent["errors"] == paid["errors"]
    (message,) = sent["errors"]
    assert "durable name 'checkapp.dup.shared' is used by 2 different handlers" in message
    assert "check_apps.duplicate.on_sent" in message and "check_apps.duplicate.on_paid" in message
    assert "distinct name=" in message
    ledger = rows[("check_apps.duplicate.on_paid_ledger", "checkapp.dup.invoice_paid")]
    assert ledger["ok"] is True
    assert report["wiring"]["errors"] == [message]


def test_a_pattern_matching_no_event_of_the_app_is_a_warning_not_an_error() -> None:
    code, report = _check_json("check_apps.unmatched:UnmatchedContainer")

    assert code == 0, report
    assert report["ok"] is True
    typo = _rows(report)[("check_apps.unmatched.on_parcel", "checkapp.unmatched.parcle.*")]
    assert typo["ok"] is True
    (warning,) = typo["warnings"]
    assert "'checkapp.unmatched.parcle.*', which matches none of the app's" in warning
    assert "(closest: checkapp.unmatched.parcel_scanned" in warning and "typo" in warning
    assert report["wiring"]["warnings"] == [warning]
    scanned = _rows(report)[
        ("check_apps.unmatched.on_scanned", "checkapp.unmatched.parcel_scanned")
    ]
    assert scanned["warnings"] == []


def test_a_router_that_fails_while_built_does_not_hide_the_other_router() -> None:
    code, report = _check_json("check_apps.factory:FactoryContainer")

    assert code == 1
    only = ("check_apps.factory.on_opened", "checkapp.factory.ticket_opened")
    assert set(_rows(report)) == {only}
    (error,) = report["wiring"]["errors"]
    assert error.startswith(
        "building routers[1] of the app (check_apps.factory.build_router) raised "
        "InvalidHandlerError: handler check_apps.factory.on_closed is subscribed to TicketClosed"
    )


def test_a_decorator_that_refuses_its_handler_at_import_is_a_wiring_error() -> None:
    path = "check_apps.import_error:ImportErrorContainer"
    result = runner.invoke(app, ["check", "--json", "--app", path], env=MEMORY)

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["app"] == path
    error = report["error"]
    assert "importing 'check_apps.import_error' raised InvalidHandlerError" in error
    assert "handler check_apps.import_error.on_issued is subscribed to BadgeIssued" in error
    assert "cannot be imported" in error
    text = runner.invoke(app, ["check", "--app", path], env=MEMORY)
    assert text.exit_code == 1
    assert "error: --app 'check_apps.import_error:ImportErrorContainer'" in _text(text.output)


def test_skip_brokers_checks_the_wiring_without_any_broker() -> None:
    env = {
        "HEXBUS_ADAPTER": "rabbitmq",
        "HEXBUS_RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{_closed_port()}/",
        "HEXBUS_APP": "",
    }
    for option in ("--skip-brokers", "--offline"):
        code, report = _check_json("check_apps.good:GoodContainer", option, env=env)
        assert code == 0, report
        assert report["brokers_skipped"] is True
        assert report["brokers"] == [] and report["session"] is None
    bad_code, bad = _check_json("check_apps.mismatched:MismatchedContainer", "--offline", env=env)
    assert bad_code == 1 and len(bad["wiring"]["errors"]) == 2
    result = runner.invoke(app, ["check", "--skip-brokers"], env=env)
    assert result.exit_code == 0, result.output
    assert "broker: not contacted (--skip-brokers)" in _text(result.output)


def test_without_skip_an_unreachable_broker_still_fails_a_good_app() -> None:
    env = {
        "HEXBUS_ADAPTER": "rabbitmq",
        "HEXBUS_RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{_closed_port()}/",
        "HEXBUS_APP": "",
    }
    code, report = _check_json("check_apps.good:GoodContainer", "--timeout", "0.5", env=env)

    assert code == 1
    assert report["wiring"]["ok"] is True
    assert report["brokers"][0]["reachable"] is False


def test_the_app_may_come_from_hexbus_app() -> None:
    env = {"HEXBUS_ADAPTER": "memory", "HEXBUS_APP": "check_apps.duplicate:DuplicateContainer"}
    result = runner.invoke(app, ["check", "--json"], env=env)

    assert result.exit_code == 1
    assert json.loads(result.stdout)["app"] == "check_apps.duplicate:DuplicateContainer"


def test_without_an_app_the_wiring_section_says_how_to_name_it() -> None:
    result = runner.invoke(app, ["check"], env=MEMORY)

    assert result.exit_code == 0, result.output
    text = _text(result.output)
    assert "wiring: not checked" in text
    assert "--app module:attribute" in text and "HEXBUS_APP" in text
    assert "Handler wiring" not in text and "demo.event_tap" not in text  # no demo fallback
    as_json = runner.invoke(app, ["check", "--json"], env=MEMORY)
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["app"] is None and report["subscriptions"] == []
    assert report["wiring"]["checked"] is False
    assert "--app module:attribute" in report["wiring"]["hint"]


def test_the_demo_app_is_wired_correctly() -> None:
    code, report = _check_json("hexbus.demo:DemoContainer")

    assert code == 0, report
    assert report["wiring"]["errors"] == [] and report["wiring"]["warnings"] == []
    names = {s["name"] for s in report["subscriptions"]}
    assert {"demo.event_tap", "demo.audit_counter", "hexbus.audit"} <= names


def test_an_idempotent_handler_without_an_inbox_is_a_wiring_error(tmp_path: Path) -> None:
    code, report = _check_json("check_apps.idempotent:IdempotentContainer")
    assert code == 1
    assert any("idempotent" in e and "HEXBUS_OUTBOX_URL" in e for e in report["wiring"]["errors"])
    assert report["outbox"] is None
    database = f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}"
    code, report = _check_json(
        "check_apps.idempotent:IdempotentContainer",
        env={**MEMORY, "HEXBUS_OUTBOX_URL": database},
    )
    assert code == 0, report
    assert report["outbox"]["ok"] is True
    assert report["outbox"]["tables"] is False  # created when the service starts


def test_an_unreachable_outbox_database_fails_the_check_without_its_password() -> None:
    url = f"postgresql+asyncpg://svc:N0t-for-logs@127.0.0.1:{_closed_port()}/svc"
    result = runner.invoke(app, ["check", "--json"], env={**MEMORY, "HEXBUS_OUTBOX_URL": url})
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["outbox"]["ok"] is False
    assert "HEXBUS_OUTBOX_URL" in report["outbox"]["error"]
    assert "N0t-for-logs" not in result.output
    offline = runner.invoke(
        app, ["check", "--json", "--offline"], env={**MEMORY, "HEXBUS_OUTBOX_URL": url}
    )
    assert offline.exit_code == 0  # --offline contacts nothing
    assert json.loads(offline.stdout)["outbox"]["checked"] is False
