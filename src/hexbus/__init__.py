"""hexbus: one typed domain-event bus for asyncio services, with swappable transports.

Application code publishes ``DomainEvent``s through the ``EventBus`` port; the
``Container`` picks the transport (memory, RabbitMQ, Kafka) from ``HEXBUS_ADAPTER``.
"""

from hexbus import errors
from hexbus.application.bus import BusState, EventBusBase
from hexbus.application.dispatch import DispatchStats
from hexbus.application.handlers import (
    EventHandler,
    EventRouter,
    Subscription,
    default_router,
    idempotent,
    on_event,
)
from hexbus.application.middleware import (
    CorrelationIdMiddleware,
    FilterMiddleware,
    LoggingMiddleware,
)
from hexbus.domain.context import DeliveryContext, current_context
from hexbus.domain.errors import (
    BusClosedError,
    ConfigurationError,
    DecodeError,
    DuplicateEventTypeError,
    EventSchemaError,
    HexbusError,
    InvalidHandlerError,
    InvalidMetadataError,
    InvalidPatternError,
    NotADomainEventError,
    NotStartedError,
    PublishError,
    UnknownEventTypeError,
)
from hexbus.domain.events import DomainEvent, EventRegistry, event_from_dict, event_registry
from hexbus.domain.ports import (
    DeadLetter,
    DeadLetterReader,
    DeadLetterReplayer,
    EventBus,
    EventBusProtocol,
    Handler,
    Middleware,
    Readiness,
    StatsReporter,
    SubscriptionAdmin,
)
from hexbus.infrastructure.adapters import ADAPTERS, load_export
from hexbus.infrastructure.audit import AuditLogHandler
from hexbus.infrastructure.container import Container
from hexbus.infrastructure.memory import InMemoryEventBus, MemoryConfig
from hexbus.infrastructure.settings import HexbusSettings, load_settings

__version__ = "0.1.0"

# Broker adapters need their extras (aio-pika, aiokafka): the registry imports them only
# when asked for, so ``import hexbus`` works with the core install alone.
_LAZY = frozenset(name for info in ADAPTERS.values() for name in info.exports) - set(globals())


#: The outbox needs its extra (SQLAlchemy): imported on first use too.
_OUTBOX = frozenset({"Outbox"})


def __getattr__(name: str) -> object:
    if name in _OUTBOX:
        from hexbus.infrastructure import outbox  # noqa: PLC0415 - the [outbox] extra

        return getattr(outbox, name)
    if name not in _LAZY:
        raise AttributeError(f"module 'hexbus' has no attribute {name!r}")
    return load_export(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_OUTBOX})

__all__ = [
    "AuditLogHandler",
    "BusClosedError",
    "BusState",
    "ConfigurationError",
    "Container",
    "CorrelationIdMiddleware",
    "DeadLetter",
    "DeadLetterReader",
    "DeadLetterReplayer",
    "DecodeError",
    "DeliveryContext",
    "DispatchStats",
    "DomainEvent",
    "DuplicateEventTypeError",
    "EventBus",
    "EventBusBase",
    "EventBusProtocol",
    "EventHandler",
    "EventRegistry",
    "EventRouter",
    "EventSchemaError",
    "FilterMiddleware",
    "Handler",
    "HexbusError",
    "HexbusSettings",
    "InMemoryEventBus",
    "InvalidHandlerError",
    "InvalidMetadataError",
    "InvalidPatternError",
    "LoggingMiddleware",
    "MemoryConfig",
    "Middleware",
    "NotADomainEventError",
    "NotStartedError",
    "PublishError",
    "Readiness",
    "StatsReporter",
    "Subscription",
    "SubscriptionAdmin",
    "UnknownEventTypeError",
    "__version__",
    "current_context",
    "default_router",
    "errors",
    "event_from_dict",
    "event_registry",
    "idempotent",
    "load_settings",
    "on_event",
]
