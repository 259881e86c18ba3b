"""In-memory adapters for the ports: enough to run the example and to test it.

Why they record instead of doing nothing: a test asserts on what the service did (the
mail that was "sent") through the same objects the service used.
"""

from __future__ import annotations

from examples.fastapi_service.ports import Mail, User

__all__ = ["InMemoryMailer", "InMemoryUserDirectory"]


class InMemoryUserDirectory:
    """Users by e-mail address (one process; gone on restart)."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    async def add(self, user: User) -> bool:
        if user.email in self.users:
            return False
        self.users[user.email] = user  # no await in between: atomic on the event loop
        return True

    async def by_email(self, email: str) -> User | None:
        return self.users.get(email)


class InMemoryMailer:
    """Keeps every mail in ``outbox`` instead of sending it."""

    def __init__(self) -> None:
        self.outbox: list[Mail] = []

    async def send(self, mail: Mail) -> None:
        self.outbox.append(mail)
