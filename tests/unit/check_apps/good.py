"""A correctly wired app: a router (a class and a pattern) and an EventHandler object."""

from __future__ import annotations

from typing import ClassVar

from dependency_injector import providers

from hexbus import Container, DomainEvent, EventHandler, EventRouter
from hexbus.domain.ports import SubscriptionTarget
from hexbus.infrastructure.container import running_bus


class OrderPlaced(DomainEvent, event_type="checkapp.good.order_placed"):
    order_id: str


class OrderShipped(DomainEvent, event_type="checkapp.good.order_shipped"):
    order_id: str


router = EventRouter()


@router.on(OrderPlaced)
async def on_placed(event: OrderPlaced) -> None:
    """Reserve stock."""


@router.on("checkapp.good.*", name="checkapp.good.audit")
def audit(event: DomainEvent) -> None:
    """A plain def: runs in a worker thread."""


class ShippingHandler(EventHandler):
    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (OrderShipped,)

    async def handle(self, event: OrderShipped) -> None:
        """Notify the customer."""


class GoodContainer(Container):
    routers = providers.List(providers.Object(router))
    handlers = providers.List(providers.Singleton(ShippingHandler))
    bus_lifecycle = providers.Resource(running_bus, Container.event_bus, routers, handlers)
