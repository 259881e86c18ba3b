"""The demo service's own ports: what its use cases and handlers need from the outside.

Why its own ports next to the library's ``EventBus``: a use case depends on "somewhere to
keep users" and "a way to notify people", not on a database or an SMTP server; the
in-memory adapters in ``adapters.py`` fill these in for the demo and for tests.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from hexbus.demo.model import Item, User

__all__ = ["Cache", "ItemRepository", "Notifier", "StorageError", "UserRepository"]


class StorageError(Exception):
    """A repository could not do its job (the database is down, say)."""


class UserRepository(Protocol):
    async def add(self, user: User) -> None: ...
    async def get(self, user_id: UUID) -> User | None: ...
    async def by_email(self, email: str) -> User | None: ...
    async def save(self, user: User) -> None: ...
    async def remove(self, user_id: UUID) -> None: ...


class ItemRepository(Protocol):
    async def add(self, item: Item) -> None: ...
    async def get(self, item_id: UUID) -> Item | None: ...
    async def save(self, item: Item) -> None: ...
    async def remove(self, item_id: UUID) -> None: ...


class Cache(Protocol):
    async def get(self, key: str) -> object | None: ...
    async def set(self, key: str, value: object) -> None: ...
    async def delete(self, key: str) -> bool:
        """Drop ``key``; ``True`` when it was cached."""
        ...


class Notifier(Protocol):
    """Mail and alerts: ``channel`` is ``mail``, ``security`` or ``admin``."""

    async def send(self, channel: str, to: str, subject: str, body: str) -> None: ...
