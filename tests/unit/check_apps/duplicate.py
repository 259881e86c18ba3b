"""Two different handlers under one durable name (they would share one queue)."""

from __future__ import annotations

from dependency_injector import providers

from hexbus import Container, DomainEvent, EventRouter
from hexbus.infrastructure.container import running_bus


class InvoiceSent(DomainEvent, event_type="checkapp.dup.invoice_sent"):
    invoice_id: str


class InvoicePaid(DomainEvent, event_type="checkapp.dup.invoice_paid"):
    invoice_id: str


router = EventRouter()


@router.on(InvoiceSent, name="checkapp.dup.shared")
async def on_sent(event: InvoiceSent) -> None:
    """First user of the name."""


@router.on(InvoicePaid, name="checkapp.dup.shared")
async def on_paid(event: InvoicePaid) -> None:
    """Second, different handler under the same name."""


@router.on(InvoicePaid)
async def on_paid_ledger(event: InvoicePaid) -> None:
    """Its own (default) name: fine."""


class DuplicateContainer(Container):
    routers = providers.List(providers.Object(router))
    bus_lifecycle = providers.Resource(
        running_bus, Container.event_bus, routers, Container.handlers
    )
