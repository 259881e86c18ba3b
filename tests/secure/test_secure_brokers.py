"""Secured connections against real brokers: RabbitMQ over TLS, Kafka over SASL_SSL.

Everything goes through the ``HEXBUS_*`` variables, as a deployment would configure it
(``secure_env`` sets exactly the secure set's). Each mistake a deployment makes -- a
wrong password, a CA file that does not hold the broker's CA, a plaintext client on the
TLS port (and the other way round) -- must fail at start-up with a ``SecurityError``
(a ``ConfigurationError``) that names the variable to fix, and no secret may appear in
the message, its traceback, the bus's repr or anything logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from secure_set import SecureBrokers
from typer.testing import CliRunner

from hexbus import ConfigurationError, DomainEvent
from hexbus.cli import app
from hexbus.domain.ports import EventBus
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.security import SecurityError
from hexbus.infrastructure.settings import load_settings
from hexbus.testing import eventually

pytestmark = pytest.mark.integration

runner = CliRunner()


class SecureOrderPlaced(DomainEvent, event_type="hexbus.test.secure.order_placed"):
    order_id: str


def _bus(adapter: str) -> EventBus:
    return build_bus(load_settings(adapter=adapter))


def _all_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def _secrets(env: dict[str, str]) -> list[str]:
    """The set's real passwords: none may ever be shown."""
    password = urlsplit(env["HEXBUS_RABBITMQ_URL"]).password
    assert password
    return [env["HEXBUS_KAFKA_SASL_PASSWORD"], password]


async def _start_fails(adapter: str) -> tuple[SecurityError, EventBus]:
    bus = _bus(adapter)
    try:
        with pytest.raises(ConfigurationError) as info:
            await bus.start()
    finally:
        await bus.stop()
    assert isinstance(info.value, SecurityError), info.value
    return info.value, bus


async def _round_trip(bus: Any) -> None:
    seen: list[str] = []

    async def on_order(event: SecureOrderPlaced) -> None:
        seen.append(event.order_id)

    bus.subscribe(SecureOrderPlaced, on_order, name="secure-probe")
    await bus.start()
    try:
        await bus.wait_ready(60)
        await bus.publish(SecureOrderPlaced(order_id="o-1"))
        await bus.publish_many([SecureOrderPlaced(order_id="o-2")])
        await eventually(lambda: seen == ["o-1", "o-2"], timeout=60, message=lambda: f"{seen}")
    finally:
        with contextlib.suppress(Exception):
            await bus.delete_subscription("secure-probe")
        await bus.stop()


# -- publish and consume over the secured connections ------------------------------------


async def test_rabbitmq_over_tls_publishes_and_consumes(secure_env: dict[str, str]) -> None:
    settings = load_settings(adapter="rabbitmq")
    assert settings.rabbitmq_url.startswith("amqps://")  # the set has no plaintext listener
    assert settings.rabbitmq_ssl_cafile and settings.rabbitmq_ssl_verify
    await _round_trip(build_bus(settings))


async def test_kafka_over_sasl_ssl_scram_publishes_and_consumes(
    secure_env: dict[str, str],
) -> None:
    settings = load_settings(adapter="kafka")
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )
    assert settings.kafka_ssl_check_hostname
    await _round_trip(build_bus(settings))


async def test_kafka_scram_sha_256_is_accepted_too(
    secure_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_MECHANISM", "scram-sha-256")
    bus = _bus("kafka")
    await bus.start()
    await bus.stop()


async def test_rabbitmq_client_certificate_is_presented_and_verified(
    secure_env: dict[str, str],
    secure_brokers: SecureBrokers,
    other_authority: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker verifies a client certificate it is shown (``verify_peer``): the set's
    own is accepted, one from another CA refused, so the files really are sent."""
    own = secure_brokers.authority
    monkeypatch.setenv("HEXBUS_RABBITMQ_SSL_CERTFILE", str(own.client_cert))
    monkeypatch.setenv("HEXBUS_RABBITMQ_SSL_KEYFILE", str(own.client_key))
    bus = _bus("rabbitmq")
    await bus.start()
    await bus.stop()

    monkeypatch.setenv("HEXBUS_RABBITMQ_SSL_CERTFILE", str(other_authority.client_cert))
    monkeypatch.setenv("HEXBUS_RABBITMQ_SSL_KEYFILE", str(other_authority.client_key))
    error, _ = await _start_fails("rabbitmq")
    assert error.problem == "client-certificate"
    assert "HEXBUS_RABBITMQ_SSL_CERTFILE" in str(error)
    assert str(other_authority.client_cert) in str(error)


async def test_rabbitmq_verification_can_be_turned_off_and_says_so(
    secure_env: dict[str, str],
    other_authority: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("HEXBUS_RABBITMQ_SSL_CAFILE", str(other_authority.ca))
    monkeypatch.setenv("HEXBUS_RABBITMQ_SSL_VERIFY", "false")
    with caplog.at_level(logging.WARNING, logger="hexbus"):
        bus = _bus("rabbitmq")
    await bus.start()
    await bus.stop()
    assert "HEXBUS_RABBITMQ_SSL_VERIFY=false" in caplog.text


# -- wrong password ----------------------------------------------------------------------


async def test_kafka_wrong_password_fails_at_start_naming_the_variable(
    secure_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_PASSWORD", wrong)

    error, bus = await _start_fails("kafka")

    assert error.problem == "credentials"
    assert "HEXBUS_KAFKA_SASL_PASSWORD" in str(error) and "'hexbus'" in str(error)
    shown = _all_text(error) + caplog.text + repr(bus) + repr(load_settings())
    for secret in [wrong, *_secrets(secure_env)]:
        assert secret not in shown


async def test_rabbitmq_wrong_password_fails_at_start_naming_the_variable(
    secure_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{uuid.uuid4().hex}"
    parts = urlsplit(secure_env["HEXBUS_RABBITMQ_URL"])
    netloc = f"{parts.username}:{wrong}@{parts.hostname}:{parts.port}"
    monkeypatch.setenv("HEXBUS_RABBITMQ_URL", urlunsplit(parts._replace(netloc=netloc)))

    error, bus = await _start_fails("rabbitmq")

    assert error.problem == "credentials"
    assert "HEXBUS_RABBITMQ_URL" in str(error) and "***" in str(error)
    shown = _all_text(error) + caplog.text + repr(bus) + repr(load_settings())
    for secret in [wrong, *_secrets(secure_env)]:
        assert secret not in shown


# -- untrusted certificate ----------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["rabbitmq", "kafka"])
async def test_a_ca_file_without_the_brokers_ca_fails_naming_the_variable(
    adapter: str,
    secure_env: dict[str, str],
    other_authority: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    variable = f"HEXBUS_{adapter.upper()}_SSL_CAFILE"
    monkeypatch.setenv(variable, str(other_authority.ca))

    error, _ = await _start_fails(adapter)

    assert error.problem == "certificate"
    assert variable in str(error) and str(other_authority.ca) in str(error)
    assert "not trusted" in str(error)
    for secret in _secrets(secure_env):
        assert secret not in _all_text(error) + caplog.text


# -- plaintext to TLS, TLS to plaintext ---------------------------------------------------


async def test_rabbitmq_amqp_url_on_the_tls_port_fails_clearly(
    secure_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = secure_env["HEXBUS_RABBITMQ_URL"].replace("amqps://", "amqp://", 1)
    monkeypatch.setenv("HEXBUS_RABBITMQ_URL", url)
    monkeypatch.delenv("HEXBUS_RABBITMQ_SSL_CAFILE")

    error, _ = await _start_fails("rabbitmq")

    assert error.problem == "protocol"
    assert "speaks TLS" in str(error) and "amqps://" in str(error)
    assert "HEXBUS_RABBITMQ_URL" in str(error)
    for secret in _secrets(secure_env):
        assert secret not in _all_text(error)


async def test_kafka_plaintext_client_on_the_sasl_ssl_port_fails_clearly(
    secure_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEXBUS_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    for name in secure_env:
        if name.startswith(("HEXBUS_KAFKA_SASL_", "HEXBUS_KAFKA_SSL_")):
            monkeypatch.delenv(name)

    error, _ = await _start_fails("kafka")

    assert error.problem == "protocol"
    assert "speaks TLS" in str(error)
    assert "HEXBUS_KAFKA_SECURITY_PROTOCOL=SASL_SSL" in str(error)


async def test_kafka_tls_without_sasl_on_the_sasl_ssl_port_fails_clearly(
    secure_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEXBUS_KAFKA_SECURITY_PROTOCOL", "SSL")
    for name in secure_env:
        if name.startswith("HEXBUS_KAFKA_SASL_"):
            monkeypatch.delenv(name)

    error, _ = await _start_fails("kafka")

    assert error.problem == "protocol"
    assert "requires SASL" in str(error) and "HEXBUS_KAFKA_SECURITY_PROTOCOL" in str(error)


async def test_kafka_sasl_ssl_client_on_a_plaintext_listener_fails_clearly(
    secure_env: dict[str, str], secure_brokers: SecureBrokers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set's controller listener is plaintext Kafka: a TLS client there is told so."""
    port = secure_brokers.kafka_controller_port()
    monkeypatch.setenv("HEXBUS_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")

    error, _ = await _start_fails("kafka")

    assert error.problem == "protocol"
    assert "plaintext Kafka listener" in str(error)
    assert "HEXBUS_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT" in str(error)


# -- hexbus check -------------------------------------------------------------------------


def _check(*args: str) -> tuple[int, dict[str, Any], str]:
    result = runner.invoke(app, ["check", *args])
    stdout = result.stdout
    return result.exit_code, json.loads(stdout) if "--json" in args else {}, result.output


@pytest.mark.parametrize(
    ("adapter", "mode", "mechanism"),
    [("kafka", "SASL_SSL", "SCRAM-SHA-512"), ("rabbitmq", "TLS (amqps)", "PLAIN")],
)
def test_check_reports_the_mode_and_an_accepted_chain_and_credentials(
    adapter: str,
    mode: str,
    mechanism: str,
    secure_env: dict[str, str],
    secure_brokers: SecureBrokers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", adapter)
    code, report, output = _check("--json")

    assert code == 0, output
    security = report["security"]
    assert (security["mode"], security["tls"], security["mechanism"]) == (mode, True, mechanism)
    assert security["user"] == "hexbus"
    assert security["cafile"] == str(secure_brokers.authority.ca)
    assert security["verify"] is True and security["check_hostname"] is True
    assert security["certificate_chain"]["status"] == "accepted"
    assert "CN=localhost" in security["certificate_chain"]["detail"]
    assert security["credentials"] == {"status": "accepted", "detail": f"{mechanism} as 'hexbus'"}
    for secret in _secrets(secure_env):
        assert secret not in output

    code, _, text = _check()
    assert code == 0, text
    assert f"security: {mode}" in text
    assert "certificate chain: accepted" in text and "credentials: accepted" in text


def test_check_reports_rejected_credentials_without_the_password(
    secure_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("HEXBUS_ADAPTER", "kafka")
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_PASSWORD", wrong)
    code, report, output = _check("--json")

    assert code == 1
    security = report["security"]
    assert security["certificate_chain"]["status"] == "accepted"
    assert security["credentials"]["status"] == "rejected"
    assert "HEXBUS_KAFKA_SASL_PASSWORD" in security["credentials"]["detail"]
    assert report["config"]["kafka_sasl_password"] == "***"
    for secret in [wrong, *_secrets(secure_env)]:
        assert secret not in output


def test_check_reports_a_rejected_certificate_chain(
    secure_env: dict[str, str], other_authority: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", "rabbitmq")
    monkeypatch.setenv("HEXBUS_RABBITMQ_SSL_CAFILE", str(other_authority.ca))
    code, report, output = _check("--json")

    assert code == 1
    chain = report["security"]["certificate_chain"]
    assert chain["status"] == "rejected"
    assert "HEXBUS_RABBITMQ_SSL_CAFILE" in chain["detail"]
    assert report["security"]["credentials"]["status"] == "not checked"
    for secret in _secrets(secure_env):
        assert secret not in output
