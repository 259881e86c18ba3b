"""Per-delivery context, carried in a ``contextvars.ContextVar``.

Why a contextvar and not an attribute of the bus: two publishes that overlap in time
(two HTTP requests, say) must each see their own metadata and session. A contextvar
is copied into every task, so each handler sees the context of the publish that
started it and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from hexbus.domain.events import DomainEvent

__all__ = ["DeliveryContext", "current_context"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


class DeliveryContext(NamedTuple):
    """What a handler knows about the delivery it is running for.

    ``attempt`` starts at 1 and grows with each redelivery on broker adapters.
    ``session`` is whatever the publisher passed (e.g. an ``AsyncSession``); it only
    exists in process, broker adapters never transport it. A ``NamedTuple`` because one
    is built per publish on the hot path, and it is immutable for free.
    """

    event: DomainEvent | None = None
    metadata: Mapping[str, str] = _EMPTY
    attempt: int = 0
    session: Any = None
    #: The key the publisher passed, or ``None``; read ``key`` for the effective one.
    explicit_key: str | None = None
    subscription: str | None = None

    @property
    def key(self) -> str | None:
        """The publish key (ordering per aggregate); defaults to ``str(event_id)``.

        Computed on access because turning a UUID into text costs more than the rest
        of an in-memory publish, and most handlers never ask.
        """
        if self.explicit_key is not None:
            return self.explicit_key
        return None if self.event is None else str(self.event.event_id)


_NO_CONTEXT = DeliveryContext()
delivery_context: ContextVar[DeliveryContext] = ContextVar(
    "hexbus_delivery_context", default=_NO_CONTEXT
)


def current_context() -> DeliveryContext:
    """The delivery being handled; outside handlers an empty one (``event is None``)."""
    return delivery_context.get()
