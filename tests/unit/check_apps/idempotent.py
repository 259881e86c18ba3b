"""An app with an idempotent handler: it needs an inbox database (HEXBUS_OUTBOX_URL)."""

from __future__ import annotations

from dependency_injector import providers

from hexbus import Container, DomainEvent, EventRouter
from hexbus.infrastructure.container import lifecycle


class RoomBooked(DomainEvent, event_type="checkapp.idempotent.room_booked"):
    room: str


router = EventRouter()


@router.on(RoomBooked, idempotent=True)
async def charge_once(event: RoomBooked) -> None:
    """Must run once in effect: through the inbox."""


class IdempotentContainer(Container):
    routers = providers.List(providers.Object(router))
    bus_lifecycle = lifecycle(routers, Container.handlers)
