"""Every exception a hexbus user can catch, in one place.

Each class also derives from the closest built-in (``TypeError``, ``ValueError`` ...)
so code that already catches those keeps working. Messages say what was wrong and
what to do; they never contain broker passwords.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BusClosedError",
    "ConfigurationError",
    "DecodeError",
    "DuplicateEventTypeError",
    "EventSchemaError",
    "HexbusError",
    "InvalidHandlerError",
    "InvalidMetadataError",
    "InvalidPatternError",
    "NotADomainEventError",
    "NotStartedError",
    "PublishError",
    "UnknownEventTypeError",
]


class HexbusError(Exception):
    """Base class: ``except HexbusError`` catches everything hexbus raises on purpose."""


class EventSchemaError(HexbusError, ValueError):
    """Data does not fit an event class; ``errors`` holds pydantic's details."""

    def __init__(self, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.errors: list[Any] = list(errors or [])


class NotADomainEventError(EventSchemaError, TypeError):
    """Something that is not a ``DomainEvent`` instance was handed to ``publish``."""


class DuplicateEventTypeError(HexbusError, TypeError):
    """Two event classes claim the same wire name (``event_type``)."""


class UnknownEventTypeError(HexbusError, LookupError):
    """No registered event class carries this wire name."""


class InvalidHandlerError(HexbusError, TypeError):
    """A handler cannot take what it subscribes to (not callable, wrong annotation ...)."""


class InvalidPatternError(HexbusError, ValueError):
    """A subscription pattern is not valid AMQP topic syntax."""


class InvalidMetadataError(HexbusError, TypeError):
    """Publish metadata must map ``str`` keys to ``str`` values."""


class PublishError(HexbusError):
    """The transport did not accept the event (nack, timeout, connection down)."""


class ConfigurationError(HexbusError):
    """Settings are invalid or an adapter cannot be built (e.g. its extra is missing)."""


class NotStartedError(HexbusError, RuntimeError):
    """The bus was used before ``start()`` (or ``async with bus``)."""


class BusClosedError(NotStartedError):
    """The bus was used after ``stop()``; a stopped bus cannot be restarted."""


class DecodeError(HexbusError, ValueError):
    """A message from a broker cannot be turned into an event; ``raw`` keeps its bytes.

    ``reason`` is one of ``malformed``, ``unknown_type``, ``newer_version``,
    ``invalid_data`` (set by the codec), for dead-letter headers and metrics.
    """

    reason: str = "malformed"

    def __init__(
        self, message: str, *, raw: bytes = b"", headers: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.raw = raw
        self.headers: dict[str, Any] = dict(headers or {})
