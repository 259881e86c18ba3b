"""Settings, the composition root, the layer rule and the public API surface.

Why these checks: ops choose the transport and its credentials through ``HEXBUS_*``
variables, so a bad value must fail at start-up naming the variable, and a broker
password must never reach a repr, a dump or an error message. The layer rule keeps
broker clients and the DI framework out of the domain and application layers.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hexbus
from hexbus import (
    ConfigurationError,
    Container,
    DomainEvent,
    HexbusSettings,
    InMemoryEventBus,
    default_router,
    load_settings,
    on_event,
)
from hexbus.application.bus import BusState

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret"


class UtCfgPing(DomainEvent, event_type="ut.cfg.ping"):
    pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No HEXBUS_* from the outer environment and no stray .env file."""
    for name in list(os.environ):
        if name.upper().startswith("HEXBUS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def clean_default_router() -> Iterator[Any]:
    before = list(default_router.entries)
    yield default_router
    default_router.entries[:] = before


# -- settings ----------------------------------------------------------------------------
def test_defaults() -> None:
    settings = load_settings()
    assert settings.adapter == "memory"
    assert settings.service_name == "hexbus"
    assert settings.rabbitmq_exchange == "hexbus.events"
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka_topic_prefix == ""
    assert settings.max_attempts == 5
    assert settings.handler_timeout == 30


def test_env_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_SERVICE_NAME", "ut-svc")
    monkeypatch.setenv("HEXBUS_MAX_ATTEMPTS", "7")
    settings = load_settings()
    assert settings.service_name == "ut-svc"
    assert settings.max_attempts == 7


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HEXBUS_SERVICE_NAME=from-dotenv\n", encoding="utf-8")
    assert load_settings().service_name == "from-dotenv"


def test_bogus_adapter_names_the_variable_and_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", "bogus")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = str(info.value)
    assert "HEXBUS_ADAPTER" in message
    for adapter in ("memory", "rabbitmq", "kafka"):
        assert adapter in message


def test_bogus_adapter_fails_in_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_ADAPTER", "bogus")
    with pytest.raises(ConfigurationError, match="HEXBUS_ADAPTER"):
        Container().event_bus()


def test_max_attempts_zero_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError, match="HEXBUS_MAX_ATTEMPTS"):
        load_settings()


def test_password_never_in_repr_or_dump() -> None:
    url = f"amqp://user:{SECRET}@broker.example:5672/vhost"
    settings = load_settings(rabbitmq_url=url)
    assert settings.rabbitmq_url == url  # the real value is still there for the adapter
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    dumped = settings.safe_dump()
    assert SECRET not in repr(dumped)
    assert "broker.example" in dumped["rabbitmq_url"]
    assert "user" in dumped["rabbitmq_url"]


def test_password_from_env_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_RABBITMQ_URL", f"amqps://u:{SECRET}@h/")
    settings = HexbusSettings()
    assert settings.rabbitmq_url.startswith("amqps://")
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        f"http://u:{SECRET}@h/",
        f"redis://admin:{SECRET}@h:6379/0",
        f"ftp://admin:{SECRET}@h",
        pytest.param(
            f"u:{SECRET}@h",
            id="no-scheme-slashes",
        ),
    ],
)
def test_password_never_in_configuration_error(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(rabbitmq_url=url)
    assert "HEXBUS_RABBITMQ_URL" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)

    monkeypatch.setenv("HEXBUS_RABBITMQ_URL", url)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("port", ["notaport", "99999"])
def test_url_with_a_bad_port_still_redacts(port: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(rabbitmq_url=f"http://u:{SECRET}@h:{port}/")
    assert SECRET not in str(info.value)
    settings = load_settings(rabbitmq_url=f"amqp://u:{SECRET}@h:{port}/")
    assert SECRET not in repr(settings)


# -- the container -----------------------------------------------------------------------
def test_container_defaults_to_memory() -> None:
    container = Container()
    bus = container.event_bus()
    assert isinstance(bus, InMemoryEventBus)
    assert bus.state is BusState.NEW
    assert container.event_bus() is bus  # one bus per container


def test_container_config_from_dict_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXBUS_HANDLER_TIMEOUT", "9")
    container = Container()
    container.config.from_dict({"adapter": "memory", "handler_timeout": 2})
    assert container.settings().handler_timeout == 2
    bus = container.event_bus()
    assert isinstance(bus, InMemoryEventBus)
    assert bus.config.handler_timeout == 2
    assert bus.dispatcher.handler_timeout == 2


def test_container_config_invalid_value_names_the_variable() -> None:
    container = Container()
    container.config.from_dict({"max_attempts": 0})
    with pytest.raises(ConfigurationError, match="HEXBUS_MAX_ATTEMPTS"):
        container.event_bus()


async def test_init_and_shutdown_resources(clean_default_router: Any) -> None:
    seen: list[DomainEvent] = []

    @on_event(UtCfgPing)
    async def on_ping(event: UtCfgPing) -> None:
        seen.append(event)

    container = Container()
    await container.init_resources()
    bus = container.event_bus()
    try:
        assert bus.state is BusState.RUNNING
        assert any(sub.handler is on_ping for sub in bus.subscriptions)
        event = UtCfgPing()
        await bus.publish(event)
        assert seen == [event]
    finally:
        await container.shutdown_resources()
    assert bus.state is BusState.CLOSED


# -- the layer rule and the public API -------------------------------------------------
def _lint_imports() -> str:
    candidate = Path(sys.executable).parent / "lint-imports"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports (import-linter) is not installed in this environment")
    return found


def test_layer_contracts_hold() -> None:
    result = subprocess.run(
        [_lint_imports(), "--no-cache"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_public_all_is_sorted_and_importable() -> None:
    names = list(hexbus.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(hexbus, name), name
    namespace: dict[str, Any] = {}
    exec(f"from hexbus import {', '.join(names)}", namespace)
    assert all(name in namespace for name in names)


def test_design_names_are_exported() -> None:
    for name in (
        "DomainEvent",
        "EventBus",
        "EventBusProtocol",
        "Container",
        "EventRouter",
        "on_event",
        "EventHandler",
        "current_context",
        "event_from_dict",
        "AuditLogHandler",
        "InMemoryEventBus",
    ):
        assert name in hexbus.__all__, name
    assert hexbus.EventBusProtocol is hexbus.EventBus
    assert isinstance(InMemoryEventBus(), hexbus.EventBus)
    errors = importlib.import_module("hexbus.errors")
    for name in (
        "HexbusError",
        "EventSchemaError",
        "InvalidHandlerError",
        "UnknownEventTypeError",
        "PublishError",
        "ConfigurationError",
        "NotStartedError",
    ):
        assert issubclass(getattr(errors, name), errors.HexbusError) or name == "HexbusError"
