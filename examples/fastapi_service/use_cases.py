"""The service's use cases: change state through the ports, then publish what happened.

Why the bus is a constructor parameter: a use case knows the ``EventBus`` port only. The
container injects whichever transport ``HEXBUS_ADAPTER`` picks, tests can inject a
``RecordingEventBus``, and the route hands over the request facts as ``metadata``
without the use case knowing about HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping

from examples.fastapi_service.events import UserRegistered
from examples.fastapi_service.ports import User, UserDirectory
from hexbus import EventBus

__all__ = ["EmailTakenError", "RegisterUser"]


class EmailTakenError(ValueError):
    """The address belongs to a registered user already."""


class RegisterUser:
    def __init__(self, users: UserDirectory, bus: EventBus) -> None:
        self.users = users
        self.bus = bus

    async def __call__(
        self, email: str, name: str, *, metadata: Mapping[str, str] | None = None
    ) -> User:
        """Store the user, then publish ``UserRegistered`` keyed by the user's id (events
        of one user keep their order on Kafka).

        A real service writes the user and the event in one transaction (an outbox);
        here a failed publish raises after the user was stored.
        """
        user = User(email=email, name=name)
        if not await self.users.add(user):
            raise EmailTakenError(f"{email} is already registered")
        await self.bus.publish(
            UserRegistered(user_id=user.user_id, email=email, name=name),
            metadata=metadata,
            key=str(user.user_id),
        )
        return user
