"""A shop whose events exercise what the AsyncAPI document must carry.

A shared Kafka topic (``kafka_topic``), nested models, a discriminated union, a tuple,
an enum, decimals, patterns with and without written examples, a model-level example,
a version-2 event, a class subscription, patterns (one matching nothing) and an event of
another package that the shop only consumes.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal
from uuid import UUID

from dependency_injector import providers
from pydantic import BaseModel, ConfigDict, Field

from hexbus import Container, DomainEvent, EventHandler, EventRouter
from hexbus.demo.events import UserCreated
from hexbus.domain.ports import SubscriptionTarget
from hexbus.infrastructure.container import running_bus

#: Where the order events share one topic (one order across types).
ORDERS_TOPIC = "asyncapitest.orders"


class OrderLine(BaseModel):
    """One line of an order."""

    sku: str = Field(pattern=r"^[A-Z]{3}-\d{4}$", description="Stock keeping unit.")
    quantity: int = Field(ge=1, le=99)
    unit_price: Decimal = Field(gt=0, decimal_places=2)


class Card(BaseModel):
    kind: Literal["card"] = "card"
    last4: str = Field(min_length=4, max_length=4, pattern=r"^\d{4}$")


class Transfer(BaseModel):
    kind: Literal["transfer"] = "transfer"
    iban: str = Field(min_length=15, max_length=34)


class Carrier(StrEnum):
    POST = "post"
    COURIER = "courier"


class OrderPlaced(DomainEvent, event_type="asyncapitest.order.placed"):
    """A customer placed an order.

    Published once the order is stored; billing and the audit subscribe to it.
    """

    kafka_topic: ClassVar[str] = ORDERS_TOPIC

    order_id: UUID
    customer_email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    lines: list[OrderLine] = Field(min_length=1)
    total: Decimal
    currency: Literal["EUR", "USD"]
    placed_at: datetime
    note: str | None = None
    #: (aisle, shelf) of the pick list.
    pick: tuple[str, int] = ("A", 1)


class OrderPaid(DomainEvent, event_type="asyncapitest.order.paid"):
    """An order was paid."""

    kafka_topic: ClassVar[str] = ORDERS_TOPIC

    order_id: UUID
    amount_cents: int = Field(ge=1)
    method: Annotated[Card | Transfer, Field(discriminator="kind")]


class ParcelShipped(DomainEvent, event_type="asyncapitest.parcel.shipped", version=2):
    """A parcel left the warehouse (version 2: carrier added)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_id": "0190a3c1-7a5e-7d2b-9a4f-0c1d2e3f4a5b",
                    "tracking_code": "RR123456785DE",
                    "carrier": "courier",
                    "weights_grams": {"box-1": 1200},
                }
            ]
        }
    )

    order_id: UUID
    tracking_code: str = Field(pattern=r"^[A-Z]{2}\d{9}[A-Z]{2}$", examples=["RR123456785DE"])
    carrier: Carrier
    weights_grams: dict[str, int]


class StockLow(DomainEvent, event_type="asyncapitest.stock.low"):
    sku: str
    left: int = Field(ge=0)


router = EventRouter()


@router.on(OrderPlaced, name="asyncapitest.billing")
async def bill(event: OrderPlaced) -> None:
    """Charge the customer."""


@router.on("asyncapitest.order.*", name="asyncapitest.audit")
async def audit(event: DomainEvent) -> None:
    """Every order event, whatever its type."""


@router.on("asyncapitest.returns.#", name="asyncapitest.returns")
async def returns(event: DomainEvent) -> None:
    """No event of the catalogue matches (yet)."""


@router.on(UserCreated, name="asyncapitest.welcome")
async def welcome(event: UserCreated) -> None:
    """Another service's event: the shop consumes it but never publishes it."""


class Warehouse(EventHandler):
    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (OrderPaid, StockLow)

    async def handle(self, event: DomainEvent) -> None:
        """Pick paid orders; restock."""


class ShopContainer(Container):
    routers = providers.List(providers.Object(router))
    handlers = providers.List(providers.Singleton(Warehouse))
    bus_lifecycle = providers.Resource(running_bus, Container.event_bus, routers, handlers)
