"""The adapter registry: one table behind the container, the lazy exports, check and bench."""

from __future__ import annotations

import importlib.util

import pytest

import hexbus
from hexbus import ConfigurationError, InMemoryEventBus, load_settings
from hexbus.infrastructure import adapters
from hexbus.infrastructure.adapters import (
    ADAPTERS,
    adapter_info,
    availability,
    build_bus,
    load_export,
    missing_extra,
)
from hexbus.infrastructure.settings import ADAPTERS as SETTING_NAMES


def test_registry_lists_exactly_the_adapters_settings_accept() -> None:
    assert tuple(ADAPTERS) == SETTING_NAMES


def test_unknown_adapter_names_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="memory, rabbitmq, kafka"):
        adapter_info("redis")


def test_missing_extra_has_one_wording() -> None:
    message = str(missing_extra(ADAPTERS["kafka"]))
    assert message == (
        "HEXBUS_ADAPTER='kafka' needs the aiokafka package; install the extra: "
        "pip install 'hexbus[kafka]'"
    )


def test_availability_of_installed_and_missing_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    assert availability("memory") == (True, "InMemoryEventBus (built in)")
    assert availability("rabbitmq")[0] is True
    real = importlib.util.find_spec
    monkeypatch.setattr(
        adapters.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "aiokafka" else real(name, *a),
    )
    usable, why = availability("kafka")
    assert not usable
    assert "pip install 'hexbus[kafka]'" in why
    with pytest.raises(ConfigurationError, match=r"hexbus\.KafkaEventBus needs the aiokafka"):
        load_export("KafkaEventBus")


def test_build_bus_goes_through_from_settings() -> None:
    bus = build_bus(load_settings(adapter="memory", memory_mode="background"))
    assert isinstance(bus, InMemoryEventBus)
    assert bus.config.mode == "background"


def test_lazy_exports_come_from_the_registry() -> None:
    for info in ADAPTERS.values():
        for name in info.exports:
            assert getattr(hexbus, name).__name__ == name
            assert name in dir(hexbus)
    with pytest.raises(AttributeError):
        hexbus.NoSuchBus  # type: ignore[attr-defined]  # noqa: B018
