"""``--app module:attribute``: every command works on the user's own service.

Why the uvicorn / FastStream convention: a service already has one composition root (its
``hexbus.Container`` subclass, with its settings, routers and handlers); naming it is all
the CLI needs to know the service's event catalogue, subscriptions and configuration,
instead of a catalogue of its own. ``HEXBUS_APP`` sets the default, so a project can put
it in ``.env`` once.

The attribute may be a container instance, a ``Container`` subclass, or a function
returning a container; it is resolved relative to the current directory too (as
uvicorn does), so ``hexbus check --app myservice.main:container`` works from the
project's root without installing it.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from hexbus.application.handlers import SubscriptionTable, handler_subscriptions
from hexbus.cli._common import EXIT_UNAVAILABLE, fail
from hexbus.domain.errors import ConfigurationError, HexbusError
from hexbus.domain.events import DomainEvent, event_registry
from hexbus.infrastructure.container import Container
from hexbus.infrastructure.settings import HexbusSettings

__all__ = [
    "APP_ENV",
    "DEMO_APP",
    "AppOption",
    "LoadedApp",
    "load_app",
    "load_app_or_none",
    "settings_of",
]

APP_ENV = "HEXBUS_APP"
#: The sample service, as ``--app`` names it.
DEMO_APP = "hexbus.demo:DemoContainer"
#: The providers every hexbus container has (``hexbus.Container``).
_REQUIRED_PROVIDERS = ("settings", "event_bus", "routers", "handlers")
#: Wire-name prefixes of hexbus's own test and benchmark events: never a service's.
_INTERNAL_PREFIXES = ("contract.", "faults.", "hexbus.bench.")

AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar=APP_ENV,
        help=(
            "Your service's hexbus container as module:attribute (an instance, a "
            "Container subclass or a factory), e.g. myservice.main:container; the demo "
            f"is {DEMO_APP}. Default: ${APP_ENV}."
        ),
        show_default=False,
    ),
]

HOW_TO = (
    f"point the command at your service with --app module:attribute (or set {APP_ENV}), "
    "naming your hexbus Container the way uvicorn names an app, e.g. "
    f"--app myservice.main:container; the sample service is --app {DEMO_APP}"
)


@dataclass
class LoadedApp:
    """The user's container, and what the CLI reads from it."""

    path: str
    container: Any
    #: The module the attribute came from (its package is the app's own code).
    module: str = field(default="")

    def settings(self) -> HexbusSettings:
        """The container's settings (``HEXBUS_*`` plus its ``config`` overrides)."""
        settings: HexbusSettings = self.container.settings()
        return settings

    def routers(self) -> list[Any]:
        return list(self.container.routers())

    def handler_objects(self) -> list[Any]:
        return list(self.container.handlers())

    def subscriptions(self) -> SubscriptionTable:
        """What the app's bus would subscribe on start, without building a bus.

        Raises the wiring errors ``subscribe`` would (``InvalidHandlerError`` ...).
        """
        table = SubscriptionTable()
        for router in self.routers():
            for target, handler, name in router:
                table.add(target, handler, name)
        for obj in self.handler_objects():
            for target, handler, name in handler_subscriptions(obj):
                table.add(target, handler, name)
        return table

    def catalogue(self) -> list[type[DomainEvent]]:
        """The app's event classes: those defined in its package, plus every class its
        subscriptions name exactly; hexbus's own test events left out; sorted by name."""
        root = self.module.split(".", 1)[0]
        found: dict[str, type[DomainEvent]] = {}
        for cls in event_registry:
            if cls.event_type.startswith(_INTERNAL_PREFIXES):
                continue
            if cls.__module__ == root or cls.__module__.startswith(root + "."):
                found[cls.event_type] = cls
        try:
            table = self.subscriptions()
        except HexbusError:
            table = SubscriptionTable()
        for sub in table:
            if not isinstance(sub.target, str):
                found[sub.target.event_type] = sub.target
        return [found[name] for name in sorted(found)]


def _resolve(path: str) -> tuple[Any, str]:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        fail(
            f"--app {path!r} is not module:attribute; name your container like "
            f"myservice.main:container (the demo: {DEMO_APP})",
            EXIT_UNAVAILABLE,
        )
    if os.getcwd() not in sys.path:  # the project's root, as uvicorn does
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            fail(
                f"--app {path!r}: no module named {missing!r}; run the command from your "
                "project's root directory or install the project (pip install -e .)",
                EXIT_UNAVAILABLE,
            )
        fail(f"--app {path!r}: importing {module_name!r} failed: {exc}", EXIT_UNAVAILABLE)
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        fail(
            f"--app {path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}",
            EXIT_UNAVAILABLE,
        )
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            fail(
                f"--app {path!r}: module {module_name!r} has no attribute {attribute!r}; "
                "expected your hexbus Container there (an instance, a Container subclass, "
                "or a function returning one)",
                EXIT_UNAVAILABLE,
            )
    return obj, module_name


def _is_container(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in _REQUIRED_PROVIDERS) and not isinstance(obj, type)


def load_app(path: str | None) -> LoadedApp:
    """The container ``path`` names, or exit 2 with what was wrong and what to do."""
    if not path:
        fail(f"no app given: {HOW_TO}", EXIT_UNAVAILABLE)
    obj, module_name = _resolve(path)
    if isinstance(obj, type) and issubclass(obj, Container):
        obj = obj()
    elif callable(obj) and not _is_container(obj):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - the user's factory raised
            fail(f"--app {path!r}: calling it raised {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE)
    if not _is_container(obj):
        fail(
            f"--app {path!r} is a {type(obj).__name__}, not a hexbus Container: expected an "
            f"object with the providers {', '.join(_REQUIRED_PROVIDERS)} (subclass "
            "hexbus.Container), a Container subclass, or a function returning one",
            EXIT_UNAVAILABLE,
        )
    loaded = LoadedApp(path, obj, module_name)
    try:
        loaded.settings()
    except ConfigurationError as exc:
        fail(str(exc))
    return loaded


def settings_of(path: str | None) -> HexbusSettings | None:
    """The named app's settings, or ``None`` without an app (``HEXBUS_*`` alone then)."""
    return load_app(path).settings() if path else None


def load_app_or_none(path: str | None) -> LoadedApp | None:
    """``load_app`` when an app is named, else ``None`` (commands that work without)."""
    return load_app(path) if path else None
