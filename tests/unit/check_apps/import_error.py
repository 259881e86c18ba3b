"""A router decorator that refuses its handler while the module is imported."""

from __future__ import annotations

from dependency_injector import providers

from hexbus import Container, DomainEvent, EventRouter
from hexbus.infrastructure.container import running_bus


class BadgeIssued(DomainEvent, event_type="checkapp.importerror.badge_issued"):
    badge_id: str


class BadgeRevoked(DomainEvent, event_type="checkapp.importerror.badge_revoked"):
    badge_id: str


router = EventRouter()


@router.on(BadgeIssued)
async def on_issued(event: BadgeRevoked) -> None:
    """Raises InvalidHandlerError at import: annotated for the other event."""


class ImportErrorContainer(Container):
    routers = providers.List(providers.Object(router))
    bus_lifecycle = providers.Resource(
        running_bus, Container.event_bus, routers, Container.handlers
    )
