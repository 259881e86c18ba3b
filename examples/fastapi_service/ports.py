"""What the use cases and handlers need from the outside, as ports.

Why ports next to the library's ``EventBus``: registering a user needs "somewhere to keep
users" and the welcome handler "a way to send mail", not a database or an SMTP server.
``adapters.py`` fills them in memory; a real deployment swaps in its own in the
container and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID, uuid4

__all__ = ["Mail", "Mailer", "User", "UserDirectory"]


@dataclass(frozen=True, slots=True)
class User:
    email: str
    name: str
    user_id: UUID = field(default_factory=uuid4)


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    body: str


class UserDirectory(Protocol):
    async def add(self, user: User) -> bool:
        """Store ``user``; ``False`` (and nothing stored) when the e-mail is taken.

        One atomic call rather than "look up, then add": two requests for one address
        must not both succeed.
        """
        ...

    async def by_email(self, email: str) -> User | None: ...


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None: ...
