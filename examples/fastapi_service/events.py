"""The facts this service publishes: its part of the event catalogue.

Why the ``accounts.`` prefix: ``event_type`` is the wire name other services subscribe
to, and it must be unique in a process (hexbus refuses a second class claiming one), so
a service names its events after itself.
"""

from __future__ import annotations

from uuid import UUID

from hexbus import DomainEvent

__all__ = ["UserRegistered", "WelcomeMailSent"]


class UserRegistered(DomainEvent, event_type="accounts.user.registered", version=1):
    """Someone signed up; the request's IP and user agent travel as metadata, not here."""

    user_id: UUID
    email: str
    name: str


class WelcomeMailSent(DomainEvent, event_type="accounts.welcome_mail.sent", version=1):
    """The welcome mail went out (published by a handler: caused by ``UserRegistered``)."""

    user_id: UUID
    to: str
