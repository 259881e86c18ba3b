"""Event handlers: what follows from the facts, behind the service's ports.

Why a handler class: it gets its collaborators (the mailer, the bus) through its
constructor, so the container injects them. It runs wherever the transport delivers:
in the request's task on the memory adapter, in a consumer on RabbitMQ or Kafka, where
``current_context().metadata`` still holds the request facts that travelled with the
event.
"""

from __future__ import annotations

from typing import ClassVar

from examples.fastapi_service.events import UserRegistered, WelcomeMailSent
from examples.fastapi_service.ports import Mail, Mailer
from hexbus import EventBus, EventHandler, current_context
from hexbus.domain.ports import SubscriptionTarget

__all__ = ["WelcomeMail"]


class WelcomeMail(EventHandler):
    """Send the welcome mail, then publish ``WelcomeMailSent``.

    On the brokers delivery is at least once: a mailer that must not send twice keys
    its sends by ``event.event_id``.
    """

    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (UserRegistered,)
    #: The durable subscription (one queue / consumer group per service and name).
    subscription_name: ClassVar[str | None] = "accounts.welcome_mail"

    def __init__(self, mailer: Mailer, bus: EventBus) -> None:
        self.mailer = mailer
        self.bus = bus

    async def handle(self, event: UserRegistered) -> None:
        where = current_context().metadata.get("ip_address", "an unknown address")
        await self.mailer.send(
            Mail(
                to=event.email,
                subject=f"Welcome, {event.name}!",
                body=f"Thanks for signing up (from {where}).",
            )
        )
        # published inside a handler: causation_id = event.event_id, same correlation_id
        await self.bus.publish(
            WelcomeMailSent(user_id=event.user_id, to=event.email), key=str(event.user_id)
        )
