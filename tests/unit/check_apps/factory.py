"""Two routers; the one built by a factory fails its annotation check when built.

Like the demo's ``demo_router(...)``: the handlers are added when the container's
provider runs, so the error surfaces when ``check`` builds the routers, not at import.
"""

from __future__ import annotations

from dependency_injector import providers

from hexbus import Container, DomainEvent, EventRouter
from hexbus.infrastructure.container import running_bus


class TicketOpened(DomainEvent, event_type="checkapp.factory.ticket_opened"):
    ticket_id: str


class TicketClosed(DomainEvent, event_type="checkapp.factory.ticket_closed"):
    ticket_id: str


good_router = EventRouter()


@good_router.on(TicketOpened)
async def on_opened(event: TicketOpened) -> None:
    """Fine, in the router that builds."""


async def on_closed(event: TicketOpened) -> None:
    """Annotated TicketOpened, subscribed to TicketClosed below."""


def build_router() -> EventRouter:
    router = EventRouter()
    router.add(TicketClosed, on_closed)
    return router


class FactoryContainer(Container):
    routers = providers.List(providers.Object(good_router), providers.Singleton(build_router))
    bus_lifecycle = providers.Resource(
        running_bus, Container.event_bus, routers, Container.handlers
    )
