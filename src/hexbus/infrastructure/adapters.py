"""The one registry of adapters: name, extra, client package, bus class.

Why one table: the container, ``hexbus``'s lazy exports, ``hexbus check`` and ``hexbus
bench`` all need to know which adapters exist, which extra each needs and how to build
one; four tables used to answer that with five wordings of "install the extra". Every
adapter's bus class has ``from_settings(settings, **overrides)``, so building one is the
same call whatever the transport. Broker clients are imported only when their adapter is
loaded (``importlib``), never by this module.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from hexbus.domain.errors import ConfigurationError
from hexbus.infrastructure.logging import configure_logging
from hexbus.infrastructure.telemetry import configure as configure_telemetry

if TYPE_CHECKING:
    from hexbus.domain.ports import EventBus
    from hexbus.infrastructure.settings import HexbusSettings

__all__ = [
    "ADAPTERS",
    "AdapterInfo",
    "adapter_info",
    "availability",
    "build_bus",
    "load_export",
    "missing_extra",
]


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """What hexbus knows about one adapter before importing it."""

    name: str
    #: ``hexbus.infrastructure.<package>``: the adapter's package.
    module: str
    bus_class: str
    config_class: str
    #: The pip extra that installs its client (``None``: nothing to install).
    extra: str | None
    #: The import name of the client package the extra installs.
    client: str | None
    #: What ``from_settings`` needs for a throw-away subscription that only wants events
    #: published from now on (``hexbus tail``).
    live_only: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def exports(self) -> tuple[str, ...]:
        return (self.bus_class, self.config_class)


ADAPTERS: Mapping[str, AdapterInfo] = MappingProxyType(
    {
        "memory": AdapterInfo(
            "memory", "hexbus.infrastructure.memory", "InMemoryEventBus", "MemoryConfig",
            None, None,
        ),
        "rabbitmq": AdapterInfo(
            "rabbitmq", "hexbus.infrastructure.rabbitmq", "RabbitMQEventBus", "RabbitMQConfig",
            "rabbitmq", "aio_pika",
        ),
        "kafka": AdapterInfo(
            "kafka", "hexbus.infrastructure.kafka", "KafkaEventBus", "KafkaConfig",
            "kafka", "aiokafka",
            MappingProxyType({"auto_offset_reset": "latest"}),
        ),
    }
)


def adapter_info(name: str) -> AdapterInfo:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown adapter {name!r}; HEXBUS_ADAPTER takes one of: {', '.join(ADAPTERS)}"
        ) from None


def missing_extra(info: AdapterInfo, what: str | None = None) -> ConfigurationError:
    """The one wording of "install the extra"."""
    subject = what or f"HEXBUS_ADAPTER={info.name!r}"
    return ConfigurationError(
        f"{subject} needs the {info.client} package; install the extra: "
        f"pip install 'hexbus[{info.extra}]'"
    )


def availability(name: str) -> tuple[bool, str]:
    """(usable, explanation) without importing the adapter or its client."""
    info = adapter_info(name)
    if info.client is not None and importlib.util.find_spec(info.client) is None:
        return False, str(missing_extra(info))
    where = f"extra [{info.extra}]" if info.extra else "built in"
    return True, f"{info.bus_class} ({where})"


def _module(info: AdapterInfo, what: str | None = None) -> Any:
    if info.client is not None and importlib.util.find_spec(info.client) is None:
        raise missing_extra(info, what)
    return importlib.import_module(info.module)


def load_export(name: str) -> Any:
    """``hexbus.<name>`` for an adapter export (``KafkaEventBus``, ``RabbitMQConfig`` ...)."""
    for info in ADAPTERS.values():
        if name in info.exports:
            return getattr(_module(info, f"hexbus.{name}"), name)
    raise AttributeError(f"module 'hexbus' has no attribute {name!r}")


def build_bus(settings: HexbusSettings, **overrides: Any) -> EventBus:
    """The (not started) bus ``settings.adapter`` names, built by its ``from_settings``."""
    info = adapter_info(settings.adapter)
    bus_class = getattr(_module(info), info.bus_class)
    bus: EventBus = bus_class.from_settings(settings, **overrides)
    configure_telemetry(bus, settings)  # HEXBUS_OTEL
    configure_logging(settings.log_format)  # HEXBUS_LOG_FORMAT=json
    return bus
