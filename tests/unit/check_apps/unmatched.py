"""A pattern that matches none of the app's event types (a typo): a warning only."""

from __future__ import annotations

from dependency_injector import providers

from hexbus import Container, DomainEvent, EventRouter
from hexbus.infrastructure.container import running_bus


class ParcelScanned(DomainEvent, event_type="checkapp.unmatched.parcel_scanned"):
    parcel_id: str


router = EventRouter()


@router.on(ParcelScanned)
async def on_scanned(event: ParcelScanned) -> None:
    """Fine."""


@router.on("checkapp.unmatched.parcle.*", name="checkapp.unmatched.typo")
async def on_parcel(event: DomainEvent) -> None:
    """'parcle': matches nothing."""


class UnmatchedContainer(Container):
    routers = providers.List(providers.Object(router))
    bus_lifecycle = providers.Resource(
        running_bus, Container.event_bus, routers, Container.handlers
    )
