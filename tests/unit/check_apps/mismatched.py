"""Two handlers whose annotation does not fit what they subscribe to, and a good one.

Both load: an ``EventHandler``'s annotation is checked when it is registered, and the
pattern handler passed its decorator because ``PaymentFailed``, which the pattern also
matches, is defined after it (an event added later to a pattern's namespace).
"""

from __future__ import annotations

from typing import ClassVar

from dependency_injector import providers

from hexbus import Container, DomainEvent, EventHandler, EventRouter
from hexbus.domain.ports import SubscriptionTarget
from hexbus.infrastructure.container import running_bus


class PaymentCaptured(DomainEvent, event_type="checkapp.mismatch.payment.captured"):
    payment_id: str


router = EventRouter()


@router.on(PaymentCaptured)
async def on_captured(event: PaymentCaptured) -> None:
    """Correct: subscribed to the class it is annotated with."""


@router.on("checkapp.mismatch.payment.*", name="checkapp.mismatch.payments")
async def on_any_payment(event: PaymentCaptured) -> None:
    """Wrong once PaymentFailed exists: the pattern matches it too."""


class PaymentFailed(DomainEvent, event_type="checkapp.mismatch.payment.failed"):
    payment_id: str


class RefundIssued(DomainEvent, event_type="checkapp.mismatch.refund.issued"):
    refund_id: str


class RefundDenied(DomainEvent, event_type="checkapp.mismatch.refund.denied"):
    refund_id: str


class RefundHandler(EventHandler):
    """Wrong: subscribed to RefundIssued, annotated RefundDenied."""

    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (RefundIssued,)

    async def handle(self, event: RefundDenied) -> None:
        """Never gets a RefundDenied."""


class MismatchedContainer(Container):
    routers = providers.List(providers.Object(router))
    handlers = providers.List(providers.Singleton(RefundHandler))
    bus_lifecycle = providers.Resource(running_bus, Container.event_bus, routers, handlers)
