"""``ServiceContainer``: hexbus's composition root plus this service's adapters and use cases.

Why subclass ``hexbus.Container``: the bus (picked by ``HEXBUS_ADAPTER``), its settings
and its start/stop lifecycle come from the library unchanged; the service adds its
ports' adapters, its handlers and its use cases, and every use case receives
``event_bus`` by injection. ``wiring_config`` names the routes module:
``hexbus_lifespan`` wires it when the app starts, so ``Provide[...]`` in the routes
resolves from this container.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dependency_injector import containers, providers

from examples.fastapi_service.adapters import InMemoryMailer, InMemoryUserDirectory
from examples.fastapi_service.handlers import WelcomeMail
from examples.fastapi_service.use_cases import RegisterUser
from hexbus import AuditLogHandler, Container, HexbusSettings
from hexbus.infrastructure.container import lifecycle

__all__ = ["DEFAULT_AUDIT_LOG", "ServiceContainer"]

#: Where the audit log goes unless ``HEXBUS_AUDIT_LOG_PATH`` says otherwise.
DEFAULT_AUDIT_LOG = Path(tempfile.gettempdir()) / "hexbus-fastapi-example-audit.jsonl"


def _audit_log(settings: HexbusSettings) -> AuditLogHandler:
    return AuditLogHandler(settings.audit_log_path or DEFAULT_AUDIT_LOG)


class ServiceContainer(Container):
    """Ports → in-memory adapters (singletons); use cases → factories given the bus."""

    wiring_config = containers.WiringConfiguration(modules=[".routes"], auto_wire=False)

    users = providers.Singleton(InMemoryUserDirectory)
    mailer = providers.Singleton(InMemoryMailer)

    audit_log = providers.Singleton(_audit_log, Container.settings)
    welcome_mail = providers.Singleton(WelcomeMail, mailer=mailer, bus=Container.event_bus)
    #: This service lists its handlers itself; add ``providers.Object(hexbus.default_router)``
    #: to also subscribe functions decorated with ``@hexbus.on_event``.
    routers = providers.List()
    #: ``EventHandler`` objects the bus registers; it flushes the audit log when it stops.
    handlers = providers.List(audit_log, welcome_mail)
    #: Re-declared because ``routers`` and ``handlers`` are (see ``lifecycle``).
    bus_lifecycle = lifecycle(routers, handlers)

    register_user = providers.Factory(RegisterUser, users=users, bus=Container.event_bus)
