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

With ``HEXBUS_OUTBOX_URL`` (or an engine / session factory of the application given as
``container.database.override(providers.Object(engine))``), the container also builds
the ``Outbox``: ``publish(..., session=s)`` writes into ``s``'s transaction, idempotent
handlers run through the inbox, and the relay starts after the bus and is drained
before it stops (``HEXBUS_OUTBOX_RELAY=false`` leaves relaying to ``hexbus relay``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from dependency_injector import containers, providers

from hexbus.application.handlers import EventRouter, default_router
from hexbus.domain.ports import EventBus
from hexbus.infrastructure.adapters import build_bus
from hexbus.infrastructure.settings import HexbusSettings, load_settings

if TYPE_CHECKING:
    from hexbus.infrastructure.outbox import Outbox

__all__ = ["Container", "build_bus", "build_outbox", "lifecycle", "running_bus"]

logger = logging.getLogger("hexbus.container")

def _settings(overrides: dict[str, Any] | None) -> HexbusSettings:
    return load_settings(**(overrides or {}))


def _adapter_bus(adapter: str, settings: HexbusSettings) -> EventBus:
    """The bus of ``adapter``, built by the registry; only one adapter is ever built."""
    return build_bus(settings.model_copy(update={"adapter": adapter}))


def build_outbox(settings: HexbusSettings, database: Any = None) -> Outbox | None:
    """The ``Outbox`` of ``HEXBUS_OUTBOX_URL``, or on ``database`` (an ``AsyncEngine`` or
    an ``async_sessionmaker`` of the application); ``None`` when neither is set."""
    if database is None and not settings.outbox_url:
        return None
    from hexbus.infrastructure.outbox import Outbox  # noqa: PLC0415 - the extra, when used

    if database is None:
        return Outbox.from_settings(settings)
    sessions = None
    engine = database
    if not hasattr(database, "dialect"):  # an async_sessionmaker: its bind is the engine
        sessions = database
        engine = getattr(database, "kw", {}).get("bind")
        if engine is None:
            raise TypeError(
                "Container.database takes an AsyncEngine or an async_sessionmaker bound "
                f"to one (bind=engine), got {database!r}"
            )
    return Outbox.from_settings(settings, engine=engine, sessions=sessions)


async def running_bus(
    bus: EventBus,
    routers: list[EventRouter],
    handlers: list[Any],
    outbox: Outbox | None = None,
    relay: bool = True,
) -> AsyncIterator[EventBus]:
    """The bus lifecycle as a ``providers.Resource``: wire, start, yield, stop.

    With an ``outbox``: its tables are checked (and created), the bus gets the writer
    and the inbox, and (``relay``) the relay runs between the bus's start and stop, so
    it is drained while the bus can still send.

    A container subclass that overrides ``routers`` or ``handlers`` must declare its own
    ``bus_lifecycle = lifecycle(routers, handlers)``: dependency-injector binds a provider
    to the parent's providers it was declared with.
    """
    for router in routers:
        bus.include(router)
    for handler in handlers:
        bus.register(handler)  # the bus calls its stop() after its own (flush buffers)
    running_relay = None
    if outbox is not None:
        await outbox.open()
        outbox.attach(bus)
    await bus.start()
    try:
        if outbox is not None:
            outbox.inbox.start_cleanup()
            if relay:
                running_relay = outbox.relay(bus)  # type: ignore[arg-type]
                await running_relay.start()
                if getattr(bus, "instrumentation", None) is not None:  # HEXBUS_OTEL is on
                    running_relay.register_metrics()
        yield bus
    finally:
        try:
            if running_relay is not None:
                await running_relay.stop()
        finally:
            try:
                await bus.stop()
            finally:
                if outbox is not None:
                    await outbox.close()


def _adapter(settings: HexbusSettings) -> str:
    return settings.adapter


def _relay_enabled(settings: HexbusSettings) -> bool:
    return settings.outbox_relay


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
    #: The application's own database for the outbox/inbox (an ``AsyncEngine`` or an
    #: ``async_sessionmaker``); ``None``: ``HEXBUS_OUTBOX_URL`` decides.
    database: providers.Object[Any] = providers.Object(None)
    #: The ``Outbox`` (``None`` without a database): ``container.outbox().sessions()``.
    outbox = providers.Singleton(build_outbox, settings, database)
    #: ``await container.init_resources()`` starts the bus; ``shutdown_resources()`` stops it.
    bus_lifecycle = providers.Resource(
        running_bus,
        event_bus,
        routers,
        handlers,
        outbox,
        providers.Callable(_relay_enabled, settings),
    )


def lifecycle(routers: Any, handlers: Any) -> providers.Resource[EventBus]:
    """``bus_lifecycle`` for a ``Container`` subclass with routers / handlers of its own.

    Everything else (the bus, the outbox, whether the relay runs) comes from ``Container``
    itself, so a subclass written this way keeps every feature the base wires::

        class MyContainer(Container):
            routers = providers.List(providers.Object(my_router))
            bus_lifecycle = lifecycle(routers, Container.handlers)
    """
    return providers.Resource(
        running_bus,
        Container.event_bus,
        routers,
        handlers,
        Container.outbox,
        providers.Callable(_relay_enabled, Container.settings),
    )
