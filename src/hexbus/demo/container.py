"""``DemoContainer``: the library's composition root plus the demo's adapters and use cases.

Why subclass ``hexbus.Container``: the bus (chosen by ``HEXBUS_ADAPTER``), its settings
and lifecycle come from the library unchanged; the demo only adds its own providers and
its router, and every use case receives ``event_bus`` by injection.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from dependency_injector import providers

from hexbus import (
    AuditLogHandler,
    Container,
    HexbusSettings,
    default_router,
)
from hexbus.demo import adapters, handlers, use_cases
from hexbus.demo.activity import ActivityLog, EventTap
from hexbus.infrastructure.container import lifecycle

__all__ = ["DemoContainer", "default_audit_path"]


def default_audit_path() -> Path:
    """A fresh file name under the temp dir (nothing is created until the first flush)."""
    return Path(tempfile.gettempdir()) / f"hexbus-demo-audit-{uuid.uuid4().hex[:8]}.jsonl"


def _audit_log(settings: HexbusSettings) -> AuditLogHandler:
    return AuditLogHandler(settings.audit_log_path or default_audit_path())


class DemoContainer(Container):
    """Ports → in-memory adapters (singletons); use cases → factories given the bus."""

    activity = providers.Singleton(ActivityLog)
    users = providers.Singleton(adapters.InMemoryUserRepository)
    items = providers.Singleton(adapters.InMemoryItemRepository)
    cache = providers.Singleton(adapters.InMemoryCache)
    notifier = providers.Singleton(adapters.RecordingNotifier)

    tap = providers.Singleton(EventTap, activity)
    cache_invalidation = providers.Singleton(
        handlers.CacheInvalidationHandler, cache=cache, activity=activity
    )
    welcome_mail = providers.Singleton(
        handlers.WelcomeMailHandler, notifier=notifier, activity=activity
    )
    security_alert = providers.Singleton(
        handlers.SecurityAlertHandler, notifier=notifier, activity=activity, threshold=3
    )
    admin_alert = providers.Singleton(
        handlers.AdminAlertHandler, notifier=notifier, activity=activity
    )
    counter = providers.Singleton(handlers.AuditCounter)
    audit_log = providers.Singleton(_audit_log, Container.settings)
    router = providers.Singleton(
        handlers.demo_router,
        tap=tap,
        cache_invalidation=cache_invalidation,
        welcome_mail=welcome_mail,
        security_alert=security_alert,
        admin_alert=admin_alert,
        counter=counter,
    )
    #: The library's default router (``@on_event``) plus the demo's.
    routers = providers.List(providers.Object(default_router), router)
    #: Registered, not routed: the bus flushes the audit log when it stops.
    handlers = providers.List(audit_log)
    bus_lifecycle = lifecycle(routers, handlers)

    register_user = providers.Factory(use_cases.RegisterUser, users=users, bus=Container.event_bus)
    log_in = providers.Factory(use_cases.LogIn, users=users, bus=Container.event_bus)
    log_out = providers.Factory(use_cases.LogOut, users=users, bus=Container.event_bus)
    get_user = providers.Factory(
        use_cases.GetUser, users=users, cache=cache, bus=Container.event_bus
    )
    update_profile = providers.Factory(
        use_cases.UpdateProfile, users=users, bus=Container.event_bus
    )
    delete_user = providers.Factory(use_cases.DeleteUser, users=users, bus=Container.event_bus)
    create_item = providers.Factory(use_cases.CreateItem, items=items, bus=Container.event_bus)
    update_item = providers.Factory(use_cases.UpdateItem, items=items, bus=Container.event_bus)
    delete_item = providers.Factory(use_cases.DeleteItem, items=items, bus=Container.event_bus)
