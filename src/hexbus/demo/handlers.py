"""The demo's event handlers: side effects that follow from facts, behind the demo ports.

Why handler classes: each one gets its collaborators (cache, notifier, activity log)
through its constructor, so the container injects them and tests build them by hand.
``demo_router`` gathers them into an ``EventRouter`` the container's bus includes.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import ClassVar

from hexbus import DomainEvent, EventHandler, EventRouter
from hexbus.demo.activity import ActivityLog, EventTap
from hexbus.demo.events import (
    ItemDeleted,
    ItemUpdated,
    SystemErrorRaised,
    UserCreated,
    UserDeleted,
    UserLoginFailed,
    UserUpdated,
)
from hexbus.demo.ports import Cache, Notifier
from hexbus.domain.ports import SubscriptionTarget

__all__ = [
    "AdminAlertHandler",
    "AuditCounter",
    "CacheInvalidationHandler",
    "SecurityAlertHandler",
    "WelcomeMailHandler",
    "demo_router",
]

SECURITY_TEAM = "security@example.com"
ADMINS = "admins@example.com"


class CacheInvalidationHandler(EventHandler):
    """A changed or deleted user/item must not be served stale from the cache."""

    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (
        UserUpdated,
        UserDeleted,
        ItemUpdated,
        ItemDeleted,
    )

    def __init__(self, cache: Cache, activity: ActivityLog) -> None:
        self.cache = cache
        self.activity = activity

    async def handle(self, event: UserUpdated | UserDeleted | ItemUpdated | ItemDeleted) -> None:
        if isinstance(event, UserUpdated | UserDeleted):
            key = f"user:{event.user_id}"
        else:
            key = f"item:{event.item_id}"
        was_cached = await self.cache.delete(key)
        self.activity.record(
            "cache-invalidation",
            f"invalidated {key[:13]}… ({'was cached' if was_cached else 'not cached'})",
        )


class WelcomeMailHandler(EventHandler):
    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (UserCreated,)

    def __init__(self, notifier: Notifier, activity: ActivityLog) -> None:
        self.notifier = notifier
        self.activity = activity

    async def handle(self, event: UserCreated) -> None:
        subject = f"Welcome, {event.name}!"
        await self.notifier.send("mail", event.email, subject, "Thanks for signing up.")
        self.activity.record("welcome-mail", f"sent {subject!r} to {event.email}")


class SecurityAlertHandler(EventHandler):
    """``threshold`` failed logins in a row for one user → one alert to the security team.

    The count comes with the event (the use case owns it), so the handler stays
    stateless and a redelivered event cannot raise a second alert for the same run.
    """

    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (UserLoginFailed,)

    def __init__(self, notifier: Notifier, activity: ActivityLog, threshold: int = 3) -> None:
        self.notifier = notifier
        self.activity = activity
        self.threshold = threshold

    async def handle(self, event: UserLoginFailed) -> None:
        failures = event.consecutive_failures
        if failures != self.threshold:
            self.activity.record(
                "security-alert", f"{event.email}: {failures}/{self.threshold} failures, no alert"
            )
            return
        await self.notifier.send(
            "security",
            SECURITY_TEAM,
            f"SECURITY ALERT: {failures} failed logins for {event.email}",
            f"last attempt from {event.ip_address} ({event.reason})",
        )
        self.activity.record(
            "security-alert",
            f"SECURITY ALERT sent to {SECURITY_TEAM}: {failures} failed logins for {event.email}",
        )


class AdminAlertHandler(EventHandler):
    event_types: ClassVar[tuple[SubscriptionTarget, ...]] = (SystemErrorRaised,)

    def __init__(self, notifier: Notifier, activity: ActivityLog) -> None:
        self.notifier = notifier
        self.activity = activity

    async def handle(self, event: SystemErrorRaised) -> None:
        subject = f"[{event.severity}] {event.component}: {event.message}"
        await self.notifier.send("admin", ADMINS, subject, f"event {event.event_id}")
        self.activity.record("admin-alert", f"ADMIN ALERT sent to {ADMINS}: {subject}")


class AuditCounter:
    """Counts events per type. A plain ``def`` on purpose: the bus runs it in a worker
    thread, which is how blocking handlers (a sync DB driver, say) stay off the loop."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, event: DomainEvent) -> None:
        with self._lock:
            self.counts[event.event_type] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def demo_router(
    *,
    tap: EventTap,
    cache_invalidation: CacheInvalidationHandler,
    welcome_mail: WelcomeMailHandler,
    security_alert: SecurityAlertHandler,
    admin_alert: AdminAlertHandler,
    counter: AuditCounter,
) -> EventRouter:
    """Every demo subscription; the tap first, so each event is logged before its effects."""
    router = EventRouter()
    router.add("#", tap, name="demo.event_tap")
    for handler in (cache_invalidation, welcome_mail, security_alert, admin_alert):
        for target, handle, name in handler.subscriptions():
            router.add(target, handle, name=name)
    router.add("#", counter.count, name="demo.audit_counter")
    return router
