"""In-memory implementations of the demo's ports; each keeps a record of what it did.

Why records: the demo prints them and the tests assert on them (``notifier.sent``,
``cache.deleted``) instead of mocking — the cosmicpython "fake adapter" style.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from hexbus.demo.model import Item, User
from hexbus.demo.ports import StorageError

__all__ = [
    "InMemoryCache",
    "InMemoryItemRepository",
    "InMemoryUserRepository",
    "RecordingNotifier",
    "SentMessage",
]


class _FailureSwitch:
    """Lets the scenario (and tests) simulate an outage: the next call raises."""

    def __init__(self) -> None:
        self._fail_next: str | None = None

    def fail_next(self, reason: str) -> None:
        self._fail_next = reason

    def _maybe_fail(self) -> None:
        if self._fail_next is not None:
            reason, self._fail_next = self._fail_next, None
            raise StorageError(reason)


class InMemoryUserRepository(_FailureSwitch):
    def __init__(self) -> None:
        super().__init__()
        self.users: dict[UUID, User] = {}

    async def add(self, user: User) -> None:
        self._maybe_fail()
        self.users[user.user_id] = user

    async def get(self, user_id: UUID) -> User | None:
        self._maybe_fail()
        return self.users.get(user_id)

    async def by_email(self, email: str) -> User | None:
        self._maybe_fail()
        return next((u for u in self.users.values() if u.email == email), None)

    async def save(self, user: User) -> None:
        self._maybe_fail()
        self.users[user.user_id] = user

    async def remove(self, user_id: UUID) -> None:
        self._maybe_fail()
        self.users.pop(user_id, None)


class InMemoryItemRepository(_FailureSwitch):
    def __init__(self) -> None:
        super().__init__()
        self.items: dict[UUID, Item] = {}

    async def add(self, item: Item) -> None:
        self._maybe_fail()
        self.items[item.item_id] = item

    async def get(self, item_id: UUID) -> Item | None:
        self._maybe_fail()
        return self.items.get(item_id)

    async def save(self, item: Item) -> None:
        self._maybe_fail()
        self.items[item.item_id] = item

    async def remove(self, item_id: UUID) -> None:
        self._maybe_fail()
        self.items.pop(item_id, None)


class InMemoryCache:
    def __init__(self) -> None:
        self.data: dict[str, object] = {}
        self.hits = 0
        self.misses = 0
        #: every key a delete was asked for, in order (hit or not).
        self.deleted: list[str] = []

    async def get(self, key: str) -> object | None:
        value = self.data.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def set(self, key: str, value: object) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> bool:
        self.deleted.append(key)
        return self.data.pop(key, None) is not None


@dataclass(frozen=True, slots=True)
class SentMessage:
    channel: str
    to: str
    subject: str
    body: str


class RecordingNotifier:
    """Sends nothing; remembers every message (mail, security and admin alerts)."""

    def __init__(self) -> None:
        self.sent: list[SentMessage] = []

    async def send(self, channel: str, to: str, subject: str, body: str) -> None:
        self.sent.append(SentMessage(channel, to, subject, body))

    def on(self, channel: str) -> list[SentMessage]:
        return [m for m in self.sent if m.channel == channel]
