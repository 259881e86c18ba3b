"""The composition root: settings in, a started ``EventBus`` out.

Why dependency-injector: ops switch transports with ``HEXBUS_ADAPTER`` and the code
that publishes never changes; use cases receive the bus by injection, so tests hand
them a memory or recording bus instead.

Usage::

    container = Container()
    container.config.from_dict({"adapter": "memory"})   # optional, overrides env
    await container.init_resources()                    # starts the bus
    bus = container.event_bus()
    ...
    await container.shutdown_resources()                # drains and stops it
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from dependency_injector import containers, providers

from hexbus.application.handlers import EventRouter, default_router
from hexbus.domain.ports import EventBus
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.settings import HexbusSettings, load_settings

__all__ = ["Container", "build_bus", "running_bus"]

def _settings(overrides: dict[str, Any] | None) -> HexbusSettings:
    return load_settings(**(overrides or {}))


def _adapter_bus(adapter: str, settings: HexbusSettings) -> EventBus:
    """The bus of ``adapter``, built by the registry; only one adapter is ever built."""
    return build_bus(settings.model_copy(update={"adapter": adapter}))


async def running_bus(
    bus: EventBus, routers: list[EventRouter], handlers: list[Any]
) -> AsyncIterator[EventBus]:
    """The bus lifecycle as a ``providers.Resource``: wire, start, yield, stop.

    A container subclass that overrides ``routers`` or ``handlers`` must declare its own
    ``bus_lifecycle = providers.Resource(running_bus, ...)``: dependency-injector binds
    a provider to the parent's providers it was declared with.
    """
    for router in routers:
        bus.include(router)
    for handler in handlers:
        bus.register(handler)  # the bus calls its stop() after its own (flush buffers)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


def _adapter(settings: HexbusSettings) -> str:
    return settings.adapter


class Container(containers.DeclarativeContainer):
    """Settings → bus (chosen by ``adapter``) → its start/stop lifecycle."""

    #: Overrides of the ``HEXBUS_*`` variables: keys are the names without the prefix.
    config = providers.Configuration(strict=False)
    settings = providers.Singleton(_settings, config)
    #: Routers whose handlers the bus gets on start (``@on_event`` fills the default one).
    routers = providers.List(providers.Object(default_router))
    #: ``EventHandler`` objects to ``register`` (e.g. an ``AuditLogHandler``); the bus
    #: calls their ``stop()`` when it stops.
    handlers = providers.List()

    memory_bus = providers.Singleton(_adapter_bus, "memory", settings)
    rabbitmq_bus = providers.Singleton(_adapter_bus, "rabbitmq", settings)
    kafka_bus = providers.Singleton(_adapter_bus, "kafka", settings)
    event_bus = providers.Selector(
        providers.Callable(_adapter, settings),
        memory=memory_bus,
        rabbitmq=rabbitmq_bus,
        kafka=kafka_bus,
    )
    #: ``await container.init_resources()`` starts the bus; ``shutdown_resources()`` stops it.
    bus_lifecycle = providers.Resource(running_bus, event_bus, routers, handlers)
