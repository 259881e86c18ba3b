"""Domain events and the registry that maps wire names to classes.

Why a registry at all: a broker hands us ``type="user.registered"`` and bytes, and we
need the class to rebuild the event. Why registration at class creation: a second class
claiming a name must fail when its module is imported, long before a message arrives
and is decoded into the wrong class.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from hexbus.domain._uuid7 import uuid7
from hexbus.domain.context import delivery_context
from hexbus.domain.errors import (
    DuplicateEventTypeError,
    EventSchemaError,
    UnknownEventTypeError,
)

__all__ = ["DomainEvent", "EventRegistry", "event_from_dict", "event_registry"]

_EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _default_correlation_id(data: dict[str, Any]) -> str:
    # Inside a handler, a new event continues the conversation of the event being
    # handled; outside, it starts one of its own.
    parent = delivery_context.get().event
    if parent is not None:
        return parent.correlation_id
    return str(data["event_id"])


def _default_causation_id() -> str | None:
    # The cause as its producer named it: the handled event's id on the wire (a foreign
    # producer's ``order-42``), which is ``str(event_id)`` for every hexbus event.
    return delivery_context.get().wire_id


def _derive_event_type(class_name: str) -> str:
    return _CAMEL_RE.sub("_", class_name).lower()


class EventRegistry:
    """Wire name → event class. One per process, filled as event modules are imported."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[DomainEvent]] = {}

    def register(self, cls: type[DomainEvent]) -> None:
        name = cls.event_type
        existing = self._by_name.get(name)
        if existing is not None and existing is not cls:
            same_definition = (existing.__module__, existing.__qualname__) == (
                cls.__module__,
                cls.__qualname__,
            )
            if not same_definition:  # a re-imported module may redefine its own class
                raise DuplicateEventTypeError(
                    f"event_type {name!r} is claimed by {cls.__module__}.{cls.__qualname__} "
                    f"and already by {existing.__module__}.{existing.__qualname__}; "
                    "give one of them another event_type= (wire names must be unique)"
                )
        self._by_name[name] = cls

    def get(self, name: str) -> type[DomainEvent]:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownEventTypeError(
                f"no event class is registered for event_type {name!r}; import the module "
                f"that defines it (known types: {', '.join(sorted(self._by_name)) or 'none'})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[type[DomainEvent]]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def unregister(self, name: str) -> None:
        """Forget a name (for tests that define throw-away event classes)."""
        self._by_name.pop(name, None)


event_registry = EventRegistry()


class DomainEvent(BaseModel):
    """Base class of every event: immutable, strict about its fields, self-describing.

    Subclass with ``class UserRegistered(DomainEvent, event_type="user.registered",
    version=1)``. ``abstract=True`` makes an intermediate base that is not registered.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = "domain_event"
    event_version: ClassVar[int] = 1

    event_id: UUID = Field(default_factory=uuid7)
    occurred_at: AwareDatetime = Field(default_factory=_utcnow)
    correlation_id: str = Field(default_factory=_default_correlation_id)
    causation_id: str | None = Field(default_factory=_default_causation_id)
    source: str = ""

    def __init_subclass__(
        cls,
        *,
        event_type: str | None = None,
        version: int = 1,
        abstract: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        name = event_type if event_type is not None else _derive_event_type(cls.__name__)
        if not isinstance(name, str) or not _EVENT_TYPE_RE.fullmatch(name):
            raise EventSchemaError(
                f"{cls.__qualname__}: event_type {name!r} is not a valid wire name; use dot-"
                "separated words of letters, digits, '_' or '-', e.g. 'user.registered'"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise EventSchemaError(
                f"{cls.__qualname__}: version={version!r} must be a positive integer"
            )
        cls.event_type = name
        cls.event_version = version
        if not abstract:
            event_registry.register(cls)

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (ISO 8601 times, string UUIDs), as the codecs and CLI use it."""
        return self.model_dump(mode="json", by_alias=True)


def event_from_dict(event_type: str, data: Mapping[str, Any]) -> DomainEvent:
    """Build a registered event from its wire name and a dict (CLI, legacy callers)."""
    cls = event_registry.get(event_type)
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise EventSchemaError(
            f"invalid data for event_type {event_type!r} ({cls.__qualname__}): "
            f"{exc.error_count()} error(s): "
            + "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                for err in exc.errors()
            ),
            errors=exc.errors(include_url=False),
        ) from exc
