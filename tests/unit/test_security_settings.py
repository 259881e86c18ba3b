"""TLS/SASL settings: validation with messages that name the variable, masking of the
secrets, SSL contexts from the files, the OAUTHBEARER token provider, and the reading of
TLS failures (against a local TLS server: a real handshake, no broker needed)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import ssl
import subprocess
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.abc import AbstractTokenProvider
from pydantic import SecretStr

from hexbus import ConfigurationError
from hexbus.infrastructure.kafka import KafkaConfig, KafkaEventBus
from hexbus.infrastructure.rabbitmq import RabbitMQConfig, RabbitMQEventBus
from hexbus.infrastructure.security import (
    SecurityError,
    TlsFiles,
    client_context,
    explain_tls_error,
    kafka_client_options,
    probe_tls,
    security_mode,
)
from hexbus.infrastructure.settings import HexbusSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
tls: Any = importlib.import_module("harness.tls")

SECRET = "s3cr3t-Pa55-4711"
SCRAM = {
    "adapter": "kafka",
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "svc",
    "kafka_sasl_password": SECRET,
}


@pytest.fixture(autouse=True)
def _no_hexbus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no HEXBUS_* of the shell (CI exports broker addresses)."""
    for name in list(os.environ):
        if name.startswith("HEXBUS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tls.make_authority(tmp_path_factory.mktemp("ca"), "unit test CA")


def _error(**settings: Any) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**settings)
    return str(info.value)


# -- defaults and parsing -------------------------------------------------------------


def test_defaults_are_plaintext_kafka_and_verifying_tls() -> None:
    settings = load_settings()
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.kafka_sasl_mechanism is None and settings.kafka_sasl_password is None
    assert settings.kafka_ssl_check_hostname is True
    assert settings.rabbitmq_ssl_verify is True


def test_variables_are_read_and_kafka_names_normalised(
    monkeypatch: pytest.MonkeyPatch, authority: Any
) -> None:
    env = {
        "HEXBUS_ADAPTER": "kafka",
        "HEXBUS_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "HEXBUS_KAFKA_SASL_MECHANISM": "scram_sha_256",
        "HEXBUS_KAFKA_SASL_USERNAME": "svc",
        "HEXBUS_KAFKA_SASL_PASSWORD": SECRET,
        "HEXBUS_KAFKA_SSL_CAFILE": str(authority.ca),
        "HEXBUS_KAFKA_SSL_CHECK_HOSTNAME": "false",
        "HEXBUS_KAFKA_SSL_KEY_PASSWORD": "",  # empty: not set
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == SECRET
    assert settings.kafka_ssl_cafile == str(authority.ca)
    assert settings.kafka_ssl_check_hostname is False
    assert settings.kafka_ssl_key_password is None


def test_an_unknown_protocol_lists_the_allowed_ones() -> None:
    message = _error(adapter="kafka", kafka_security_protocol="TLS")
    assert "HEXBUS_KAFKA_SECURITY_PROTOCOL='TLS'" in message
    for allowed in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        assert allowed in message


# -- Kafka rules ------------------------------------------------------------------------


def test_sasl_needs_a_mechanism() -> None:
    message = _error(adapter="kafka", kafka_security_protocol="SASL_SSL")
    assert (
        "HEXBUS_KAFKA_SASL_MECHANISM is required with HEXBUS_KAFKA_SECURITY_PROTOCOL=SASL_SSL"
    ) in message
    assert "SCRAM-SHA-512" in message


def test_scram_needs_user_name_and_password() -> None:
    message = _error(
        adapter="kafka", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512"
    )
    assert (
        "HEXBUS_KAFKA_SASL_USERNAME, HEXBUS_KAFKA_SASL_PASSWORD are required with "
        "HEXBUS_KAFKA_SASL_MECHANISM=SCRAM-SHA-512"
    ) in message


def test_a_password_without_sasl_is_refused_without_showing_it() -> None:
    message = _error(adapter="kafka", kafka_sasl_username="svc", kafka_sasl_password=SECRET)
    assert (
        "HEXBUS_KAFKA_SASL_USERNAME, HEXBUS_KAFKA_SASL_PASSWORD are set, but "
        "HEXBUS_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not authenticate"
    ) in message
    assert "SASL_SSL" in message
    assert SECRET not in message


def test_tls_files_without_tls_are_refused(authority: Any) -> None:
    message = _error(adapter="kafka", kafka_ssl_cafile=str(authority.ca))
    assert "HEXBUS_KAFKA_SSL_CAFILE is set, but HEXBUS_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in message
    message = _error(adapter="kafka", kafka_ssl_check_hostname=False)
    assert "HEXBUS_KAFKA_SSL_CHECK_HOSTNAME=false is set" in message


def test_missing_files_and_a_key_without_its_certificate_are_named(
    tmp_path: Path, authority: Any
) -> None:
    message = _error(
        **SCRAM,
        kafka_ssl_cafile=str(tmp_path / "nope.pem"),
        kafka_ssl_keyfile=str(authority.client_key),
    )
    assert f"HEXBUS_KAFKA_SSL_CAFILE='{tmp_path / 'nope.pem'}': no such file" in message
    assert "HEXBUS_KAFKA_SSL_KEYFILE is set without HEXBUS_KAFKA_SSL_CERTFILE" in message
    assert SECRET not in message


def test_oauthbearer_needs_a_token_provider_and_no_password() -> None:
    message = _error(
        adapter="kafka",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_sasl_password=SECRET,
    )
    assert "HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER is required" in message
    assert (
        "HEXBUS_KAFKA_SASL_PASSWORD is not used with HEXBUS_KAFKA_SASL_MECHANISM=OAUTHBEARER"
    ) in message
    assert SECRET not in message
    message = _error(**SCRAM, kafka_sasl_oauth_token_provider="app.auth:provider")
    assert "HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER is only used with" in message
    message = _error(adapter="kafka", kafka_sasl_oauth_token_provider="no colon")
    assert "HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER='no colon'" in message


def test_only_the_selected_adapter_is_checked() -> None:
    settings = load_settings(adapter="memory", kafka_sasl_password=SECRET)
    assert settings.kafka_sasl_password is not None


# -- RabbitMQ rules -----------------------------------------------------------------------


def test_rabbitmq_tls_settings_need_an_amqps_url(authority: Any) -> None:
    message = _error(adapter="rabbitmq", rabbitmq_ssl_cafile=str(authority.ca))
    assert "HEXBUS_RABBITMQ_SSL_CAFILE is set, but HEXBUS_RABBITMQ_URL uses amqp://" in message
    assert "amqps://" in message
    message = _error(adapter="rabbitmq", rabbitmq_ssl_verify=False)
    assert "HEXBUS_RABBITMQ_SSL_VERIFY=false is set" in message
    settings = load_settings(
        adapter="rabbitmq",
        rabbitmq_url="amqps://u:p@broker.example:5671/",
        rabbitmq_ssl_cafile=str(authority.ca),
    )
    assert settings.rabbitmq_ssl_cafile == str(authority.ca)


def test_rabbitmq_missing_files_are_named(tmp_path: Path) -> None:
    message = _error(
        adapter="rabbitmq",
        rabbitmq_url="amqps://u:p@broker.example/",
        rabbitmq_ssl_certfile=str(tmp_path),
    )
    assert f"HEXBUS_RABBITMQ_SSL_CERTFILE='{tmp_path}': is a directory" in message


# -- masking -----------------------------------------------------------------------------


def test_secrets_are_masked_in_repr_dump_and_errors(authority: Any) -> None:
    settings = load_settings(
        **SCRAM,
        kafka_ssl_certfile=str(authority.client_cert),
        kafka_ssl_keyfile=str(authority.client_key),
        kafka_ssl_key_password="k3y-" + SECRET,
    )
    dumped = settings.safe_dump()
    assert dumped["kafka_sasl_password"] == "***"
    assert dumped["kafka_ssl_key_password"] == "***"
    assert SECRET not in repr(settings) and SECRET not in str(dumped)
    assert set(settings.secret_values()) >= {SECRET, "k3y-" + SECRET, "guest"}
    message = _error(**{**SCRAM, "kafka_sasl_username": None})
    assert SECRET not in message


def test_adapter_configs_refuse_bad_combinations_naming_fields(authority: Any) -> None:
    with pytest.raises(ValueError) as info:
        KafkaConfig(sasl_password=SECRET)
    assert "sasl_password is set, but security_protocol=PLAINTEXT" in str(info.value)
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError) as info:
        RabbitMQConfig(url=f"amqp://u:{SECRET}@h/", ssl_cafile=str(authority.ca))
    assert "ssl_cafile is set, but url uses amqp://" in str(info.value)
    assert SECRET not in str(info.value)
    config = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SECRET,
    )
    assert SECRET not in repr(config)


def test_from_settings_maps_every_security_setting(authority: Any) -> None:
    settings = HexbusSettings(
        **SCRAM,
        kafka_ssl_cafile=str(authority.ca),
        kafka_ssl_certfile=str(authority.client_cert),
        kafka_ssl_keyfile=str(authority.client_key),
        kafka_ssl_check_hostname=False,
    )
    config = KafkaEventBus.from_settings(settings).config
    assert (config.security_protocol, config.sasl_mechanism, config.sasl_username) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "svc",
    )
    assert config.sasl_password is not None and config.sasl_password.get_secret_value() == SECRET
    assert (config.ssl_cafile, config.ssl_certfile, config.ssl_keyfile) == (
        str(authority.ca),
        str(authority.client_cert),
        str(authority.client_key),
    )
    assert config.ssl_check_hostname is False

    rabbit = HexbusSettings(
        adapter="rabbitmq",
        rabbitmq_url="amqps://u:p@broker.example/",
        rabbitmq_ssl_cafile=str(authority.ca),
        rabbitmq_ssl_certfile=str(authority.client_cert),
        rabbitmq_ssl_keyfile=str(authority.client_key),
        rabbitmq_ssl_verify=False,
    )
    rconfig = RabbitMQEventBus.from_settings(rabbit).config
    assert (rconfig.ssl_cafile, rconfig.ssl_certfile, rconfig.ssl_keyfile) == (
        str(authority.ca),
        str(authority.client_cert),
        str(authority.client_key),
    )
    assert rconfig.ssl_verify is False


# -- contexts and client options -------------------------------------------------------------


def test_the_context_trusts_the_ca_file_and_presents_the_client_certificate(
    authority: Any,
) -> None:
    context = client_context(
        TlsFiles(cafile=str(authority.ca), certfile=str(authority.client_cert),
                 keyfile=str(authority.client_key))
    )  # fmt: skip
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert any("unit test CA" in str(c.get("subject")) for c in context.get_ca_certs())
    relaxed = client_context(TlsFiles(cafile=str(authority.ca), check_hostname=False))
    assert relaxed.verify_mode is ssl.CERT_REQUIRED and not relaxed.check_hostname
    off = client_context(TlsFiles(cafile=str(authority.ca), verify=False))
    assert off.verify_mode is ssl.CERT_NONE


def test_unusable_files_are_named(tmp_path: Path, authority: Any) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate")
    with pytest.raises(SecurityError) as info:
        client_context(TlsFiles(cafile=str(not_pem)))
    assert info.value.problem == "file"
    assert f"HEXBUS_KAFKA_SSL_CAFILE={str(not_pem)!r} cannot be used" in str(info.value)

    with pytest.raises(SecurityError) as info:
        client_context(TlsFiles(certfile=str(authority.client_cert), keyfile=str(authority.ca_key)))
    assert "does not belong to the certificate" in str(info.value)
    assert "HEXBUS_KAFKA_SSL_KEYFILE" in str(info.value)


def _encrypted_key(authority: Any, tmp_path: Path, password: str) -> Path:
    target = tmp_path / "client-encrypted.key"
    subprocess.run(
        ["openssl", "pkcs8", "-topk8", "-in", str(authority.client_key), "-out", str(target),
         "-passout", f"pass:{password}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def test_an_encrypted_key_needs_its_password(tmp_path: Path, authority: Any) -> None:
    key = _encrypted_key(authority, tmp_path, SECRET)
    files = TlsFiles(certfile=str(authority.client_cert), keyfile=str(key))
    with pytest.raises(SecurityError) as info:
        client_context(files)  # never a prompt on the terminal
    assert "is encrypted: set HEXBUS_KAFKA_SSL_KEY_PASSWORD" in str(info.value)

    wrong = TlsFiles(
        certfile=str(authority.client_cert),
        keyfile=str(key),
        key_password=SecretStr("wrong-" + SECRET),
    )
    with pytest.raises(SecurityError) as info:
        client_context(wrong)
    assert "HEXBUS_KAFKA_SSL_KEY_PASSWORD does not decrypt the client key" in str(info.value)
    assert SECRET not in str(info.value)

    config = KafkaConfig(
        security_protocol="SSL",
        ssl_cafile=str(authority.ca),
        ssl_certfile=str(authority.client_cert),
        ssl_keyfile=str(key),
        ssl_key_password=SECRET,
    )
    assert isinstance(config.client_security()["ssl_context"], ssl.SSLContext)

    rabbit = RabbitMQConfig(
        url="amqps://u:p@h/", ssl_certfile=str(authority.client_cert), ssl_keyfile=str(key)
    )
    with pytest.raises(SecurityError) as info:
        rabbit.tls_context()
    assert "HEXBUS_RABBITMQ_SSL_KEYFILE must name an unencrypted key" in str(info.value)


def test_kafka_client_options_follow_the_protocol(authority: Any) -> None:
    assert kafka_client_options("PLAINTEXT") == {"security_protocol": "PLAINTEXT"}
    scram = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SECRET,
        ssl_cafile=str(authority.ca),
    ).client_security()
    assert scram["security_protocol"] == "SASL_SSL"
    assert (scram["sasl_mechanism"], scram["sasl_plain_username"]) == ("SCRAM-SHA-512", "svc")
    assert scram["sasl_plain_password"] == SECRET  # the client needs it in the clear
    assert isinstance(scram["ssl_context"], ssl.SSLContext)
    plain = KafkaConfig(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=SECRET,
    ).client_security()
    assert "ssl_context" not in plain
    assert RabbitMQConfig().tls_context() is None
    assert isinstance(
        RabbitMQConfig(url="amqps://u:p@h/", ssl_cafile=str(authority.ca)).tls_context(),
        ssl.SSLContext,
    )


# -- OAUTHBEARER ---------------------------------------------------------------------------


class StaticToken(AbstractTokenProvider):
    async def token(self) -> str:
        return "token"


@pytest.fixture
def provider_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module with a provider instance, its class, a factory and a non-provider."""
    name = f"oauth_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from aiokafka.abc import AbstractTokenProvider

            class Provider(AbstractTokenProvider):
                async def token(self):
                    return "token"

            provider = Provider()

            def make():
                return Provider()

            def broken():
                raise RuntimeError("no identity endpoint")

            class Holder:
                provider = provider

            not_a_provider = 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _oauth(provider: Any) -> KafkaConfig:
    return KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_provider=provider,
    )


@pytest.mark.parametrize("attribute", ["provider", "Provider", "make", "Holder.provider"])
def test_the_token_provider_is_loaded_from_module_attribute(
    provider_module: str, attribute: str
) -> None:
    options = _oauth(f"{provider_module}:{attribute}").client_security()
    found = options["sasl_oauth_token_provider"]
    assert isinstance(found, AbstractTokenProvider)
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    assert "sasl_plain_password" not in options
    assert asyncio.run(found.token()) == "token"


def test_a_token_provider_object_is_used_as_it_is() -> None:
    provider = StaticToken()
    assert _oauth(provider).client_security()["sasl_oauth_token_provider"] is provider


def test_the_token_provider_setting_reaches_the_bus(
    provider_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", "kafka")
    monkeypatch.setenv("HEXBUS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER", f"{provider_module}:provider")
    bus = KafkaEventBus.from_settings(load_settings())
    module = importlib.import_module(provider_module)
    assert bus.topology.security["sasl_oauth_token_provider"] is module.provider


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        ("not_a_provider", "is a int, not an aiokafka.abc.AbstractTokenProvider"),
        ("missing", "has no attribute 'missing'"),
        ("broken", "raised RuntimeError: no identity endpoint"),
    ],
)
def test_a_bad_token_provider_is_named(provider_module: str, attribute: str, expected: str) -> None:
    spec = f"{provider_module}:{attribute}"
    with pytest.raises(ConfigurationError) as info:
        _oauth(spec).client_security()
    assert f"HEXBUS_KAFKA_SASL_OAUTH_TOKEN_PROVIDER={spec!r}" in str(info.value)
    assert expected in str(info.value)


def test_an_unimportable_token_provider_module_is_named() -> None:
    with pytest.raises(ConfigurationError) as info:
        _oauth("no_such_module_4711:provider").client_security()
    assert "cannot import 'no_such_module_4711'" in str(info.value)


# -- the mode and reading TLS failures --------------------------------------------------------


def test_security_mode_describes_the_configured_adapter(authority: Any) -> None:
    kafka = security_mode(load_settings(**SCRAM, kafka_ssl_cafile=str(authority.ca)))
    assert kafka is not None
    assert kafka.text == (
        f"SASL_SSL; SCRAM-SHA-512 as 'svc'; CA file {authority.ca}, hostname verification on"
    )
    rabbit = security_mode(
        load_settings(adapter="rabbitmq", rabbitmq_url=f"amqps://app:{SECRET}@h/")
    )
    assert rabbit is not None and SECRET not in rabbit.text
    assert rabbit.text == "TLS (amqps); PLAIN as 'app'; system CAs, hostname verification on"
    assert security_mode(load_settings(adapter="rabbitmq")).mode == "plaintext (amqp)"  # type: ignore[union-attr]
    assert security_mode(load_settings()) is None


@contextlib.asynccontextmanager
async def _tls_server(authority: Any, host: str) -> AsyncIterator[int]:
    """A TLS server with the authority's server certificate (localhost, 127.0.0.1)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(authority.server_cert, authority.server_key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(100)
        writer.close()

    server = await asyncio.start_server(serve, host, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_certificate_for_another_name_is_explained(authority: Any) -> None:
    async with _tls_server(authority, "127.0.0.2") as port:
        files = TlsFiles(cafile=str(authority.ca))
        probe = await probe_tls("127.0.0.2", port, client_context(files))
        assert not probe.ok and probe.error is not None
        error = explain_tls_error(
            probe.error,
            host="127.0.0.2",
            port=port,
            tls=files,
            address="HEXBUS_KAFKA_BOOTSTRAP_SERVERS",
            not_tls="",
            hostname_escape="HEXBUS_KAFKA_SSL_CHECK_HOSTNAME=false",
        )
        assert error is not None and error.problem == "hostname"
        assert "does not name '127.0.0.2'" in str(error)
        assert "HEXBUS_KAFKA_SSL_CHECK_HOSTNAME=false" in str(error)

        relaxed = TlsFiles(cafile=str(authority.ca), check_hostname=False)
        probe = await probe_tls("127.0.0.2", port, client_context(relaxed))
        assert probe.ok, probe.detail
        assert "CN=localhost" in probe.detail and "unit test CA" in probe.detail


async def test_a_plaintext_server_is_told_apart_from_a_tls_one(authority: Any) -> None:
    async def answer_in_plaintext(reader: asyncio.StreamReader, writer: Any) -> None:
        with contextlib.suppress(Exception):
            await reader.read(100)
            writer.write(b"AMQP\x00\x00\x09\x01")  # what RabbitMQ answers a stranger
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_in_plaintext, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        files = TlsFiles(cafile=str(authority.ca), prefix="HEXBUS_RABBITMQ_SSL_")
        probe = await probe_tls("127.0.0.1", port, client_context(files))
        assert not probe.ok and probe.error is not None
        error = explain_tls_error(
            probe.error,
            host="127.0.0.1",
            port=port,
            tls=files,
            address="HEXBUS_RABBITMQ_URL",
            not_tls="use amqp://",
            hostname_escape="HEXBUS_RABBITMQ_SSL_VERIFY=false",
        )
        assert error is not None and error.problem == "protocol"
        assert f"127.0.0.1:{port} does not speak TLS" in str(error)
        assert "".join(traceback.format_exception(error))  # printable
    finally:
        server.close()


# -- the harness's secure sets (scripts/harness/tls.py) --------------------------------------


def test_a_secure_state_prints_the_variables_a_client_needs(tmp_path: Path) -> None:
    state_mod: Any = importlib.import_module("harness.state")
    nodes: Any = importlib.import_module("harness.nodes")
    kafka: Any = importlib.import_module("harness.kafka")
    rabbitmq: Any = importlib.import_module("harness.rabbitmq")
    state = state_mod.State.from_options(str(tmp_path / "secure"))
    secure = tls.enable(state, 1)
    assert tls.load(state) == secure  # recorded: later commands stay secure
    layout = nodes.Layout(state, 1)
    for node in layout.nodes:
        node.ports = {"port": 20001} if node.kind == "rabbitmq" else {
            "port": 20002,
            "controller_port": 20003,
        }

    rabbit_lines = rabbitmq.env_line(layout.of_kind("rabbitmq")).splitlines()
    kafka_lines = kafka.env_line(layout.of_kind("kafka")).splitlines()
    env = dict(line.split("=", 1) for line in rabbit_lines + kafka_lines)
    assert env["HEXBUS_RABBITMQ_URL"] == (
        f"amqps://hexbus:{secure.rabbitmq_password}@127.0.0.1:20001/"
    )
    assert env["HEXBUS_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["HEXBUS_KAFKA_SASL_PASSWORD"] == secure.kafka_password
    assert env["HEXBUS_RABBITMQ_SSL_CAFILE"] == env["HEXBUS_KAFKA_SSL_CAFILE"]
    # what a client makes of them: settings that validate, a context that loads the CA
    settings = HexbusSettings(
        adapter="kafka", **{k[7:].lower(): v for k, v in env.items() if "KAFKA" in k}
    )
    assert security_mode(settings).mode == "SASL_SSL"  # type: ignore[union-attr]
    properties = kafka.properties(layout.of_kind("kafka")[0], layout.of_kind("kafka"))
    assert "listeners=SASL_SSL://127.0.0.1:20002," in properties
    assert "ssl.keystore.type=PEM" in properties


def test_a_state_with_plain_brokers_is_not_made_secure(tmp_path: Path) -> None:
    state_mod: Any = importlib.import_module("harness.state")
    processes: Any = importlib.import_module("harness.processes")
    state = state_mod.State.from_options(str(tmp_path / "plain"))
    (state.node_root("kafka", 1) / "kafka-1" / "data").mkdir(parents=True)
    with pytest.raises(processes.BrokerError, match="started without --secure"):
        tls.enable(state, 1)
    assert tls.load(state) is None


def test_cli_redact_masks_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from hexbus.cli._common import redact  # noqa: PLC0415 - the CLI helper under test
    from hexbus.infrastructure.settings import load_settings  # noqa: PLC0415

    monkeypatch.setenv("HEXBUS_RABBITMQ_URL", "amqp://u:url-secret@127.0.0.1:5672/")
    monkeypatch.setenv("HEXBUS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_USERNAME", "user")
    monkeypatch.setenv("HEXBUS_KAFKA_SASL_PASSWORD", "sasl-secret")
    settings = load_settings(adapter="kafka")
    text = redact(settings, "auth failed: url-secret / sasl-secret")
    assert text == "auth failed: *** / ***"
