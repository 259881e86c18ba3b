"""The demo service's own domain events.

Why module-level classes with explicit ``event_type`` names: the wire name is a contract
with other services (and with ``hexbus publish user.created '{...}'``); renaming a class
must never change what travels on the broker.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field

from hexbus import DomainEvent

__all__ = [
    "ItemCreated",
    "ItemDeleted",
    "ItemUpdated",
    "SystemAuditRecorded",
    "SystemErrorRaised",
    "UserCreated",
    "UserDeleted",
    "UserLoggedIn",
    "UserLoggedOut",
    "UserLoginFailed",
    "UserUpdated",
]

#: Deliberately loose: the demo checks shape, real services verify by sending mail.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class UserCreated(DomainEvent, event_type="user.created"):
    user_id: UUID
    email: str = Field(pattern=EMAIL_PATTERN)
    name: str = Field(min_length=1)


class UserUpdated(DomainEvent, event_type="user.updated"):
    user_id: UUID
    #: field name → new value (only what changed).
    changes: dict[str, str]


class UserDeleted(DomainEvent, event_type="user.deleted"):
    user_id: UUID
    reason: str = ""


class UserLoggedIn(DomainEvent, event_type="user.login"):
    user_id: UUID
    ip_address: str


class UserLoggedOut(DomainEvent, event_type="user.logout"):
    user_id: UUID


class UserLoginFailed(DomainEvent, event_type="user.login_failed"):
    email: str
    #: ``None`` when nobody has that e-mail address (still worth counting and alerting on).
    user_id: UUID | None = None
    ip_address: str
    reason: Literal["unknown_user", "wrong_password"]
    #: Failures in a row for this user, counted by the use case (the source of truth).
    consecutive_failures: int = Field(ge=1)


class ItemCreated(DomainEvent, event_type="item.created"):
    item_id: UUID
    owner_id: UUID
    name: str = Field(min_length=1)
    price_cents: int = Field(ge=0)


class ItemUpdated(DomainEvent, event_type="item.updated"):
    item_id: UUID
    owner_id: UUID
    changes: dict[str, str]


class ItemDeleted(DomainEvent, event_type="item.deleted"):
    item_id: UUID
    owner_id: UUID


class SystemErrorRaised(DomainEvent, event_type="system.error"):
    component: str
    message: str
    severity: Literal["warning", "error", "critical"] = "error"


class SystemAuditRecorded(DomainEvent, event_type="system.audit"):
    actor: str
    action: str
    subject: str
