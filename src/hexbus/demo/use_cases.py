"""The demo's use cases: change state through the ports, then publish what happened.

Why the bus is a constructor parameter: a use case depends on the ``EventBus`` port
only; the container injects the configured transport, tests inject an
``InMemoryEventBus`` or a recording fake, and nothing here changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from hexbus import DomainEvent, EventBus
from hexbus.demo.events import (
    ItemCreated,
    ItemDeleted,
    ItemUpdated,
    SystemAuditRecorded,
    SystemErrorRaised,
    UserCreated,
    UserDeleted,
    UserLoggedIn,
    UserLoggedOut,
    UserLoginFailed,
    UserUpdated,
)
from hexbus.demo.model import Item, User, hash_password
from hexbus.demo.ports import Cache, ItemRepository, StorageError, UserRepository

__all__ = [
    "CreateItem",
    "DeleteItem",
    "DeleteUser",
    "GetUser",
    "LogIn",
    "LogOut",
    "NotFoundError",
    "RegisterUser",
    "Request",
    "UpdateItem",
    "UpdateProfile",
]

T = TypeVar("T")


class NotFoundError(LookupError):
    """The user or item does not exist."""


@dataclass(frozen=True, slots=True)
class Request:
    """Who is asking: travels as publish metadata, so handlers and the audit log see it."""

    ip_address: str = "127.0.0.1"
    user_agent: str = "hexbus-demo"

    def metadata(self) -> dict[str, str]:
        return {"ip_address": self.ip_address, "user_agent": self.user_agent}


_LOCAL = Request()


class _UseCase:
    """Shared plumbing: publish with request metadata; storage failures become system.error."""

    component = "demo"

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def _publish(self, event: DomainEvent, request: Request) -> None:
        await self.bus.publish(event, metadata=request.metadata())

    async def _storage(self, call: Callable[[], Awaitable[T]], request: Request) -> T:
        try:
            return await call()
        except StorageError as exc:
            await self._publish(
                SystemErrorRaised(component=self.component, message=str(exc)), request
            )
            raise


class _UserUseCase(_UseCase):
    component = "users"

    def __init__(self, users: UserRepository, bus: EventBus) -> None:
        super().__init__(bus)
        self.users = users

    async def _user(self, user_id: UUID, request: Request) -> User:
        user = await self._storage(lambda: self.users.get(user_id), request)
        if user is None:
            raise NotFoundError(f"no user {user_id}")
        return user


class RegisterUser(_UserUseCase):
    async def __call__(
        self, email: str, name: str, password: str, request: Request = _LOCAL
    ) -> User:
        if await self._storage(lambda: self.users.by_email(email), request) is not None:
            raise ValueError(f"{email} is already registered")
        user = User(email=email, name=name, password_hash="")
        user.password_hash = hash_password(password, str(user.user_id))
        await self._storage(lambda: self.users.add(user), request)
        await self._publish(UserCreated(user_id=user.user_id, email=email, name=name), request)
        return user


class LogIn(_UserUseCase):
    """Counts failures in a row per user; the security handler decides when to alert."""

    async def __call__(self, email: str, password: str, request: Request = _LOCAL) -> bool:
        user = await self._storage(lambda: self.users.by_email(email), request)
        if user is None or not user.check_password(password):
            failures = 1
            if user is not None:
                user.failed_logins += 1
                failures = user.failed_logins
                await self._storage(lambda: self.users.save(user), request)
            failed = UserLoginFailed(
                email=email,
                user_id=None if user is None else user.user_id,
                ip_address=request.ip_address,
                reason="unknown_user" if user is None else "wrong_password",
                consecutive_failures=failures,
            )
            await self._publish(failed, request)
            return False
        user.failed_logins = 0
        user.logged_in = True
        await self._storage(lambda: self.users.save(user), request)
        await self._publish(
            UserLoggedIn(user_id=user.user_id, ip_address=request.ip_address), request
        )
        return True


class LogOut(_UserUseCase):
    async def __call__(self, user_id: UUID, request: Request = _LOCAL) -> None:
        user = await self._user(user_id, request)
        user.logged_in = False
        await self._storage(lambda: self.users.save(user), request)
        await self._publish(UserLoggedOut(user_id=user_id), request)


class GetUser(_UserUseCase):
    """Read through the cache: what the invalidation handler keeps honest."""

    def __init__(self, users: UserRepository, cache: Cache, bus: EventBus) -> None:
        super().__init__(users, bus)
        self.cache = cache

    async def __call__(self, user_id: UUID, request: Request = _LOCAL) -> dict[str, str]:
        key = f"user:{user_id}"
        cached = await self.cache.get(key)
        if isinstance(cached, dict):
            return cached
        user = await self._user(user_id, request)
        profile = {"user_id": str(user.user_id), "email": user.email, "name": user.name}
        await self.cache.set(key, profile)
        return profile


class UpdateProfile(_UserUseCase):
    async def __call__(
        self,
        user_id: UUID,
        *,
        name: str | None = None,
        email: str | None = None,
        request: Request = _LOCAL,
    ) -> User:
        user = await self._user(user_id, request)
        changes = {
            field: value
            for field, value in (("name", name), ("email", email))
            if value is not None and value != getattr(user, field)
        }
        if not changes:
            return user
        for field, value in changes.items():
            setattr(user, field, value)
        await self._storage(lambda: self.users.save(user), request)
        await self._publish(UserUpdated(user_id=user_id, changes=changes), request)
        return user


class DeleteUser(_UserUseCase):
    """Deleting someone is an admin action: the fact and its audit record share a thread."""

    async def __call__(
        self, user_id: UUID, *, actor: str, reason: str = "", request: Request = _LOCAL
    ) -> None:
        await self._user(user_id, request)
        await self._storage(lambda: self.users.remove(user_id), request)
        deleted = UserDeleted(user_id=user_id, reason=reason)
        await self._publish(deleted, request)
        audit = SystemAuditRecorded(
            actor=actor,
            action="user.delete",
            subject=str(user_id),
            correlation_id=deleted.correlation_id,
            causation_id=str(deleted.event_id),
        )
        await self._publish(audit, request)


class _ItemUseCase(_UseCase):
    component = "items"

    def __init__(self, items: ItemRepository, bus: EventBus) -> None:
        super().__init__(bus)
        self.items = items

    async def _item(self, item_id: UUID, request: Request) -> Item:
        item = await self._storage(lambda: self.items.get(item_id), request)
        if item is None:
            raise NotFoundError(f"no item {item_id}")
        return item


class CreateItem(_ItemUseCase):
    async def __call__(
        self, owner_id: UUID, name: str, price_cents: int, request: Request = _LOCAL
    ) -> Item:
        item = Item(owner_id=owner_id, name=name, price_cents=price_cents)
        await self._storage(lambda: self.items.add(item), request)
        await self._publish(
            ItemCreated(
                item_id=item.item_id, owner_id=owner_id, name=name, price_cents=price_cents
            ),
            request,
        )
        return item


class UpdateItem(_ItemUseCase):
    async def __call__(
        self,
        item_id: UUID,
        *,
        name: str | None = None,
        price_cents: int | None = None,
        request: Request = _LOCAL,
    ) -> Item:
        item = await self._item(item_id, request)
        changes: dict[str, str] = {}
        if name is not None and name != item.name:
            item.name, changes["name"] = name, name
        if price_cents is not None and price_cents != item.price_cents:
            item.price_cents, changes["price_cents"] = price_cents, str(price_cents)
        if changes:
            await self._storage(lambda: self.items.save(item), request)
            await self._publish(
                ItemUpdated(item_id=item_id, owner_id=item.owner_id, changes=changes), request
            )
        return item


class DeleteItem(_ItemUseCase):
    async def __call__(self, item_id: UUID, request: Request = _LOCAL) -> None:
        item = await self._item(item_id, request)
        await self._storage(lambda: self.items.remove(item_id), request)
        await self._publish(ItemDeleted(item_id=item_id, owner_id=item.owner_id), request)
